"""The bench refuses flag combinations it cannot run, before it loads anything."""

import pytest

from tts_runner.tools import bench


@pytest.mark.parametrize("flag", [["--stock-sample", "3"], ["--runaway"]])
def test_the_batch_path_rows_are_refused_through_the_scheduler(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--scheduler", *flag])
    assert exit_.value.code == 2
    assert ("error: --stock-sample and --runaway run the batch path (one job's own batches): leave --scheduler out"
            in capsys.readouterr().err)

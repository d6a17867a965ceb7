"""The bench refuses flag combinations it cannot run, before it loads anything, and a failed job
does not leave the scheduler narrowed."""

import pytest

from tts_runner.tools import bench


@pytest.mark.parametrize("flag", [["--stock-sample", "3"], ["--runaway"]])
def test_the_batch_path_rows_are_refused_through_the_scheduler(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--scheduler", *flag])
    assert exit_.value.code == 2
    assert ("error: --stock-sample and --runaway run the batch path (one job's own batches): leave --scheduler out"
            in capsys.readouterr().err)


def test_a_failed_job_under_scheduler_leaves_the_scheduler_its_full_width(worker, model, monkeypatch):
    """bench --scheduler narrows the scheduler to each row's batch size for the job; a job that
    raises must not leave it narrowed for the rows (and the jobs) after it."""
    import argparse

    scheduler = model.scheduler
    assert scheduler is not None and scheduler.max_rows > 1
    seen = []

    def failing(job, model_):
        seen.append(scheduler.rows)
        raise RuntimeError("the job failed")

    monkeypatch.setattr(bench, "run_job", failing)
    args = argparse.Namespace(seed=0, json=None, out=None)
    job = {"segments": [{"text": "One line.", "voice": "male_1"}], "output_format": "wav"}
    with pytest.raises(RuntimeError, match="the job failed"):
        bench.run(args, worker.cfg, worker.store, model, job, "failing", [(model.engine, 1)], [])
    assert seen == [1]  # the job ran narrowed to its row's batch size
    assert scheduler.rows == scheduler.max_rows

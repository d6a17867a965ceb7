"""What word timestamps cost: seconds of forced alignment per minute of audio, on the CPU.

    python -m tts_runner.tools.align_bench [--rounds 3]

Aligns the word-timing fixtures (tests/fixtures/words: espeak-ng sentences, one per chunk, as the
assemble stage aligns a chunk) `rounds` times, one thread, and prints the cost per minute of audio
and the boundary errors against the fixtures' known word times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from tts_runner.captions.align import align

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "words"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    truth = json.loads((FIXTURES / "truth.json").read_text())
    chunks = [(text, *sf.read(FIXTURES / t["file"], dtype="float32")) for text, t in truth.items()
              if not text.startswith("_")]
    audio = sum(samples.size / rate for _, samples, rate in chunks) * args.rounds
    errors = []
    started = time.perf_counter()
    for _ in range(args.rounds):
        for text, samples, rate in chunks:
            words = align(samples, rate, text)
            errors += [abs(w.start - t["start"]) for w, t in zip(words, truth[text]["words"], strict=True)]
            errors += [abs(w.end - t["end"]) for w, t in zip(words, truth[text]["words"], strict=True)]
    seconds = time.perf_counter() - started
    print(f"{len(chunks) * args.rounds} chunks, {audio:.1f} s of audio aligned in {seconds:.2f} s: "
          f"{60 * seconds / audio:.2f} s of alignment per minute of audio; boundary error mean "
          f"{1000 * float(np.mean(errors)):.0f} ms, worst {1000 * float(np.max(errors)):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What keeping one voice costs: the design step of a VoiceDesign job and the voice consistency score,
in extra seconds per minute of audio, measured side by side in one run; and the score itself on the
espeak-ng recordings of tests/fixtures/voices (one voice against itself, against others).

    python -m tts_runner.tools.design_bench --model-dir /tmp/models --device cpu [--rounds 3] [--json out.json]

Each round runs the same seeded VoiceDesign job (a long text, --chars characters) three ways on one
loaded worker: `design: per_chunk`; `design: once` (the design step timed on its own); and `design:
once` with `score_consistency` (the scoring timed on its own, on the assemble thread). A first round
warms up (loads both models) and is not kept; medians of the rounds. The scores of the fixtures need no model.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from tts_runner.tools.setup import point_at

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "voices"
SENTENCE = "The long road ran on past the river, and the old bridge creaked as we walked across it slowly. "


def timed(module, name: str, spent: list[float]):
    """Wrap module.name so each call's seconds go into `spent`; returns a function that unwraps it."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - began)

    setattr(module, name, wrapper)
    return lambda: setattr(module, name, real)


def fixture_scores() -> dict:
    """Mean and min similarity of each fixture voice's sentences against en-us's first (the first
    chunk of a segment), and against its own first."""
    from tts_runner.voice import consistency

    def read(voice: str) -> list[np.ndarray]:
        return [sf.read(FIXTURES / f"{voice}-{n}.flac", dtype="float32")[0] for n in range(1, 5)]

    anchor = read("en-us")[0]
    out = {}
    for voice in ("en-us", "en-us+f4", "en-gb+f3"):
        samples = read(voice)
        against_us = consistency.consistency([anchor, *samples[1:]], 16000)
        itself = consistency.consistency(samples, 16000)
        out[voice] = {"against_en_us": against_us, "against_itself": itself}
    seconds = sum(s.size for s in read("en-us")) / 16000
    began = time.perf_counter()
    for chunk in read("en-us"):
        consistency.embedding(chunk, 16000)
    out["embedding_s_per_audio_minute"] = round((time.perf_counter() - began) / seconds * 60, 3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=1200, help="characters of the job's text")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="frames per chunk at most (the tiny model)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    point_at(args.model_dir, args.device)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tts_runner").setLevel(logging.ERROR)
    from tts_runner.edge.worker import Worker
    from tts_runner.job import assemble, run
    from tts_runner.voice import consistency

    worker = Worker.from_env([f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.min_new_tokens=24",
                              "worker.progress_updates=false"])
    text = (SENTENCE * (args.chars // len(SENTENCE) + 1))[: args.chars].rsplit(" ", 1)[0] + "."
    job = {"model": "1.7B-VoiceDesign", "text": text, "params": {"instruct": "A warm, low male voice.", "seed": 11}}
    consistency.encoder()  # loaded once per process: not a cost of each job
    rows: dict[str, list[dict]] = {"per_chunk": [], "once": [], "once_scored": []}
    for round_ in range(args.rounds + 1):  # round 0 warms up (both models loaded, first calls made): not kept
        for way, extra in (("per_chunk", {"design": "per_chunk"}), ("once", {}), ("once_scored", {"score_consistency": True})):
            design_s, score_s = [], []
            undo = [timed(run, "design_voices", design_s), timed(assemble.consistency, "consistency", score_s)]
            began = time.perf_counter()
            out = worker.handle({"id": way, "input": {**job, **extra}})
            wall = time.perf_counter() - began
            for u in undo:
                u()
            if "error" in out:
                raise SystemExit(f"{way}: {out['error']}")
            meta = out["metadata"]
            if round_ == 0:
                continue
            rows[way].append({"wall_s": wall, "audio_s": meta["duration_seconds"], "chunks": meta["num_chunks"],
                              "design_s": sum(design_s), "score_s": sum(score_s)})
    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[way])

    audio_min = med("once", "audio_s") / 60
    summary = {
        "device": worker.store.device, "chars": len(text), "chunks": rows["once"][0]["chunks"],
        "audio_s": round(med("once", "audio_s"), 2), "rounds": args.rounds,
        "wall_s": {way: round(med(way, "wall_s"), 3) for way in rows},
        "design_step_s": round(med("once", "design_s"), 3),
        "design_s_per_audio_minute": round(med("once", "design_s") / audio_min, 3),
        "scoring_s": round(med("once_scored", "score_s"), 3),
        "scoring_s_per_audio_minute": round(med("once_scored", "score_s") / audio_min, 3),
        "fixtures": fixture_scores(),
        "runs": rows,
    }
    print(f"VoiceDesign job of {summary['chars']} characters, {summary['chunks']} chunks, {summary['audio_s']} s of "
          f"audio on {summary['device']} (medians of {args.rounds} rounds):")
    for way, wall in summary["wall_s"].items():
        print(f"  {way:12s} {wall:7.3f} s")
    print(f"  design step {summary['design_step_s']} s ({summary['design_s_per_audio_minute']} s per minute of audio); "
          f"scoring {summary['scoring_s']} s ({summary['scoring_s_per_audio_minute']} s per minute of audio)")
    for voice, scores in summary["fixtures"].items():
        print(f"  fixture {voice}: {scores}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

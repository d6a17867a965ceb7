"""Developer tools, outside the runtime path (nothing under tts_runner imports them):
`python -m tts_runner.tools.tiny_model DIR` builds random-weight models for tests and offline runs;
`python -m tts_runner.tools.bench` runs the benchmarks of docs/performance.md."""

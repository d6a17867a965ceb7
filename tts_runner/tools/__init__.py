"""Developer tools, outside the runtime path (nothing under tts_runner imports them):
`tiny_model DIR` builds random-weight models for tests and offline runs; `bench`, `serve_bench` and
`sweep_bench` run the benchmarks of docs/performance.md; `code_shape` measures the code (modules,
functions, import circles); `texts` holds texts they and the tests share."""

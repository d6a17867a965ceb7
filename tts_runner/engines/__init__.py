"""The engines: what turns a prompt into codec frames, in place of qwen-tts's Hugging Face
`generate()` (the `stock` engine, `stock.py`), as two loops over the talker's own modules:

- `sampling`: how codes are chosen, as one plain value (no torch: the edge builds it);
- `draw`: choosing a code from scores, per row (the talker's logits processing, warp, draw);
- `cache`: a static key/value cache (write at positions, view the first rows);
- `core`: what both loops share: a row, prefill, one decoder layer over a static cache, the frame's
  input embedding, the code predictor's 15 sub-steps, the codes a row made;
- `running`: the `fast` engine's loop, a running batch with a growing cache that rows join and leave;
- `graph`: the `graph` engine's loop, one fixed-shape frame over static buffers (captured as a CUDA
  graph), whose slots rows join and leave;
- `loop`: one call's rows through those loops: admit every row, step until all end;
- `library`: qwen-tts, imported quietly, and the names taken from it.
"""

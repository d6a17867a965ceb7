"""The decode core and its two loops: what turns a prompt into codec frames, in place of qwen-tts's
Hugging Face `generate()` (the `stock` engine).

- `sampling`: choosing a code from scores, per row (the talker's logits processing, warp, draw);
- `cache`: a static key/value cache (write at positions, view the first rows);
- `core`: what both loops share: prefill, one decoder layer over a static cache, the frame's input
  embedding, and the code predictor's 15 sub-steps;
- `fast`: the `fast` engine, a lean loop with a growing cache that drops ended rows;
- `graph`: the `graph` engine, one fixed-shape frame over static buffers, captured as a CUDA graph.
"""

from tts_runner.engines.library import import_qwen_tts

import_qwen_tts()  # before the submodules import from it: quietly

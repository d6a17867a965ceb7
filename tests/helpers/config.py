"""Config overrides the tests share."""

# Small enough for a 2-core CI machine, and exact: with the end-of-speech floor at max_new_tokens
# every chunk is 15 frames (1.2 s) long, and nothing is trimmed from its edges. Tests of speech-like
# lengths, and of trimming, set their own values.
FAST = ["sampling.max_new_tokens=16", "sampling.min_new_tokens=16", "audio.trim.threshold_db=null"]

# Short chunks that end where the model ends them (the end code is sampled), and are kept when they
# reach max_new_tokens instead: for job-level tests that do not count frames.
NATURAL = ["sampling.max_new_tokens=16", "sampling.min_new_tokens=2", "batching.min_seconds_per_char=0",
           "batching.runaway=keep"]

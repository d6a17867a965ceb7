"""The speech codec's clock: Qwen3-TTS-Tokenizer-12Hz makes 24 kHz mono audio, one codec frame of
16 codes for every 80 ms (1920 samples), 12.5 frames a second."""

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920
FRAMES_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_FRAME  # 12.5

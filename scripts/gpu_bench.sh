#!/usr/bin/env bash
# Everything the GPU is needed for, in one device call (issue: "The GPU, observed"), results under $OUT:
#   1. the CUDA tests (tests/gpu/test_gpu.py, marker gpu) on the tiny models, while the CPU builds a
#      random model of the published 1.7B-CustomVoice dimensions (bf16);
#   2. the bench on that model, bf16, one process: one stream (stock, fast, graph), the 30-minute
#      podcast chunks -> WAV at batch 64 and 128 (fast, graph), the seed's path (stock, one chunk at
#      a time) on a sample of the same job's chunks, greedy agreement with stock over 8 x 100 frames,
#      and a profile of the graph frame at batch 64. Rows: $OUT/gpu-latest.json; at most 8 files in $OUT.
# On the lent machine, with carry [".whl"] (scripts/gpu_wheels.sh fills it here):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. bash scripts/gpu_bench.sh
# Dry run here: DEVICE=cpu TINY=1 bash scripts/gpu_bench.sh (tiny model, a 3-minute podcast, batch 16).
set -uo pipefail
cd "$(dirname "$0")/.." || exit
out=${OUT:-/tmp/gpu-out}
models=${MODELS:-/tmp/gpu-models}
mkdir -p "$out" "$models"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # no progress bars: they hid the bench's rows in the log
if [[ -n "${TINY:-}" ]]; then
  size=(--dtype float32); minutes=3; batches=16; profile=(); ops=(--ops 1)
else
  size=(--real-size --dtype bfloat16); minutes=30; batches=64,128; profile=(--profile 64); ops=(--ops "1,64")
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch, transformers, qwen_tts; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# 1. The model build (CPU) beside the CUDA tests (GPU): neither waits for the other.
( start=$(date +%s%N)
  python3 -m tts_runner.tools.tiny_model "$models" --variant Qwen3-TTS-12Hz-1.7B-CustomVoice --stop-bias 0 "${size[@]}" \
    > "$out/build.log" 2>&1
  echo "model build: exit $?, $(( ($(date +%s%N) - start) / 1000000 )) ms" >> "$out/build.log" ) &
build=$!
timeout "${TESTS_TIMEOUT:-200}" python3 -m pytest -m gpu tests/gpu/test_gpu.py -q -rA -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.log" \
  | tail -30
wait "$build"
cat "$out/build.log"

# 2. The figures, one process, one model load and capture.
timeout "${BENCH_TIMEOUT:-300}" python3 -m tts_runner.tools.bench --model-dir "$models" --device "${DEVICE:-cuda:0}" \
  --text-sized --max-new-tokens 160 --minutes "$minutes" --batch-sizes "$batches" --engines fast,graph \
  --one-stream 1 --stock-sample 3 --agreement 100 "${profile[@]}" "${ops[@]}" --out /tmp/gpu-audio \
  --json "$out/gpu-latest.json" 2>&1 | grep -v "Setting .pad_token_id" | tee "$out/bench.log" | tail -60
echo "bench exit: ${PIPESTATUS[0]}"

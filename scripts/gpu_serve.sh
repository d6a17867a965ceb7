#!/usr/bin/env bash
# Serving on the GPU, one device call (issue: "Serve many jobs at once"), results under $OUT:
#   1. the CUDA tests (tests/gpu/test_gpu.py), the scheduler's captured-graph test among them, while the CPU
#      builds a random model of the published 1.7B-CustomVoice dimensions (bf16);
#   2. the serving bench on it: 128 one-sentence requests at concurrency 1, 16 and 64, the scheduler
#      (graph engine, 64 rows) against one job at a time, plus streamed (time to first audio), and the
#      same requests sent at 10 a second (an open loop).
#      Goals: >= 120 s of audio per second at concurrency 64; p95 time to first audio <= 100 ms.
#   3. the sweep bench on it (issue: sweeps): 8 temperatures batched, against one batched job of the
#      same chunks and against the runs one after another (in process; the model loads once).
# On the lent machine, with carry [".whl"] (scripts/gpu_wheels.sh fills it here):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. bash scripts/gpu_serve.sh
# Dry run here: DEVICE=cpu TINY=1 bash scripts/gpu_serve.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit
out=${OUT:-/tmp/gpu-out}
models=${MODELS:-/tmp/gpu-models}
mkdir -p "$out" "$models"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [[ -n "${TINY:-}" ]]; then
  size=(--dtype float32); requests=16; concurrency=1,16
else
  size=(--real-size --dtype bfloat16); requests=128; concurrency=1,16,64
fi
( python3 -m tts_runner.tools.tiny_model "$models" --variant Qwen3-TTS-12Hz-1.7B-CustomVoice "${size[@]}" \
    > "$out/build.log" 2>&1; echo "model build: exit $?" >> "$out/build.log" ) &
build=$!
if [[ -z "${TINY:-}" ]]; then
  timeout "${TESTS_TIMEOUT:-200}" python3 -m pytest -m gpu tests/gpu/test_gpu.py -q -rA -p no:cacheprovider 2>&1 \
    | tee "$out/gpu-tests.log" | tail -20
fi
wait "$build"
cat "$out/build.log"
timeout "${BENCH_TIMEOUT:-300}" python3 -m tts_runner.tools.serve_bench --model-dir "$models" \
  --device "${DEVICE:-cuda:0}" --requests "$requests" --concurrency "$concurrency" --max-batch-size 64 --rate 10 \
  --json "$out/gpu-serve.json" 2>&1 | grep -v "RANDOM weights" | tee "$out/gpu-serve.log"
echo "serve bench exit: ${PIPESTATUS[0]}"
timeout "${SWEEP_TIMEOUT:-150}" python3 -m tts_runner.tools.sweep_bench --model-dir "$models" \
  --device "${DEVICE:-cuda:0}" --settings 8 --repeats 3 --no-cli --json "$out/gpu-sweep.json" 2>&1 \
  | grep -v "RANDOM weights" | tee "$out/gpu-sweep.log"
echo "sweep bench exit: ${PIPESTATUS[0]}"

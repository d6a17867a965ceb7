#!/usr/bin/env bash
# The GPU figures of docs/performance.md, one part per device call (each is planned to fit the
# device tool's 10-minute limit, model build included). Run on the lent machine as:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. bash scripts/gpu_bench.sh one
# with carry [".whl"] (scripts/gpu_wheels.sh fills it). Rows also go to $OUT/bench-PART.json.
# DEVICE=cpu TINY=1 runs the same parts on the tiny model (a dry run of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?"part: one | b64 | batch | podcast"}
out=${OUT:-/tmp/bench-out}
mkdir -p "$out"
size=(--real-size)
[[ -n "${TINY:-}" ]] && size=()
bench() {
  python3 -m tts_runner.bench --build "${size[@]}" --model-dir /tmp/models --device "${DEVICE:-cuda:0}" \
    --json "$out/bench-$part.json" "$@"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
case "$part" in
  # One stream, all three loops, and greedy agreement with stock over the first 100 frames.
  one) bench --chunks 4 --batch-sizes 1 --engines stock,fast,graph --max-new-tokens 257 --fixed-length \
         --agreement 100 ;;
  # Batch 64 side by side with stock (stock's other batch sizes are in ../shared/notes/gpu.md).
  b64) bench --chunks 64 --batch-sizes 64 --engines stock,fast,graph --max-new-tokens 257 --fixed-length ;;
  # The batch sweep of our two loops.
  batch) bench --chunks 128 --batch-sizes 8,16,32,64,128 --engines fast,graph --max-new-tokens 257 \
           --fixed-length ;;
  # The 30-minute podcast end to end (chunks to a WAV file), speech-like lengths.
  podcast) bench --minutes 30 --batch-sizes 64 --engines fast,graph --max-new-tokens 300 --out /tmp/pod ;;  # ~45 MB files: kept off $OUT
  *) echo "unknown part '$part': use one, b64, batch or podcast" >&2; exit 2 ;;
esac

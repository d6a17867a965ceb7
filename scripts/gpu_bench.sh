#!/usr/bin/env bash
# Everything the GPU is needed for, in one device call of at most ~8 minutes, results under $OUT (8 files):
#   1. the CUDA tests (tests/gpu/, marker gpu) on the tiny models, while the CPU builds a random model of
#      the published 1.7B-CustomVoice dimensions (bf16, built never to end speech: text-sized lengths);
#   2. the default deployment: the bench through the scheduler with the configuration a user gets
#      (engine, buckets, buffers, rows: auto) on one stream and the 30-minute podcast, after the greedy
#      agreement of fast and graph with stock (bf16, 8 items x 100 frames), the kernels per frame and a
#      profile of the graph frame at batch 64;
#   3. serving: one-sentence requests at concurrency 1, 16, 64 and at 10 a second, the scheduler against
#      one job at a time, streams heard by a real-time listener (underruns);
#   4. the podcast through the scheduler at 64, 128 and 256 rows (the best batch);
#   5. the lean frame: one graph frame at batch 1, 64, 128, 256, this revision against the one before
#      the lean frame (8d39231, carried as .old/), then with runtime.compile on.
# Each part has a time limit inside the call's (DEADLINE seconds from the start, default 480); every
# part's rows are collected into $OUT as soon as it ends, so a part cut short keeps what came before.
#
# Here, first: bash scripts/gpu_wheels.sh (the wheels the lent machine lacks, into .whl/) and
#   rm -rf .old && mkdir .old && git archive 8d39231 tts_runner conf jobs | tar -x -C .old
# The device command, carry [".whl", ".old"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. REV=<this commit> bash scripts/gpu_bench.sh
# Dry run here: DEVICE=cpu TINY=1 PYTHON=.venv/bin/python bash scripts/gpu_bench.sh (tiny model, short runs).
set -uo pipefail
cd "$(dirname "$0")/.." || exit
out=${OUT:-/tmp/gpu-out}
res=/tmp/gpu-res  # each tool's own files; collected into $out
models=${MODELS:-/tmp/gpu-models}
python=${PYTHON:-python3}
device=${DEVICE:-cuda:0}
mkdir -p "$out" "$res" "$models"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # no progress bars: they hid the rows in the log
began=$(date +%s)
deadline=$(( began + ${DEADLINE:-480} ))
exec > >(tee -a "$out/gpu.log") 2>&1

stamp() { echo; echo "== $1 (at +$(( $(date +%s) - began )) s)"; }
# at most $1 seconds, and never past the deadline (less 5 s to collect)
limit() { local left=$(( deadline - $(date +%s) - 5 )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
collect() {
  "$python" - "$res" "$out" <<'PY'
import json, shutil, sys
from pathlib import Path
res, out = Path(sys.argv[1]), Path(sys.argv[2])
def rows(name):
    p = res / name
    return json.loads(p.read_text()) if p.exists() else []
# the bench's and the serve bench's own rows, one list (each row names its device and job or worker)
(out / "gpu-latest.json").write_text(json.dumps(rows("bench.json") + rows("best.json") + rows("serve.json"), indent=2))
frames = [r for name in ("frames-old.json", "frames-new.json", "frames-compile.json") for r in rows(name)]
(out / "gpu-frames.json").write_text(json.dumps(frames, indent=2))
for name, to in (("bench-agreement.json", "gpu-latest-agreement.json"), ("bench-ops.json", "gpu-latest-ops.json"),
                 ("bench-profile.txt", "gpu-latest-profile.txt"), ("gpu-agreement-bf16.json", "gpu-agreement-bf16-tiny.json")):
    if (res / name).exists():
        shutil.copy(res / name, out / to)
PY
}

if [[ -n "${TINY:-}" ]]; then
  size=(--dtype float32); minutes=1; best=8,16; buckets=1,8,16; concurrency=1,4; per_client=2; rate=4; requests=8
  profile=(); agreement=20
else
  size=(--real-size --dtype bfloat16); minutes=30; best=64,128,256; buckets=1,64,128,256; concurrency=1,16,64
  per_client=2; rate=10; requests=64; profile=(--profile 64); agreement=100
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$python" -c "import torch, transformers, qwen_tts; print('torch', torch.__version__, 'transformers', transformers.__version__)"

stamp "1. the model build (CPU) beside the CUDA tests (GPU)"
( start=$(date +%s%N)
  "$python" -m tts_runner.tools.tiny_model "$models" --variant Qwen3-TTS-12Hz-1.7B-CustomVoice --stop-bias 0 "${size[@]}" \
    > "$res/build.log" 2>&1
  echo "model build: exit $?, $(( ($(date +%s%N) - start) / 1000000 )) ms" >> "$res/build.log" ) &
build=$!
if [[ "$device" == cuda* ]]; then
  OUT=$res timeout "$(limit 170)" "$python" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider -p no:randomly 2>&1 \
    | grep -v "Setting .pad_token_id" | tail -40
  cat "$res/gpu-agreement-bf16.json" 2>/dev/null; echo
fi
wait "$build"
cat "$res/build.log"

stamp "2. the default deployment: bench --scheduler, every setting auto"
timeout "$(limit 170)" "$python" -m tts_runner.tools.bench --model-dir "$models" --device "$device" --scheduler \
  --text-sized --max-new-tokens 160 --minutes "$minutes" --engines fast,graph --one-stream 1 --agreement "$agreement" \
  --ops 1,64 --ops-engines graph "${profile[@]}" --json "$res/bench.json" 2>&1 | grep -v "Setting .pad_token_id"
echo "bench exit: ${PIPESTATUS[0]}"; collect

stamp "3. serving: the scheduler against one job at a time, streams heard in real time"
timeout "$(limit 140)" "$python" -m tts_runner.tools.serve_bench --model-dir "$models" --device "$device" --one-worker \
  --text-sized --max-batch-size 0 --concurrency "$concurrency" --per-client "$per_client" --serial-at 1 \
  --rate "$rate" --requests "$requests" --json "$res/serve.json" 2>&1 | grep -v "RANDOM weights"
echo "serve bench exit: ${PIPESTATUS[0]}"; collect

stamp "4. the podcast through the scheduler at more rows"
timeout "$(limit 90)" "$python" -m tts_runner.tools.bench --model-dir "$models" --device "$device" --scheduler \
  --text-sized --max-new-tokens 160 --minutes "$minutes" --batch-sizes "$best" --json "$res/best.json" 2>&1 \
  | grep -v "Setting .pad_token_id"
echo "bench exit: ${PIPESTATUS[0]}"; collect

stamp "5. the lean frame: one graph frame, the revision before it (.old) and this one, then compiled"
frame=(tts_runner/tools/frame_bench.py --model-dir "$models" --device "$device" --buckets "$buckets" --frames 50)
site=${PYTHONPATH:-}; site=${site//:./}  # the carried packages without this tree
PYTHONPATH=".old${site:+:$site}" timeout "$(limit 45)" "$python" "${frame[@]}" --label 8d39231 --json "$res/frames-old.json" \
  2>&1 | grep -v "RANDOM weights"
PYTHONPATH=".${site:+:$site}" timeout "$(limit 45)" "$python" "${frame[@]}" --label "${REV:-this}" \
  --json "$res/frames-new.json" 2>&1 | grep -v "RANDOM weights"
collect
PYTHONPATH=".${site:+:$site}" timeout "$(limit 150)" "$python" "${frame[@]}" --compile --label compiled \
  --json "$res/frames-compile.json" 2>&1 | grep -v "RANDOM weights" | tail -8
echo "compiled frame exit: ${PIPESTATUS[0]}"; collect
stamp "done"

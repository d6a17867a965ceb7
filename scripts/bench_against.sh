#!/usr/bin/env bash
# The CPU bench of another revision and of this working tree, alternately, in one run (so both meet
# the same machine load): `bash scripts/bench_against.sh REV [ROUNDS]`. Rows go to /tmp/bench-against/.
# The bench's arguments: fixed lengths, batch 1 and 16 (BATCHES=1,16,64: others; as many chunks as the
# largest), the three engines (ENGINES=fast,graph: fewer), the tiny model.
set -euo pipefail
cd "$(dirname "$0")/.." || exit
rev=${1:?"usage: bench_against.sh REV [ROUNDS]"}
rounds=${2:-2}
out=/tmp/bench-against
python=${PYTHON:-.venv/bin/python}
rm -rf "$out" && mkdir -p "$out"
git worktree add -f "$out/old" "$rev" > /dev/null
trap 'git worktree remove --force "$out/old"' EXIT
$python -m tts_runner.tools.tiny_model "$out/models" --variant Qwen3-TTS-12Hz-1.7B-CustomVoice --stop-bias 0 > /dev/null
batches=${BATCHES:-1,16}
chunks=$(tr ',' '\n' <<< "$batches" | sort -n | tail -1)
chunks=$(( chunks > 16 ? chunks : 16 ))
args=(--model-dir "$out/models" --device cpu --chunks "$chunks" --batch-sizes "$batches" --engines "${ENGINES:-stock,fast,graph}"
      --max-new-tokens 40 --fixed-length)
# The bench's module moved to tts_runner.tools; older revisions have it at tts_runner.bench.
old_module=tts_runner.tools.bench
[[ -f "$out/old/tts_runner/bench.py" ]] && old_module=tts_runner.bench
for round in $(seq "$rounds"); do
  (cd "$out/old" && TQDM_DISABLE=1 PYTHONPATH=. "$OLDPWD/$python" -m "$old_module" "${args[@]}" \
     --json "$out/old-$round.json" > "$out/old-$round.log" 2>&1)
  TQDM_DISABLE=1 $python -m tts_runner.tools.bench "${args[@]}" --json "$out/new-$round.json" > "$out/new-$round.log" 2>&1
done
$python - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def rows(side):
    table = {}
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{out}/{side}-{r}.json")):
            table.setdefault((row["engine"], row["batch_size"]), []).append(row["ms_per_step"])
    return table
old, new = rows("old"), rows("new")
print("| engine | batch | ms per step, old (each round) | new (each round) | new / old (means) |")
print("|---|---|---|---|---|")
for key in old:
    o, n = old[key], new[key]
    print(f"| {key[0]} | {key[1]} | {', '.join(map(str, o))} | {', '.join(map(str, n))} | "
          f"{(sum(n) / len(n)) / (sum(o) / len(o)):.2f} |")
PY

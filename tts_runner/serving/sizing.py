"""How many rows a device runs at once when `batching.max_batch_size` is `auto`.

On the CPU: 16 (more rows only make each step slower there; docs/performance.md). On CUDA: the
largest power of two, up to the measured best (`BEST_ROWS`, the 30-minute podcast: 169x real time at
128 rows against 124x at 64 on an H100), whose memory fits the device's free memory:

    weights + rows x (static buffers + activations) of a row + reserve  <=  free memory

- weights: the model's safetensors files (the speech tokenizer's included), scaled from the dtype
  they are stored in to the dtype the model runs in;
- a row's static buffers: what the graph engine allocates for one slot at `runtime.graph.max_len`
  positions (the talker's keys and values in every layer, the text added to each frame, the codes,
  the codes seen, the code predictor's 16-position cache): exact, as `GraphEngine.allocate` sizes them;
- a row's activations: an allowance for one row's prefill of `max_len` positions through the
  talker's widest layer (the MLP's gate, up and down projections, attention's q, k, v and output),
  which bounds what a frame or a prefill holds in flight;
- reserve: `RESERVE_FRACTION` of the device's memory, at least `RESERVE_MIN_BYTES`: the CUDA context,
  the speech decoder's work, the allocator's fragmentation and the captured graphs' private pool.

The start-up log names the choice and each figure; an explicit number always wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CPU_ROWS = 16
BEST_ROWS = 128
RESERVE_FRACTION = 0.10
RESERVE_MIN_BYTES = 2 * 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class RowCost:
    """Bytes one row holds on the device, from the talker's config (config.json's talker_config)."""

    buffers: int
    activations: int

    @property
    def total(self) -> int:
        return self.buffers + self.activations

    @classmethod
    def of(cls, talker: dict, max_len: int, dtype_bytes: int) -> RowCost:
        head_dim = talker.get("head_dim") or talker["hidden_size"] // talker["num_attention_heads"]
        hidden, groups = talker["hidden_size"], talker["num_code_groups"]
        kv = 2 * talker["num_hidden_layers"] * talker["num_key_value_heads"] * max_len * head_dim * dtype_bytes
        text = max_len * hidden * dtype_bytes                     # the text added to each frame
        codes = max_len * groups * 8                              # each frame's codes (int64)
        flags = max_len + talker["vocab_size"]                    # positions valid, codes seen (bool)
        state = hidden * dtype_bytes + 4 * 8 + 1                  # hidden state; token, delta, frame, position; unfinished
        sampling = sum(dtype.itemsize for dtype in _sampling_columns())
        p = talker["code_predictor_config"]
        p_head = p.get("head_dim") or p["hidden_size"] // p["num_attention_heads"]
        p_cache = 2 * p["num_hidden_layers"] * p["num_key_value_heads"] * groups * p_head * dtype_bytes
        q_width = talker["num_attention_heads"] * head_dim
        widest = 3 * talker["intermediate_size"] + 2 * q_width + 2 * talker["num_key_value_heads"] * head_dim
        return cls(buffers=kv + text + codes + flags + state + sampling + p_cache,
                   activations=max_len * widest * dtype_bytes)


def _sampling_columns():
    from tts_runner.engines.draw import COLUMNS  # torch: imported only when a size is worked out

    return COLUMNS.values()


def model_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def weights_bytes(folder: Path, dtype_bytes: int) -> int:
    """The bytes the model's weights take in the dtype it runs in: its safetensors files (the speech
    tokenizer's included), scaled from the dtype config.json says they are stored in."""
    config = model_config(folder)
    stored = config.get("torch_dtype") or config.get("dtype") or "float32"
    scale = dtype_bytes / DTYPE_BYTES.get(str(stored).removeprefix("torch."), 4)
    return int(sum(f.stat().st_size for f in folder.rglob("*.safetensors")) * scale)


@dataclass(frozen=True)
class Choice:
    rows: int
    reason: str


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def choose_rows(device: str, free_bytes: int | None, total_bytes: int | None, weights: int, row: RowCost,
                candidates: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128), best: int = BEST_ROWS) -> Choice:
    """The rows `auto` runs: CPU_ROWS on the CPU; on CUDA the largest candidate up to `best` whose
    memory fits `free_bytes` (see the module's note), at least 1."""
    if not device.startswith("cuda"):
        return Choice(CPU_ROWS, f"{CPU_ROWS} on the CPU (more rows only slow each step there)")
    reserve = max(RESERVE_MIN_BYTES, int(RESERVE_FRACTION * (total_bytes or free_bytes)))
    room = free_bytes - weights - reserve
    fitting = [n for n in sorted(candidates) if n <= best and n * row.total <= room]
    rows = fitting[-1] if fitting else 1
    why = (f"{gib(free_bytes)} free of {gib(total_bytes or free_bytes)}; weights ~{gib(weights)}, "
           f"~{row.total / 2**20:.0f} MiB a row ({row.buffers / 2**20:.0f} MiB buffers + "
           f"{row.activations / 2**20:.0f} MiB activations), reserve {gib(reserve)}")
    if rows == best and best * row.total <= room:
        return Choice(rows, f"{rows}, the measured best ({why})")
    if not fitting:
        return Choice(1, f"1: not even one row fits by the estimate ({why})")
    return Choice(rows, f"{rows}, the most that fit ({why})")


def choose_for(device: str, folder: Path, dtype: str, max_len: int, free_bytes: int | None,
               total_bytes: int | None) -> Choice:
    """`choose_rows` for the model in `folder` running in `dtype` at `max_len` positions a row."""
    if not device.startswith("cuda"):
        return choose_rows(device, None, None, 0, RowCost(0, 0))
    if not (folder / "config.json").is_file():
        return Choice(CPU_ROWS, f"{CPU_ROWS}: the default model is not in {folder} yet, so its size is unknown")
    dtype_bytes = DTYPE_BYTES.get(dtype.removeprefix("torch."), 2)
    row = RowCost.of(model_config(folder)["talker_config"], max_len, dtype_bytes)
    return choose_rows(device, free_bytes, total_bytes, weights_bytes(folder, dtype_bytes), row)

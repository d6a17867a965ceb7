"""A static key/value cache: fixed buffers written at positions, viewed by leading rows."""

from __future__ import annotations

import torch


class StaticCache:
    """Keys and values of every layer, [rows, kv heads, length, head dim] each, allocated once."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values

    @classmethod
    def allocate(cls, layers: int, rows: int, length: int, config, like: torch.Tensor) -> StaticCache:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (rows, config.num_key_value_heads, length, head_dim)
        return cls([like.new_zeros(shape) for _ in range(layers)], [like.new_zeros(shape) for _ in range(layers)])

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s whole key and value buffers."""
        return self.keys[index], self.values[index]

    def rows(self, n: int) -> StaticCache:
        """A view of the first n rows (shares memory)."""
        return StaticCache([k[:n] for k in self.keys], [v[:n] for v in self.values])

    def tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values]

    def load_rows(self, rows: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Replace the rows `rows` (a device tensor of row indices) with a prefill's keys and values
        (one row each, the first positions; the rest of each row zeroed)."""
        for buffer, source in zip(self.tensors(), [*keys, *values], strict=True):
            padded = source.new_zeros(source.shape[0], *buffer.shape[1:])
            padded[:, :, : source.shape[2]] = source
            buffer.index_copy_(0, rows, padded)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def write(keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Write k and v ([rows, kv heads, n, head dim]) into one layer's buffers at positions `at`, a
    device tensor: [n] positions shared by every row, or [rows, 1] one position per row (n = 1)."""
    if at.dim() == 2:
        index = at[:, None, :, None].expand(-1, k.shape[1], 1, k.shape[3])
        keys.scatter_(2, index, k)
        values.scatter_(2, index, v)
    else:
        keys.index_copy_(2, at, k)
        values.index_copy_(2, at, v)

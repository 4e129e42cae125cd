"""A key/value cache with one row ("slot") per sequence, each row at its own length.

Requests arrive at different times and stop at different lengths. Giving each a slot in one
preallocated buffer lets a single forward pass advance all of them by a token (continuous
batching): every row writes its new key/value at its own position and attends to its own
prefix only. Nothing is left-padded and nothing is copied as sequences grow; a finished
sequence frees its slot for the next request.
"""

from __future__ import annotations

import torch

from lmforge.models.gpt import GPT


class SlotCache:
    """Keys/values (layers, slots, kv heads, max_len, head_dim) plus each slot's filled length.

    Grouped-query models store only their key/value heads (Qwen2.5-0.5B: 2 of 14), which is what
    makes their long contexts cheap. Sliding-window layers get the same buffer and a mask that
    hides keys older than the window, so every layer shares one set of slot lengths.
    """

    def __init__(self, model: GPT, slots: int, max_len: int | None = None) -> None:
        cfg = model.config
        param = next(model.parameters())
        self.max_len = min(max_len or cfg.block_size, cfg.block_size)
        shape = (cfg.n_layer, slots, cfg.kv_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.v = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.lengths = torch.zeros(slots, dtype=torch.long)  # filled tokens per slot (CPU)
        self.slots = slots
        self._rows = slice(0, 0)
        self._pos: torch.Tensor | None = None  # (B, T) positions of the tokens being written
        self._mask: torch.Tensor | None = None  # (B, 1, T, S)
        self._span = 0  # S: keys that any selected row can see
        self._windowed: dict[int, torch.Tensor] = {}  # window -> its mask, for this forward pass

    def select(self, rows: slice, new_tokens: int) -> SlotCache:
        """Aim the next forward pass at slots `rows`, each receiving `new_tokens` tokens after its prefix."""
        device = self.k.device
        start = self.lengths[rows]  # (B,)
        pos = start[:, None] + torch.arange(new_tokens)[None, :]  # (B, T)
        if int(pos.max()) >= self.max_len:
            raise ValueError(f"sequence of {int(pos.max()) + 1} tokens exceeds the cache's {self.max_len}")
        self._rows = rows
        self._row_index = torch.arange(pos.size(0), device=device)[:, None].expand_as(pos)  # (B, T)
        self._span = int(pos.max()) + 1
        keys = torch.arange(self._span)[None, None, :]  # (1, 1, S)
        # A query sees the keys up to its own position: its prefix and itself, never another slot's.
        self._mask = (keys <= pos[:, :, None]).unsqueeze(1).to(device)  # (B, 1, T, S)
        self._pos = pos.to(device)
        self._windowed: dict[int, torch.Tensor] = {}
        return self

    # ---- the attention layers' side of the seam (see models.attention.KVCache)

    @property
    def length(self) -> int:
        return self._span

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        assert self._pos is not None and self._pos.size(1) == T, "select() the rows before the forward pass"
        return self._pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int | None = None):
        """Write k, v (B, K, T, D) at each row's positions; return the visible keys/values and the mask."""
        kb, vb = self.k[layer, self._rows], self.v[layer, self._rows]  # (B, K, L, D) views
        kb[self._row_index, :, self._pos] = k.transpose(1, 2)  # indexed result is (B, T, K, D)
        vb[self._row_index, :, self._pos] = v.transpose(1, 2)
        return kb[:, :, : self._span], vb[:, :, : self._span], self._mask_for(window)

    def _mask_for(self, window: int | None) -> torch.Tensor | None:
        """The causal mask, minus keys more than `window` - 1 positions before each query."""
        if window is None:
            return self._mask
        if window not in self._windowed:  # built once per forward pass, shared by its sliding layers
            keys = torch.arange(self._span, device=self._mask.device)[None, None, :]  # (1, 1, S)
            recent = (self._pos[:, :, None] - keys < window).unsqueeze(1)  # (B, 1, T, S)
            self._windowed[window] = self._mask & recent
        return self._windowed[window]

    # ---- slot bookkeeping for the engine

    def set_length(self, slot: int, length: int) -> None:
        self.lengths[slot] = length

    def copy_slot(self, src: int, dst: int) -> None:
        """Share one prefilled prompt between several samples of it (n > 1)."""
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

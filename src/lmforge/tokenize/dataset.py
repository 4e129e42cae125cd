"""Training examples from token shards: random contiguous windows or packed documents, from memory maps.

The shards are read through memory maps and only the rows asked for are copied, so a corpus
larger than RAM trains with flat memory. Both samplers are functions of the seed alone: the
same seed gives the same rows on any machine and any run, which a resumed training relies on.

- `windows`: uniformly random start positions over the whole stream; each row is one
  contiguous slice (it may cross a document or a shard boundary, as in nanoGPT).
- `packed`: documents in a seeded order, each already ending with EOS, concatenated and cut
  into rows; the order is shuffled per shard (shard order, then documents inside a shard),
  so only one shard's index is ever held in memory.

Rows are `seq_len + 1` tokens long: inputs are `row[:-1]`, targets `row[1:]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmforge.errors import InputError


class TokenDataset:
    """The token shards of one directory (or a single token file) seen as one stream."""

    def __init__(self, path: str | Path) -> None:
        from lmforge.tokenize.encode import read_token_file
        from lmforge.tokenize.shards import MANIFEST_FILE, META_FILE, idx_path, tok_path, token_shard_ids

        p = Path(path)
        self.path = p
        self.eos_id: int | None = None
        if p.is_file():
            self._tokens = [read_token_file(p)]
            self._index_paths: list[Path | None] = [None]
        else:
            ids = token_shard_ids(p)
            if not ids:
                raise InputError(f"{p} holds no finished token shards (shard-*.tok with .done markers)")
            self._tokens = [read_token_file(tok_path(p, s)) for s in ids]
            self._index_paths = [idx_path(p, s) for s in ids]
            for name in (MANIFEST_FILE, META_FILE):
                if (p / name).is_file():
                    self.eos_id = json.loads((p / name).read_text(encoding="utf-8")).get("eos_id")
                    break
        sizes = np.array([t.size for t in self._tokens], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        self.dtype = self._tokens[0].dtype
        self._index_maps: dict[int, np.ndarray] = {}
        self._first_docs: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_shards(self) -> int:
        return len(self._tokens)

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the whole stream, copied out of the maps (crossing shards if needed)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"slice [{start}, {stop}) is outside 0..{len(self)}")
        out = np.empty(stop - start, dtype=self.dtype)
        pos = start
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while pos < stop:
            base = int(self._starts[shard])
            take = min(stop, int(self._starts[shard + 1])) - pos
            out[pos - start : pos - start + take] = self._tokens[shard][pos - base : pos - base + take]
            pos += take
            shard += 1
        return out

    def offsets(self, shard: int) -> np.ndarray:
        """Document start offsets within one shard (plus its end); needs the shard's index file."""
        from lmforge.tokenize.encode import read_index_file

        path = self._index_paths[shard]
        if path is None:
            raise InputError(f"{self.path} is a single token file without an index; packing needs token shards")
        offsets = np.asarray(read_index_file(path), dtype=np.int64)
        if int(offsets[-1]) != self._tokens[shard].size:
            raise InputError(f"index {path} does not match its token file; re-encode the shard")
        return offsets

    def flags(self, shard: int) -> np.ndarray:
        """One shard's word and sentence flags (`lmforge.tokenize.words`), memory-mapped: WordPiece shards only."""
        from lmforge.tokenize.words import read_flags

        path = self._index_paths[shard]
        if path is None:
            raise InputError(f"{self.path} is a single token file; BERT pretraining needs WordPiece token shards")
        return read_flags(path.with_suffix(".wrd"), self._tokens[shard].size)

    def shard_tokens(self, shard: int) -> np.ndarray:
        return self._tokens[shard]

    def _index(self, shard: int) -> np.ndarray:
        """The memory-mapped document index of a shard, opened once (nothing is copied)."""
        from lmforge.tokenize.encode import read_index_file

        if shard not in self._index_maps:
            if self._index_paths[shard] is None:
                raise InputError(f"{self.path} is a single token file without an index; this needs token shards")
            self._index_maps[shard] = read_index_file(self._index_paths[shard])
        return self._index_maps[shard]

    @property
    def num_documents(self) -> int:
        return int(self._doc_starts()[-1])

    def _doc_starts(self) -> np.ndarray:
        """(shards + 1,) the first global document number of each shard: one integer per shard."""
        if self._first_docs is None:
            counts = [self._index(s).size - 1 for s in range(self.num_shards)]
            self._first_docs = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._first_docs

    def document(self, number: int) -> tuple[int, int, int]:
        """(shard, start, stop) of document `number` (0 .. num_documents - 1), EOS included."""
        starts = self._doc_starts()
        shard = int(np.searchsorted(starts, number, side="right")) - 1
        index = self._index(shard)
        local = number - int(starts[shard])
        return shard, int(index[local]), int(index[local + 1])

    def document_at(self, position: int) -> tuple[int, int, int, int]:
        """(document number, shard, start, stop) of the document holding token `position` of the stream."""
        shard = int(np.searchsorted(self._starts, position, side="right")) - 1
        index = self._index(shard)
        local = int(np.searchsorted(index, position - int(self._starts[shard]), side="right")) - 1
        return int(self._doc_starts()[shard]) + local, shard, int(index[local]), int(index[local + 1])

    def windows(
        self, seq_len: int, seed: int, count: int | None = None, rank: int = 0, world_size: int = 1
    ) -> Iterator[np.ndarray]:
        """Random contiguous rows of seq_len + 1 tokens; endless unless `count` is given.

        Every rank draws the same sequence of starts and keeps every world_size-th, so ranks
        never see the same row and together see exactly what one process would.
        """
        _check_split(rank, world_size)
        if seq_len < 1 or len(self) < seq_len + 1:
            raise InputError(f"need at least seq_len + 1 = {seq_len + 1} tokens, the data has {len(self)}")
        rng = np.random.default_rng(seed)
        high = len(self) - seq_len  # exclusive bound on the start
        made = drawn = 0
        while count is None or made < count:
            starts = rng.integers(0, high, size=1024)
            for start in starts:
                drawn += 1
                if (drawn - 1) % world_size != rank:
                    continue
                yield self.slice(int(start), int(start) + seq_len + 1)
                made += 1
                if count is not None and made >= count:
                    return

    def document_order(self, seed: int | None) -> Iterator[tuple[int, int, int]]:
        """(shard, start, stop) of each document in packing order; None keeps the stored order."""
        rng = np.random.default_rng(seed) if seed is not None else None
        shards = rng.permutation(self.num_shards) if rng is not None else np.arange(self.num_shards)
        for shard in shards:
            offsets = self.offsets(int(shard))
            docs = offsets.size - 1
            order = rng.permutation(docs) if rng is not None else np.arange(docs)
            for d in order:
                yield int(shard), int(offsets[d]), int(offsets[d + 1])

    def packed(
        self, seq_len: int, seed: int | None, rank: int = 0, world_size: int = 1, drop_last: bool = True
    ) -> Iterator[np.ndarray]:
        """Rows of seq_len + 1 tokens made of whole documents back to back, each ending with its EOS.

        A document longer than the rest of a row continues in the next row (no padding, no
        tokens lost); the final short row is dropped unless `drop_last` is False. One pass
        over the data is one epoch; call again with another seed for the next.
        """
        _check_split(rank, world_size)
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1 (got {seq_len})")
        width = seq_len + 1
        row = np.empty(width, dtype=self.dtype)
        fill = made = 0
        for shard, start, stop in self.document_order(seed):
            tokens = self._tokens[shard]
            while start < stop:
                take = min(stop - start, width - fill)
                row[fill : fill + take] = tokens[start : start + take]
                fill += take
                start += take
                if fill == width:
                    if made % world_size == rank:
                        yield row.copy()
                    made += 1
                    fill = 0
        if fill and not drop_last and made % world_size == rank:
            yield row[:fill].copy()


def batches(rows: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack rows into (batch_size, seq_len + 1) int64 arrays, ready for torch.from_numpy."""
    buf: list[np.ndarray] = []
    for row in rows:
        buf.append(row)
        if len(buf) == batch_size:
            yield np.stack(buf).astype(np.int64)
            buf = []


def _check_split(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1 (got rank={rank}, world_size={world_size})")

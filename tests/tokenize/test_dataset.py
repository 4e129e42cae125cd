"""Memory-mapped windows and document packing over token shards: contiguity, EOS separation, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.pipeline.executors import LocalExecutor
from lmforge.tokenize.dataset import TokenDataset, batches
from lmforge.tokenize.shards import encode_shards, iter_token_shards

from .conftest import write_stage


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory, records, tokenizer_dir):
    root = tmp_path_factory.mktemp("ds")
    stage = write_stage(root / "stages" / "01-x", records[:240], shard_size=60)
    encode_shards(stage, tokenizer_dir, root / "tokens", LocalExecutor(1))
    return root / "tokens"


@pytest.fixture(scope="module")
def stream(tokens_dir) -> np.ndarray:
    return np.concatenate([np.asarray(t) for _, t, _ in iter_token_shards(tokens_dir)])


def _docs(tokens_dir) -> dict[tuple[int, int, int], np.ndarray]:
    return {(i, int(o[d]), int(o[d + 1])): np.asarray(t[o[d] : o[d + 1]])
            for i, (_, t, o) in enumerate(iter_token_shards(tokens_dir)) for d in range(o.size - 1)}


def test_the_shards_are_memory_mapped_not_loaded(tokens_dir, stream):
    ds = TokenDataset(tokens_dir)
    assert ds.num_shards == 4 and len(ds) == stream.size and ds.eos_id == 0
    assert all(isinstance(t, np.memmap) for t in ds._tokens)


def test_slices_cross_shard_boundaries_seamlessly(tokens_dir, stream):
    ds = TokenDataset(tokens_dir)
    edge = int(ds._starts[1])
    for a, b in [(0, 10), (edge - 5, edge + 5), (edge - 3, int(ds._starts[3]) + 2), (len(ds) - 4, len(ds))]:
        assert np.array_equal(ds.slice(a, b), stream[a:b])
    with pytest.raises(IndexError):
        ds.slice(0, len(ds) + 1)


def test_windows_are_contiguous_slices_and_depend_only_on_the_seed(tokens_dir, stream):
    ds = TokenDataset(tokens_dir)
    rows = list(ds.windows(seq_len=32, seed=7, count=25))
    assert all(r.shape == (33,) for r in rows)
    view = np.lib.stride_tricks.sliding_window_view(stream, 33)
    for r in rows:
        assert (view == r).all(axis=1).any()  # the row occurs in the stream as it is
    again = list(TokenDataset(tokens_dir).windows(seq_len=32, seed=7, count=25))
    assert all(np.array_equal(a, b) for a, b in zip(rows, again, strict=True))
    other = list(ds.windows(seq_len=32, seed=8, count=25))
    assert not all(np.array_equal(a, b) for a, b in zip(rows, other, strict=True))


def test_ranks_split_the_windows_of_one_process(tokens_dir):
    ds = TokenDataset(tokens_dir)
    whole = list(ds.windows(16, seed=3, count=12))
    r0 = list(ds.windows(16, seed=3, count=6, rank=0, world_size=2))
    r1 = list(ds.windows(16, seed=3, count=6, rank=1, world_size=2))
    assert all(np.array_equal(a, b) for a, b in zip(whole[0::2], r0, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(whole[1::2], r1, strict=True))


def test_packed_rows_are_whole_documents_separated_by_eos_in_the_seeded_order(tokens_dir):
    ds = TokenDataset(tokens_dir)
    docs = _docs(tokens_dir)
    order = list(ds.document_order(seed=11))
    assert sorted(order) == sorted(docs)  # a permutation of all documents
    assert order != sorted(order)
    rows = list(ds.packed(seq_len=64, seed=11, drop_last=False))
    assert all(r.shape == (65,) for r in rows[:-1])
    expected = np.concatenate([docs[k] for k in order])
    assert np.array_equal(np.concatenate(rows), expected)  # nothing lost, reordered or padded
    assert all(docs[k][-1] == ds.eos_id for k in order)  # every document is closed by EOS
    assert int((expected == ds.eos_id).sum()) == len(docs)
    same = list(TokenDataset(tokens_dir).packed(seq_len=64, seed=11, drop_last=False))
    assert all(np.array_equal(a, b) for a, b in zip(rows, same, strict=True))
    kept = list(ds.packed(seq_len=64, seed=11))
    assert len(kept) == expected.size // 65


def test_unshuffled_packing_is_the_stored_stream_and_ranks_interleave(tokens_dir, stream):
    ds = TokenDataset(tokens_dir)
    rows = list(ds.packed(seq_len=50, seed=None))
    assert np.array_equal(np.concatenate(rows), stream[: len(rows) * 51])
    r1 = list(ds.packed(seq_len=50, seed=None, rank=1, world_size=3))
    assert all(np.array_equal(a, b) for a, b in zip(rows[1::3], r1, strict=True))


def test_batches_stack_rows_as_int64(tokens_dir):
    ds = TokenDataset(tokens_dir)
    out = list(batches(ds.windows(8, seed=0, count=10), batch_size=4))
    assert len(out) == 2 and out[0].shape == (4, 9) and out[0].dtype == np.int64


def test_single_token_file_gives_windows_but_not_packing(tokens_dir, tmp_path):
    from lmforge.tokenize.shards import concat_token_shards

    concat_token_shards(tokens_dir, tmp_path / "train.tok")
    ds = TokenDataset(tmp_path / "train.tok")
    assert len(ds) == len(TokenDataset(tokens_dir))
    assert len(list(ds.windows(16, seed=1, count=3))) == 3
    with pytest.raises(InputError, match="without an index"):
        list(ds.packed(16, seed=1))
    with pytest.raises(InputError, match="no finished token shards"):
        TokenDataset(tmp_path)

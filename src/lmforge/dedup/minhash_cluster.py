"""The reduce side of MinHash-LSH: band buckets -> candidate pairs -> verified pairs -> clusters -> keepers.

Memory is bounded by the band being processed: a band's hashes for the whole corpus (8 bytes
per document; several bands per read only while they fit `BAND_READ_BYTES`) are read, grouped
and let go before the next; the union-find parent array (8 bytes per document) and the
candidate pairs (8 bytes each; a bucket gives O(size) pairs except the small ones that give all
pairs for verification) are the only corpus-sized state. Signatures are read shard by shard and
only for verification, for a bounded chunk of pairs at a time; nothing holds all signatures.

Every document is named by its global index: shard order, then row order. Roots of the
union-find are always the smallest index of their component, so clusters, keepers and
tie-breaks depend only on that order, never on hash-table or thread scheduling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

ReadColumn = Callable[[int, str], np.ndarray]  # (shard number, column) -> that shard's column as NumPy


def bucket_pairs(keys: np.ndarray, members: np.ndarray, all_pairs_up_to: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (u < v) from every bucket of equal keys with two or more members.

    Buckets of up to `all_pairs_up_to` members give all their pairs; larger ones link each
    member to the bucket's smallest index (a star: the same components with O(bucket) pairs
    instead of O(bucket**2), which is all union-find needs when pairs are not verified).
    `members` must be ascending so a stable sort puts each bucket's smallest index first.
    """
    if len(keys) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_members = keys[order], members[order]
    del order
    new = np.empty(len(sorted_keys), dtype=bool)
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(new)))
    group = np.cumsum(new) - 1
    rank = np.arange(len(new)) - starts[group]  # position inside the bucket
    small = (sizes[group] <= all_pairs_up_to) & (sizes[group] > 1)
    # star pairs of the large buckets
    star = ~new & ~small
    u = [sorted_members[starts[group[star]]]]
    v = [sorted_members[star]]
    # all pairs of the small ones: every member with each later member of its bucket, by offset
    pos = np.flatnonzero(small)
    later = sizes[group[pos]] - 1 - rank[pos]
    for k in range(1, all_pairs_up_to):
        has = pos[later >= k]
        u.append(sorted_members[has])
        v.append(sorted_members[has + k])
    return np.concatenate(u), np.concatenate(v)


def compress(parent: np.ndarray) -> None:
    """Point every node straight at its root (pointer jumping: O(N log depth))."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand


def union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Merge the components of every pair (u[i], v[i]); each root ends up the smallest index in its component.

    Rounds of hooking: every pair whose roots differ proposes hooking the larger root under
    the smaller; `np.minimum.at` keeps the smallest proposal per root, and pairs left
    unresolved go into the next round. Each round hooks at least one root, so it terminates.
    """
    while len(u):
        compress(parent)
        ru, rv = parent[u], parent[v]
        open_ = ru != rv
        if not open_.any():
            return
        u, v, ru, rv = u[open_], v[open_], ru[open_], rv[open_]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
    compress(parent)


def agreement_needed(num_perm: int, threshold: float) -> int:
    """Equal signature values a pair needs to pass verification.

    The count of equal values is Binomial(num_perm, J). Rejecting only estimates more than two
    standard errors below `threshold` keeps ~98% of pairs at exactly the threshold (a plain
    `estimate >= threshold` would drop half of them) while still rejecting nearly all pairs
    0.15 below it: with 128 permutations at 0.8 a pair needs 94 of 128 (estimate >= 0.734).
    """
    mean = num_perm * threshold
    return max(1, int(np.ceil(mean - 2.0 * np.sqrt(mean * (1.0 - threshold)) - 1e-9)))


def verify_pairs(
    u: np.ndarray, v: np.ndarray, offsets: np.ndarray, read: ReadColumn, num_perm: int, threshold: float,
    chunk_bytes: int = 64 << 20,
) -> np.ndarray:
    """Boolean mask of pairs whose signatures agree often enough (see `agreement_needed`).

    The share of equal MinHash values estimates Jaccard similarity; checking it drops the
    pairs that met in one band by luck. Signatures are gathered shard by shard into two
    buffers of at most `chunk_bytes` each, so the pair count, not the corpus, sets the memory.
    """
    keep = np.zeros(len(u), dtype=bool)
    need = agreement_needed(num_perm, threshold)
    step = max(1, chunk_bytes // (2 * num_perm))
    for lo in range(0, len(u), step):
        cu, cv = u[lo : lo + step], v[lo : lo + step]
        left = np.empty((len(cu), num_perm), dtype=np.uint16)
        right = np.empty_like(left)
        su = np.searchsorted(offsets, cu, side="right") - 1
        sv = np.searchsorted(offsets, cv, side="right") - 1
        for shard in np.union1d(su, sv):
            sig = read(int(shard), "signature")
            base = offsets[shard]
            mu, mv = su == shard, sv == shard
            left[mu] = sig[cu[mu] - base]
            right[mv] = sig[cv[mv] - base]
        keep[lo : lo + step] = (left == right).sum(axis=1) >= need
    return keep


def choose_keepers(roots: np.ndarray, members: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """The kept document of each member's cluster, aligned with `members`.

    With `lengths` (keep="longest"): the longest document, ties to the earliest; without
    (keep="first"): the earliest, which is the root itself.
    """
    if lengths is None:
        return roots.copy()
    order = np.lexsort((members, -lengths, roots))
    first = np.ones(len(order), dtype=bool)
    first[1:] = roots[order][1:] != roots[order][:-1]
    best = members[order][first]  # one per cluster, in ascending root order
    cluster_roots = roots[order][first]
    return best[np.searchsorted(cluster_roots, roots)]

"""The packing planner in pure Python: the readable specification of ``torch.ops.s1fast.plan`` (csrc/planner.cpp).

Both use the same SplitMix64 generator and tie-breaking rules and receive the same float64 costs and grouping
keys, so their plans are identical (tests/test_packing.py checks it). Modes: docs/packing.md.
"""
from __future__ import annotations

import bisect

import numpy as np

MODES = ("none", "balanced", "tokens")   # the planner's modes, in the ids the native op takes
_MODE_ID = {m: i for i, m in enumerate(MODES)}


class SplitMix64:
    """The generator both planners use (Steele et al. 2014): 64-bit state, one add and two xor-multiplies."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.s = seed & self.MASK

    def next(self) -> int:
        self.s = (self.s + 0x9E3779B97F4A7C15) & self.MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def shuffle(self, xs: list) -> None:
        """Fisher-Yates, from the back; j = next() % (i+1) (bias < 2^-40 for lists below 2^24)."""
        for i in range(len(xs) - 1, 0, -1):
            j = self.next() % (i + 1)
            xs[i], xs[j] = xs[j], xs[i]


def _plan_reference(lengths: list, costs: list, keys: list, W: int, T: int, G: int, epochs: int, seed: int, mode: int,
                    window: int, accum: int):
    """Pure-Python planner: the specification csrc/packing.cpp follows line by line."""
    n = len(lengths)
    rng = SplitMix64(seed)
    steps = []  # (epoch, [rank][micro] -> ids)
    for e in range(epochs):
        perm = list(range(n))
        rng.shuffle(perm)
        if mode == _MODE_ID["none"]:
            for s0 in range(0, n, G):
                chunk = perm[s0:s0 + G]
                M = -(-len(chunk) // W)
                ranks = [[[] for _ in range(M)] for _ in range(W)]
                for j, i in enumerate(chunk):
                    ranks[j % W][j // W].append(i)
                steps.append((e, ranks))
            continue
        groups = []
        if mode == _MODE_ID["balanced"]:
            for w0, w1 in _windows(n, G, window):
                w = sorted(perm[w0:w1], key=lambda i: -keys[i])  # stable: ties keep the shuffled order
                groups.extend(w[s0:s0 + G] for s0 in range(0, len(w), G))
            rng.shuffle(groups)
            steps.extend((e, _place_examples(g, lengths, costs, W, T)) for g in groups)
        else:
            bins = []
            for w0, w1 in _windows(n, G, window):
                w = sorted(perm[w0:w1], key=lambda i: -lengths[i])
                wb = _best_fit(w, lengths, T)
                bc = [_sum_cost(b, costs) for b in wb]
                bins.extend(wb[k] for k in sorted(range(len(wb)), key=lambda k: -bc[k]))
            per = W * accum
            groups = [bins[k:k + per] for k in range(0, len(bins), per)]
            rng.shuffle(groups)
            steps.extend((e, _place_bins(g, costs, W, accum)) for g in groups)
    return _flatten(steps, W)


def _windows(n: int, G: int, window: int) -> list:
    """Grouping windows of an epoch as example ranges [w0, w1): the ceil(n/G) steps are split into
    ceil(steps/window) windows of near-equal step counts (the first ``steps % windows`` get one more), so no
    small leftover window spoils the grouping; the last window also holds the partial step."""
    steps = -(-n // G)
    nw = -(-steps // window)
    q, rem = divmod(steps, nw)
    out, s0 = [], 0
    for k in range(nw):
        s1 = s0 + q + (1 if k < rem else 0)
        out.append((s0 * G, min(n, s1 * G)))
        s0 = s1
    return out


def _sum_cost(ids, costs) -> float:
    s = 0.0
    for i in ids:
        s += costs[i]
    return s


def _lpt_rank(load: list, eligible=None) -> int:
    """The least-loaded rank (lowest index on ties), among those with ``eligible[r]`` if given."""
    best = -1
    for r in range(len(load)):
        if eligible is not None and not eligible[r]:
            continue
        if best < 0 or load[r] < load[best]:
            best = r
    return best


def _place_examples(ids: list, lengths, costs, W: int, T: int) -> list:
    """Balanced mode, one step: LPT of examples (already cost-descending) over ranks, then first-fit-decreasing
    by length into micro-batches per rank, micro-batches ordered by cost (descending), padded to equal count."""
    load, members = [0.0] * W, [[] for _ in range(W)]
    for i in ids:
        r = _lpt_rank(load)
        load[r] += costs[i]
        members[r].append(i)
    per_rank = []
    for r in range(W):
        bins, room = [], []
        for i in sorted(members[r], key=lambda i: -lengths[i]):
            for b in range(len(bins)):
                if room[b] >= lengths[i]:
                    bins[b].append(i)
                    room[b] -= lengths[i]
                    break
            else:
                bins.append([i])
                room.append(T - lengths[i])
        bc = [_sum_cost(b, costs) for b in bins]
        per_rank.append([bins[b] for b in sorted(range(len(bins)), key=lambda b: -bc[b])])
    M = max(1, max(len(x) for x in per_rank))
    return [x + [[] for _ in range(M - len(x))] for x in per_rank]


def _best_fit(ids: list, lengths, T: int) -> list:
    """Best-fit (ids already length-descending): the open bin with the least room that fits, lowest index on
    ties, else a new bin. ``open_`` is a sorted list of (room, bin index)."""
    bins, open_ = [], []
    for i in ids:
        L = lengths[i]
        k = bisect.bisect_left(open_, (L, -1))
        if k < len(open_):
            room, b = open_.pop(k)
            bins[b].append(i)
            bisect.insort(open_, (room - L, b))
        else:
            bins.append([i])
            bisect.insort(open_, (T - L, len(bins) - 1))
    return bins


def _place_bins(bins: list, costs, W: int, accum: int) -> list:
    """Tokens mode, one step: LPT of micro-batches (cost-descending) over ranks, at most ``accum`` per rank."""
    bc = [_sum_cost(b, costs) for b in bins]
    load, count, per_rank = [0.0] * W, [0] * W, [[] for _ in range(W)]
    for k in sorted(range(len(bins)), key=lambda k: -bc[k]):
        r = _lpt_rank(load, [c < accum for c in count])
        load[r] += bc[k]
        count[r] += 1
        per_rank[r].append(bins[k])
    M = max(1, max(count))
    return [x + [[] for _ in range(M - len(x))] for x in per_rank]


def _flatten(steps, W):
    order, offsets, step_micro, step_epoch = [], [0], [], []
    for e, ranks in steps:
        step_micro.append(len(ranks[0]))
        step_epoch.append(e)
        for r in range(W):
            for mb in ranks[r]:
                order.extend(mb)
                offsets.append(len(order))
    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return as64(order), as64(offsets), as64(step_micro), as64(step_epoch)

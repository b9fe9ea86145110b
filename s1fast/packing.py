"""Sequence packing: balanced plans across data-parallel ranks, and the packed collate.

With one sequence per GPU (s1's set-up) an optimizer step lasts as long as its longest sequence. This module
plans, for every optimizer step, which examples each rank processes in which packed micro-batch, so that the
slowest rank is as close as possible to the mean, by a cost model of real training work::

    cost(L) = a*L + b*L*L            (CostModel; a: linear FLOPs per token, b: causal attention)

Modes (``make_plan(mode=...)``)
-------------------------------
``none``      s1's reference: a fresh random order each epoch (by seed), consecutive chunks of ``global_batch``
              examples form the steps, and example j of a step goes to rank ``j % world_size``, micro-step
              ``j // world_size`` (one example per rank per micro-step, accumulation = global_batch / world_size,
              as a DistributedSampler deals them). Keeps the recipe's step count and objective.
``balanced``  (default) keeps the recipe's step count and objective too: every step holds ``global_batch``
              examples and every example is seen once per epoch. What changes is which examples share a step:
              each epoch is shuffled, cut into grouping windows of ``group_window`` steps, each window sorted by
              cost and cut into steps (so a step holds examples of similar cost), and the steps of the epoch are
              shuffled. With ``tolerance`` > 0 the sort key is the cost's level in steps of (1 + tolerance)
              (``grouping_keys``), so examples of nearly equal cost keep their random order and the step
              composition changes from epoch to epoch (tolerance 0: the sorted, optimal but nearly fixed one).
              Inside a step, examples go to ranks by longest-processing-time-first on cost, and each rank's
              examples are packed first-fit-decreasing into micro-batches of at most ``max_tokens``;
              micro-batches are ordered by cost so micro-step m costs about the same on every rank (FSDP syncs
              every micro-step). ``group_window=1`` keeps s1's random step composition (only placement changes);
              larger windows and smaller tolerances trade randomness of composition for balance
              (bench/RESULTS.md, Packing: s1K-1.1 derived lengths, 16 ranks: straggler 1.92 with window 1,
              1.038 with the defaults window 64 / tolerance 0.03, 1.028 with tolerance 0).
              With as many examples per step as ranks only the composition can help.
``tokens``    a different optimisation (NOT the recipe's trajectory: fewer, larger steps): examples are packed
              best-fit-decreasing into micro-batches of ``max_tokens`` tokens inside each window, and a step is
              ``world_size * accum`` micro-batches (``accum`` defaults to ``max(1, global_batch // world_size)``),
              dealt to ranks by cost, ``accum`` each.

The planner exists twice with identical output: in C++ (``torch.ops.s1fast.plan``, csrc/packing.cpp, the fast
one; csrc/planner.cpp) and in pure Python below (``_plan_reference``, the readable specification used by the
tests). Both use the same SplitMix64 generator and tie-breaking rules, and receive the same float64 costs and
grouping keys (computed once in numpy), so plans are identical.

Loss weights (exact objective with a plain gradient SUM)
--------------------------------------------------------
``Step.example_weight[i]`` is the weight of EACH supervised token of example i in that step, normalisation
included:

* ``weighting="sequence"`` (s1's reference run): ``1 / (n_i * S)``, n_i = supervised tokens of example i,
  S = examples of the step that have supervised tokens. Each sequence's token mean, averaged over the step.
* ``weighting="token"``: ``1 / N``, N = supervised tokens of the whole step (all ranks, all micro-steps).

Either way the weights of all supervised tokens of a step sum to 1. A rank's loss for a micro-batch is
``sum_t loss_weight[t] * nll[t]`` over its local tokens (no mean, no division by the number of micro-steps or
ranks); gradients accumulate over the rank's micro-steps, and the data-parallel reduction must be a SUM
(FSDP2: ``model.set_gradient_divide_factor(1.0)``, or multiply the loss by world_size if the reduction averages).
Then the gradient is exactly that of the step's objective, with no collective to count tokens.
n_i must be the number of targets the collate produces for example i, i.e. ``(labels[1:] != -100).sum()``
(the label of a document's first token is never a target: nothing precedes it).

Empty micro-batches: every rank of a step has the same number of micro-batches (``Step.micro_steps``); ranks
with less work get empty ones (``[]``). ``collate([], [])`` yields a zero-token ``PackedBatch``
(``num_docs == 0``), or with ``pad_to_nonempty=True`` one dummy token whose weight is 0, for kernels or FSDP
collectives that want a real shape; both contribute exactly 0 to the loss and gradient.

Collate
-------
``collate(examples, weights)`` concatenates one rank's micro-batch of (input_ids, labels) documents into the
varlen layout: ``position_ids`` restart at 0 per document, ``targets[t] = labels[t+1]`` inside a document and
-100 at its last token (nothing crosses a boundary), ``loss_weight`` = the example's weight where there is a
target, ``cu_seqlens`` int32, ``max_seqlen`` a host int computed once per batch. C++ on CPU
(``torch.ops.s1fast.pack_collate``), a CUDA kernel when asked for a CUDA device and the extension was built
with CUDA (csrc/collate_cuda.cu), else the CPU result moved to the device. ``collate_reference`` is the
pure-Python version for tests.

Usage::

    plan = make_plan(ds.lengths, ds.supervised, world_size=16, max_tokens=32768, global_batch=16, epochs=5,
                     cost=CostModel.from_hf_config(cfg))
    for step in plan.steps:
        for mb in step.micro_batches[rank]:
            batch = collate([ds[i] for i in mb], [step.example_weight[i] for i in mb]).to("cuda")

    python -m s1fast.packing --lengths FILE --world-size 16 --max-tokens 32768 --global-batch 16 --epochs 5 \\
        --mode balanced [--plan-out plan.json]
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

MODES = ("none", "balanced", "tokens")
_MODE_ID = {m: i for i, m in enumerate(MODES)}
WEIGHTINGS = ("sequence", "token")
DEFAULT_TOLERANCE = 0.03  # balanced mode: cost levels of (1 + tolerance) share a grouping key (grouping_keys)
DEFAULT_GROUP_WINDOW = 64  # steps per grouping window (s1K: 63 steps/epoch, so the whole epoch; RESULTS.md)
IGNORE = -100


# ----------------------------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class CostModel:
    """Training work of one document of L tokens: ``cost(L) = a*L + b*L*L`` (FLOPs, forward + backward).

    ``from_hf_config`` derives the constants from a Hugging Face decoder config. With hidden size h, layers n,
    query heads q, key/value heads k, head dim d (``head_dim`` or h/q), MLP width I and vocabulary V:

    * matmul parameters touched by every token: per layer the q/k/v/o projections ``h*d*(2q + 2k)`` and the
      gated MLP ``3*h*I``, plus the lm_head ``h*V`` (the embedding is a lookup, not a matmul):
      ``P = n*(h*d*(2q+2k) + 3*h*I) + h*V``. A matmul costs 2 FLOPs per parameter per token forward and 4
      backward, so ``a = 6*P``.
    * attention: for one query/key pair, QK^T and PV cost ``2*d`` FLOPs each per head forward, ``4*q*d`` for
      all heads; backward is twice the forward, so 12*q*d per pair per layer. A causal document of L tokens has
      L*(L+1)/2 ~ L^2/2 pairs, so the L^2 coefficient is ``b = 12*q*d*n / 2 = 6*q*d*n`` (b is per entry of the
      L x L score matrix, causal half already applied).

    Qwen2.5-32B (docs/recipe.md): P = 31.98e9, a = 1.919e11, b = 1.966e6: attention equals the linear work at
    L = a/b ~ 97.6K tokens and adds ~34% at 32K.
    """

    a: float
    b: float

    def cost(self, L):
        """Cost of documents of lengths L (a number -> float, or an array -> float64 array): a*L + b*L*L."""
        x = np.asarray(L, dtype=np.float64)
        c = self.a * x + self.b * x * x
        return float(c) if c.ndim == 0 else c

    @classmethod
    def from_model_config(cls, cfg) -> "CostModel":
        """From an ``s1fast.model.ModelConfig`` (its ``cost_coefficients``: the one home of the formula)."""
        from .model import cost_coefficients
        a, b = cost_coefficients(cfg)
        return cls(a=float(a), b=float(b))

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "CostModel":
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise KeyError(f"CostModel.from_hf_config: config lacks {missing}; pass a Hugging Face decoder "
                           f"config dict (config.json) with {list(need)}")
        from .model import ModelConfig
        h, q = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return cls.from_model_config(ModelConfig(
            hidden_size=h, num_layers=int(cfg["num_hidden_layers"]), num_heads=q,
            num_kv_heads=int(cfg.get("num_key_value_heads") or q), head_dim=int(cfg.get("head_dim") or h // q),
            intermediate_size=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"])))


def __getattr__(name):
    if name == "DEFAULT_COST":  # Qwen2.5-32B's, from s1fast.model.CONFIGS (lazily: model imports torch kernels)
        from .model import CONFIGS
        return CostModel.from_model_config(CONFIGS["Qwen2.5-32B-Instruct"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class Step:
    """One optimizer step: ``micro_batches[rank][micro]`` = example ids, the same micro count on every rank."""

    micro_batches: list
    supervised_tokens: int
    num_examples: int
    epoch: int
    example_weight: dict  # example id -> weight of each of its supervised tokens (normalisation included)

    @property
    def micro_steps(self) -> int:
        return len(self.micro_batches[0]) if self.micro_batches else 0


@dataclass
class Plan:
    """A packing plan in flat arrays (what both planners produce) with summary statistics.

    ``order`` lists example ids micro-batch by micro-batch, in the order step -> rank -> micro;
    ``micro_offsets`` (len = micro-batches + 1) delimits the micro-batches; step k has ``step_micro[k]``
    micro-batches per rank, so ``world_size * step_micro[k]`` in all; ``step_epoch[k]`` is its epoch.
    ``steps`` materialises these as ``Step`` objects on first access.
    """

    world_size: int
    max_tokens: int
    global_batch: int
    epochs: int
    seed: int
    mode: str
    weighting: str
    group_window: int
    tolerance: float
    accum: int
    cost: CostModel
    lengths: np.ndarray
    supervised: np.ndarray
    order: np.ndarray
    micro_offsets: np.ndarray
    step_micro: np.ndarray
    step_epoch: np.ndarray
    plan_seconds: float = 0.0
    backend: str = "native"
    stats: dict = field(default_factory=dict)
    _steps: list | None = field(default=None, repr=False)

    # -- derived arrays (vectorised: the plan for 1M examples must stay cheap)
    def _micro_start(self) -> np.ndarray:
        """Index of each step's first micro-batch, plus the total (len = steps + 1)."""
        return np.concatenate([[0], np.cumsum(self.world_size * self.step_micro)]).astype(np.int64)

    def _entry_step(self) -> np.ndarray:
        """The step of every entry of ``order``."""
        per_step = np.diff(self.micro_offsets[self._micro_start()])
        return np.repeat(np.arange(len(self.step_micro)), per_step)

    def entry_weights(self) -> np.ndarray:
        """Per-token loss weight of every entry of ``order`` (see the module docstring)."""
        step_of = self._entry_step()
        sup = self.supervised[self.order].astype(np.float64)
        K = len(self.step_micro)
        if self.weighting == "token":
            den = np.bincount(step_of, weights=sup, minlength=K)[step_of]
        else:
            s_step = np.bincount(step_of, weights=(sup > 0).astype(np.float64), minlength=K)
            den = sup * s_step[step_of]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((sup > 0) & (den > 0), 1.0 / den, 0.0)

    def compute_stats(self) -> dict:
        W, K, off = self.world_size, len(self.step_micro), self.micro_offsets
        tok = self.lengths[self.order]
        cs = np.concatenate([[0.0], np.cumsum(self.cost.cost(tok))])
        ts = np.concatenate([[0], np.cumsum(tok)])
        mc, mt = cs[off[1:]] - cs[off[:-1]], ts[off[1:]] - ts[off[:-1]]  # per micro-batch cost and tokens
        # Steps with the same micro count M are a (steps, W, M) block of micro-batches: rank cost = sum over M;
        # FSDP synchronises every micro-step, so a step also lasts sum over m of the slowest rank's micro m.
        start = self._micro_start()[:-1]
        rank_cost, sync = np.zeros((K, W)), 0.0
        for M in np.unique(self.step_micro):
            ks = np.flatnonzero(self.step_micro == M)
            blk = mc[start[ks, None, None] + np.arange(W)[None, :, None] * M + np.arange(M)[None, None, :]]
            rank_cost[ks] = blk.sum(axis=2)
            sync += blk.max(axis=1).sum()
        balanced = rank_cost.sum() / W
        micro_steps = int(self.step_micro.sum())
        self.stats = dict(
            examples=int(len(self.lengths)), epochs=self.epochs, mode=self.mode, world_size=W,
            max_tokens=self.max_tokens, global_batch=self.global_batch, group_window=self.group_window,
            tolerance=self.tolerance, accum=self.accum, seed=self.seed, weighting=self.weighting, backend=self.backend,
            steps=K, micro_steps_per_rank=micro_steps,
            fill_efficiency=float(mt.sum() / (W * micro_steps * self.max_tokens)) if micro_steps else 0.0,
            straggler_factor=float(rank_cost.max(axis=1).sum() / balanced) if balanced > 0 else 1.0,
            sync_straggler_factor=float(sync / balanced) if balanced > 0 else 1.0,
            max_micro_tokens=int(mt.max()) if len(mt) else 0,
            empty_micro_batches=int((np.diff(off) == 0).sum()),
            plan_seconds=self.plan_seconds,
            cost_a=self.cost.a, cost_b=self.cost.b,
        )
        return self.stats

    # summary shortcuts
    fill_efficiency = property(lambda self: self.stats["fill_efficiency"])
    straggler_factor = property(lambda self: self.stats["straggler_factor"])
    sync_straggler_factor = property(lambda self: self.stats["sync_straggler_factor"])
    micro_steps_per_rank = property(lambda self: self.stats["micro_steps_per_rank"])

    @property
    def steps(self) -> list:
        if self._steps is None:
            self._steps = self._materialise()
        return self._steps

    def _materialise(self) -> list:
        W = self.world_size
        w = self.entry_weights()
        order, off = self.order.tolist(), self.micro_offsets.tolist()
        sup = self.supervised
        steps, mb = [], 0
        for k, (M, e) in enumerate(zip(self.step_micro.tolist(), self.step_epoch.tolist())):
            ranks = []
            first = off[mb]
            for _ in range(W):
                ranks.append([order[off[mb + m]:off[mb + m + 1]] for m in range(M)])
                mb += M
            last = off[mb]
            ids = order[first:last]
            steps.append(Step(micro_batches=ranks, supervised_tokens=int(sup[ids].sum()) if ids else 0,
                              num_examples=len(ids), epoch=e,
                              example_weight=dict(zip(ids, w[first:last].tolist()))))
        return steps

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in ("world_size", "max_tokens", "global_batch", "epochs", "seed", "mode",
                                           "weighting", "group_window", "tolerance", "accum", "plan_seconds",
                                           "backend")}
        d["cost"] = dict(a=self.cost.a, b=self.cost.b)
        for k in ("lengths", "supervised", "order", "micro_offsets", "step_micro", "step_epoch"):
            d[k] = getattr(self, k).tolist()
        d["stats"] = self.stats
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        arrays = {k: np.asarray(d.pop(k), dtype=np.int64)
                  for k in ("lengths", "supervised", "order", "micro_offsets", "step_micro", "step_epoch")}
        cost = CostModel(**d.pop("cost"))
        stats = d.pop("stats", {})
        return cls(cost=cost, stats=stats, **arrays, **d)


# ----------------------------------------------------------------------------------------------- planning
def make_plan(lengths, supervised, *, world_size: int, max_tokens: int, global_batch: int, epochs: int,
              seed: int = 0, mode: str = "balanced", cost: CostModel | None = None, weighting: str = "sequence",
              backend: str = "native", group_window: int = DEFAULT_GROUP_WINDOW,
              tolerance: float = DEFAULT_TOLERANCE, accum: int | None = None) -> Plan:
    """Plan every optimizer step of ``epochs`` epochs (see the module docstring for modes and weights).

    lengths[i]: tokens of example i; supervised[i]: its targets (``(labels[1:] != -100).sum()``).
    max_tokens: token budget of one rank's micro-batch (an example longer than it is an error naming it).
    global_batch: examples per optimizer step (none/balanced). cost: CostModel (default Qwen2.5-32B's).
    group_window: steps per grouping window (balanced/tokens); tolerance: balanced mode's cost-level width
    (``grouping_keys``); accum: tokens mode's micro-batches per rank per step (default global_batch // world_size).
    backend: "native" (C++ op) or "python" (the reference; identical plans, much slower).
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    supervised = np.asarray(supervised, dtype=np.int64).reshape(-1)
    cost = cost or __getattr__("DEFAULT_COST")
    _validate(lengths, supervised, world_size, max_tokens, global_batch, epochs, mode, weighting, backend,
              group_window, accum, tolerance)
    accum = int(accum) if accum is not None else max(1, global_batch // world_size)
    costs = cost.cost(lengths)
    keys = grouping_keys(costs, tolerance)
    args = (world_size, max_tokens, global_batch, epochs, int(seed), _MODE_ID[mode], group_window, accum)
    t0 = time.perf_counter()
    if backend == "native":
        from . import _native
        ops = _native.ops()
        if not hasattr(ops, "plan"):
            raise ImportError("s1fast's native extension predates the planner op: rebuild it with "
                              "`python setup.py build_ext --inplace` (or pip install --no-build-isolation -e .)")
        out = ops.plan(torch.from_numpy(lengths), torch.from_numpy(costs), torch.from_numpy(keys), *args)
        order, micro_offsets, step_micro, step_epoch = (t.numpy() for t in out)
    else:
        order, micro_offsets, step_micro, step_epoch = _plan_reference(lengths.tolist(), costs.tolist(), keys.tolist(),
                                                                            *args)
    seconds = time.perf_counter() - t0
    plan = Plan(world_size=world_size, max_tokens=max_tokens, global_batch=global_batch, epochs=epochs,
                seed=int(seed), mode=mode, weighting=weighting, group_window=group_window, tolerance=float(tolerance),
                accum=accum, cost=cost,
                lengths=lengths, supervised=supervised, order=order, micro_offsets=micro_offsets,
                step_micro=step_micro, step_epoch=step_epoch, plan_seconds=seconds, backend=backend)
    plan.compute_stats()
    return plan


def grouping_keys(costs: np.ndarray, tolerance: float) -> np.ndarray:
    """What balanced mode sorts a window by (descending): the cost itself when tolerance is 0, else its level
    ``floor(log(cost) / log(1 + tolerance))``: examples whose costs agree within about ``tolerance`` share a
    level and keep their shuffled order, so the steps of a window change from epoch to epoch at the price of
    about ``tolerance`` in balance. Computed once here, for both planners."""
    if tolerance == 0:
        return costs.astype(np.float64)
    return np.floor(np.log(np.maximum(costs, 1e-300)) / np.log1p(tolerance))


def _validate(lengths, supervised, world_size, max_tokens, global_batch, epochs, mode, weighting, backend,
              group_window, accum, tolerance=0.0):
    if mode not in MODES:
        raise ValueError(f"make_plan: mode={mode!r}; choose one of {MODES}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"make_plan: weighting={weighting!r}; choose one of {WEIGHTINGS}")
    if backend not in ("native", "python"):
        raise ValueError(f"make_plan: backend={backend!r}; choose 'native' or 'python'")
    for name, v in (("world_size", world_size), ("max_tokens", max_tokens), ("global_batch", global_batch),
                    ("epochs", epochs), ("group_window", group_window)):
        if int(v) < 1:
            raise ValueError(f"make_plan: {name}={v} must be >= 1")
    if not 0 <= tolerance < 1:
        raise ValueError(f"make_plan: tolerance={tolerance} must be in [0, 1)")
    if accum is not None and int(accum) < 1:
        raise ValueError(f"make_plan: accum={accum} must be >= 1")
    if mode == "none" and global_batch % world_size:
        raise ValueError(f"make_plan: mode='none' is s1's one example per rank per micro-step, so global_batch "
                         f"({global_batch}) must be a multiple of world_size ({world_size})")
    if len(lengths) != len(supervised):
        raise ValueError(f"make_plan: {len(lengths)} lengths but {len(supervised)} supervised counts")
    if len(lengths) == 0:
        raise ValueError("make_plan: no examples (lengths is empty)")
    bad = np.flatnonzero(lengths < 1)
    if len(bad):
        raise ValueError(f"make_plan: example {bad[0]} has length {lengths[bad[0]]}; every example needs >= 1 token")
    bad = np.flatnonzero((supervised < 0) | (supervised > lengths))
    if len(bad):
        i = bad[0]
        raise ValueError(f"make_plan: example {i} has {supervised[i]} supervised tokens for length {lengths[i]}; "
                         "expected 0 <= supervised <= length")
    over = np.flatnonzero(lengths > max_tokens)
    if len(over):
        i = over[0]
        raise ValueError(f"make_plan: example {i} has {lengths[i]} tokens, more than max_tokens={max_tokens} "
                         f"({len(over)} examples in all are too long); raise max_tokens or drop/truncate them in "
                         "the data pipeline")


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


# ----------------------------------------------------------------------------------------------- collate
@dataclass
class PackedBatch:
    """One rank's packed micro-batch in the varlen layout (see the module docstring)."""

    input_ids: torch.Tensor      # [T] int64
    position_ids: torch.Tensor   # [T] int64, restarting at 0 per document
    targets: torch.Tensor        # [T] int64, next-token labels shifted inside each document, -100 elsewhere
    loss_weight: torch.Tensor    # [T] float32, the example's weight where targets != -100, else 0
    cu_seqlens: torch.Tensor     # [D+1] int32
    max_seqlen: int              # host int: never read from the device
    num_docs: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(self, input_ids=mv(self.input_ids), position_ids=mv(self.position_ids),
                                   targets=mv(self.targets), loss_weight=mv(self.loss_weight),
                                   cu_seqlens=mv(self.cu_seqlens))


def _as_numpy(x, what: str, k: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"collate: example {k} {what} must be a 1-D integer array, got shape {a.shape} "
                         f"dtype {a.dtype}")
    return a


def _gather(examples, weights, pad_to_nonempty: bool, pad_id: int):
    if len(examples) != len(weights):
        raise ValueError(f"collate: {len(examples)} examples but {len(weights)} weights")
    ids, labels, lens = [], [], []
    for k, (x, y) in enumerate(examples):
        x, y = _as_numpy(x, "input_ids", k), _as_numpy(y, "labels", k)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"collate: example {k} has {len(x)} input_ids and {len(y)} labels; they must be "
                             "aligned (labels NOT shifted) and non-empty")
        ids.append(x)
        labels.append(y)
        lens.append(len(x))
    w = [float(v) for v in weights]
    if not ids and pad_to_nonempty:
        ids, labels, lens, w = [np.array([pad_id])], [np.array([IGNORE])], [1], [0.0]
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    cu = np.zeros(len(lens) + 1, np.int32)
    np.cumsum(lens, out=cu[1:])
    return cat(ids), cat(labels), cu, np.asarray(w, np.float32), (max(lens) if lens else 0)


def collate(examples: Sequence, weights: Sequence[float], *, device=None, pad_to_nonempty: bool = False,
            pad_id: int = 0) -> PackedBatch:
    """Pack one micro-batch (list of (input_ids, labels)) with per-example per-token weights.

    device: None/CPU -> the C++ CPU op; a CUDA device -> the CUDA kernel when the extension has one (else the
    CPU op, then a copy). An empty list gives a zero-token batch (or one zero-weight dummy token with
    ``pad_to_nonempty``).
    """
    from . import _native
    ids, labels, cu, w, max_seqlen = _gather(examples, weights, pad_to_nonempty, pad_id)
    t = [torch.from_numpy(a) for a in (ids, labels, cu, w)]
    ops = _native.ops()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and _has_cuda_kernel("pack_collate"):
        t = [x.pin_memory().to(dev, non_blocking=True) for x in t]
    input_ids, position_ids, targets, loss_weight = ops.pack_collate(*t)
    batch = PackedBatch(input_ids, position_ids, targets, loss_weight, t[2], int(max_seqlen), len(cu) - 1)
    return batch if batch.input_ids.device == dev else batch.to(dev)


def collate_reference(examples: Sequence, weights: Sequence[float], *, pad_to_nonempty: bool = False,
                      pad_id: int = 0) -> PackedBatch:
    """Pure-Python collate, document by document: the specification of the C++ and CUDA ops."""
    ids, labels, cu, w, max_seqlen = _gather(examples, weights, pad_to_nonempty, pad_id)
    T = len(ids)
    pos, tgt, lw = np.zeros(T, np.int64), np.full(T, IGNORE, np.int64), np.zeros(T, np.float32)
    for d in range(len(cu) - 1):
        s, e = int(cu[d]), int(cu[d + 1])
        pos[s:e] = np.arange(e - s)
        tgt[s:e - 1] = labels[s + 1:e]
        lw[s:e] = np.where(tgt[s:e] != IGNORE, w[d], 0.0)
    f = torch.from_numpy
    return PackedBatch(f(ids), f(pos), f(tgt), f(lw), f(cu), int(max_seqlen), len(cu) - 1)


# ----------------------------------------------------------------------------------------------- fake kernels
def _register_fakes():
    """Shapes of the native ops' outputs for FakeTensor / torch.compile (registered once the extension loads)."""
    @torch.library.register_fake("s1fast::pack_collate")
    def _(input_ids, labels, cu_seqlens, doc_weights):
        T = input_ids.shape[0]
        i64 = input_ids.new_empty((T,), dtype=torch.int64)
        return i64, i64.clone(), i64.clone(), input_ids.new_empty((T,), dtype=torch.float32)

    @torch.library.register_fake("s1fast::cu_seqlens")
    def _(lengths):
        return lengths.new_empty((lengths.shape[0] + 1,), dtype=torch.int32)

    @torch.library.register_fake("s1fast::plan")
    def _(lengths, costs, keys, world_size, max_tokens, global_batch, epochs, seed, mode, group_window, accum):
        ctx = torch.library.get_ctx()
        n = lengths.shape[0] * epochs
        mk = lambda s: lengths.new_empty((s,), dtype=torch.int64)  # noqa: E731
        return mk(n), mk(ctx.new_dynamic_size()), mk(ctx.new_dynamic_size()), mk(ctx.new_dynamic_size())


def _has_cuda_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"s1fast::{op}", "CUDA")


def _load_native():
    from . import _native
    # an extension built before these ops existed loads but lacks them: make_plan then says to rebuild
    if _native.available() and all(hasattr(torch.ops.s1fast, op) for op in ("plan", "pack_collate", "cu_seqlens")):
        _register_fakes()


_load_native()


# ----------------------------------------------------------------------------------------------- CLI
def _read_lengths(path: str):
    """One example per line: ``length`` or ``length supervised`` (whitespace or comma separated; # comments)."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#")[0].replace(",", " ").split()
            if not line:
                continue
            try:
                rows.append([int(v) for v in line[:2]])
            except ValueError:
                raise SystemExit(f"{path}:{lineno}: expected 'length [supervised]' integers, got {line!r}")
    if not rows:
        raise SystemExit(f"{path}: no lengths found")
    lengths = np.array([r[0] for r in rows], np.int64)
    sup = np.array([r[1] if len(r) > 1 else r[0] - 1 for r in rows], np.int64)
    return lengths, sup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.packing", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", required=True, help="file: one 'length [supervised]' per line (supervised "
                   "defaults to length-1)")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--max-tokens", type=int, required=True, help="token budget per rank per micro-step")
    p.add_argument("--global-batch", type=int, required=True, help="examples per optimizer step")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--mode", choices=MODES, default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-window", type=int, default=DEFAULT_GROUP_WINDOW, help="steps per grouping window")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="balanced mode: costs within this relative width share a grouping level (0 = exact sort)")
    p.add_argument("--accum", type=int, default=None, help="tokens mode: micro-batches per rank per step")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="sequence")
    p.add_argument("--backend", choices=("native", "python"), default="native")
    p.add_argument("--hf-config", help="config.json of the model for the cost model (default Qwen2.5-32B)")
    p.add_argument("--plan-out", help="write the full plan as JSON here")
    a = p.parse_args(argv)
    lengths, sup = _read_lengths(a.lengths)
    cost = __getattr__("DEFAULT_COST")
    if a.hf_config:
        with open(a.hf_config) as f:
            cost = CostModel.from_hf_config(json.load(f))
    try:
        plan = make_plan(lengths, sup, world_size=a.world_size, max_tokens=a.max_tokens, global_batch=a.global_batch,
                         epochs=a.epochs, seed=a.seed, mode=a.mode, cost=cost, weighting=a.weighting,
                         backend=a.backend, group_window=a.group_window, tolerance=a.tolerance, accum=a.accum)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.plan_out:
        with open(a.plan_out, "w") as f:
            f.write(plan.to_json())
    print(json.dumps(plan.stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

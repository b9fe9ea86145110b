"""Sequence packing: balanced plans across data-parallel ranks, and the packed collate.

``make_plan`` decides, for every optimizer step, which examples each rank runs in which packed micro-batch
(modes ``none``: s1's one sequence per rank; ``balanced``: the same steps, balanced by ``CostModel``;
``tokens``: fewer, larger steps), with per-token loss weights that make a plain gradient SUM exact.
``collate`` concatenates one micro-batch into the varlen layout (``MicroBatch``). The planner exists in C++
(``torch.ops.s1fast.plan``) and in Python (``_plan_reference``, the specification) with identical output.
Modes, weights and collate in full: docs/packing.md. Usage::

    plan = make_plan(ds.lengths, ds.supervised, world_size=16, micro_tokens=32768, global_batch=16, epochs=5,
                     cost=CostModel.from_model_config(cfg))
    python -m s1fast.packing --lengths FILE --world-size 16 --micro-tokens 32768 --global-batch 16 --epochs 5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .cli_help import DefaultsHelpFormatter
from .collate import IGNORE, MicroBatch, collate, collate_reference  # noqa: F401  (the packing API)
from .model_config import CONFIGS, ModelConfig, cost_coefficients
from .plan_reference import MODES, _MODE_ID, SplitMix64, _plan_reference  # noqa: F401  (SplitMix64: re-exported)

WEIGHTINGS = ("sequence", "token")
DEFAULT_TOLERANCE = 0.03  # balanced mode: cost levels of (1 + tolerance) share a grouping key (grouping_keys)
DEFAULT_GROUP_WINDOW = 64  # steps per grouping window (s1K: 63 steps/epoch, so the whole epoch; RESULTS.md)


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
        """From a ``ModelConfig`` (``s1fast.model_config.cost_coefficients``: the one home of the formula)."""
        a, b = cost_coefficients(cfg)
        return cls(a=float(a), b=float(b))

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "CostModel":
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise KeyError(f"CostModel.from_hf_config: config lacks {missing}; pass a Hugging Face decoder "
                           f"config dict (config.json) with {list(need)}")
        h, q = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return cls.from_model_config(ModelConfig(
            hidden_size=h, num_layers=int(cfg["num_hidden_layers"]), num_heads=q,
            num_kv_heads=int(cfg.get("num_key_value_heads") or q), head_dim=int(cfg.get("head_dim") or h // q),
            intermediate_size=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"])))


DEFAULT_COST = CostModel.from_model_config(CONFIGS["Qwen2.5-32B-Instruct"])


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
    micro_tokens: int
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
            micro_tokens=self.micro_tokens, global_batch=self.global_batch, group_window=self.group_window,
            tolerance=self.tolerance, accum=self.accum, seed=self.seed, weighting=self.weighting, backend=self.backend,
            steps=K, micro_steps_per_rank=micro_steps,
            fill_efficiency=float(mt.sum() / (W * micro_steps * self.micro_tokens)) if micro_steps else 0.0,
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
        d = {k: getattr(self, k) for k in ("world_size", "micro_tokens", "global_batch", "epochs", "seed", "mode",
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
def make_plan(lengths, supervised, *, world_size: int, micro_tokens: int, global_batch: int, epochs: int,
              seed: int = 0, mode: str = "balanced", cost: CostModel | None = None, weighting: str = "sequence",
              backend: str = "native", group_window: int = DEFAULT_GROUP_WINDOW,
              tolerance: float = DEFAULT_TOLERANCE, accum: int | None = None) -> Plan:
    """Plan every optimizer step of ``epochs`` epochs (see the module docstring for modes and weights).

    lengths[i]: tokens of example i; supervised[i]: its targets (``(labels[1:] != -100).sum()``).
    micro_tokens: token budget of one rank's micro-batch (an example longer than it is an error naming it).
    global_batch: examples per optimizer step (none/balanced). cost: CostModel (default Qwen2.5-32B's).
    group_window: steps per grouping window (balanced/tokens); tolerance: balanced mode's cost-level width
    (``grouping_keys``); accum: tokens mode's micro-batches per rank per step (default global_batch // world_size).
    backend: "native" (C++ op) or "python" (the reference; identical plans, much slower).
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    supervised = np.asarray(supervised, dtype=np.int64).reshape(-1)
    cost = cost or DEFAULT_COST
    _validate(lengths, supervised, world_size, micro_tokens, global_batch, epochs, mode, weighting, backend,
              group_window, accum, tolerance)
    accum = int(accum) if accum is not None else max(1, global_batch // world_size)
    costs = cost.cost(lengths)
    keys = grouping_keys(costs, tolerance)
    args = (world_size, micro_tokens, global_batch, epochs, int(seed), _MODE_ID[mode], group_window, accum)
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
    plan = Plan(world_size=world_size, micro_tokens=micro_tokens, global_batch=global_batch, epochs=epochs,
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


def _validate(lengths, supervised, world_size, micro_tokens, global_batch, epochs, mode, weighting, backend,
              group_window, accum, tolerance=0.0):
    if mode not in MODES:
        raise ValueError(f"make_plan: mode={mode!r}; choose one of {MODES}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"make_plan: weighting={weighting!r}; choose one of {WEIGHTINGS}")
    if backend not in ("native", "python"):
        raise ValueError(f"make_plan: backend={backend!r}; choose 'native' or 'python'")
    for name, v in (("world_size", world_size), ("micro_tokens", micro_tokens), ("global_batch", global_batch),
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
    over = np.flatnonzero(lengths > micro_tokens)
    if len(over):
        i = over[0]
        raise ValueError(f"make_plan: example {i} has {lengths[i]} tokens, more than micro_tokens={micro_tokens} "
                         f"({len(over)} examples in all are too long); raise micro_tokens or drop/truncate them in "
                         "the data pipeline")


# ----------------------------------------------------------------------------------------------- fake kernels
def _register_fakes():
    """Shapes of the native ops' outputs for FakeTensor / torch.compile (registered once the extension loads)."""
    @torch.library.register_fake("s1fast::pack_collate")
    def _(input_ids, labels, cu_seqlens, doc_weights):
        T = input_ids.shape[0]
        i64 = input_ids.new_empty((T,), dtype=torch.int64)
        return i64, i64.clone(), i64.clone(), input_ids.new_empty((T,), dtype=torch.float32)

    @torch.library.register_fake("s1fast::plan")
    def _(lengths, costs, keys, world_size, micro_tokens, global_batch, epochs, seed, mode, group_window, accum):
        ctx = torch.library.get_ctx()
        n = lengths.shape[0] * epochs
        mk = lambda s: lengths.new_empty((s,), dtype=torch.int64)  # noqa: E731
        return mk(n), mk(ctx.new_dynamic_size()), mk(ctx.new_dynamic_size()), mk(ctx.new_dynamic_size())


def _load_native():
    from . import _native
    # an extension built before these ops existed loads but lacks them: make_plan then says to rebuild
    if _native.available() and all(hasattr(torch.ops.s1fast, op) for op in ("plan", "pack_collate")):
        _register_fakes()


_load_native()


# ----------------------------------------------------------------------------------------------- CLI
def _read_lengths(path: str):
    """(lengths, supervised) arrays from ``s1fast.lengths_file`` (supervised defaults to length - 1)."""
    from .lengths_file import read_lengths
    try:
        lengths, sup = read_lengths(path)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return (np.array(lengths, np.int64),
            np.array([s if s is not None else n - 1 for n, s in zip(lengths, sup)], np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.packing", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--lengths", required=True, help="file: one 'length [supervised]' per line (supervised "
                   "defaults to length-1)")
    p.add_argument("--world-size", type=int, required=True, help="data-parallel ranks")
    p.add_argument("--micro-tokens", type=int, required=True, help="token budget per rank per micro-step")
    p.add_argument("--global-batch", type=int, required=True, help="examples per optimizer step")
    p.add_argument("--epochs", type=int, default=1, help="passes over the data")
    p.add_argument("--mode", choices=MODES, default="balanced",
                   help="none (one sequence per rank), balanced, tokens (docs/packing.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order")
    p.add_argument("--group-window", type=int, default=DEFAULT_GROUP_WINDOW, help="steps per grouping window")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="balanced mode: costs within this relative width share a grouping level (0 = exact sort)")
    p.add_argument("--accum", type=int, default=None, help="tokens mode: micro-batches per rank per step")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="sequence", help="loss weighting: sequence or token")
    p.add_argument("--backend", choices=("native", "python"), default="native",
                   help="native (the C++ planner) or python (its reference)")
    p.add_argument("--hf-config", help="config.json of the model for the cost model (default Qwen2.5-32B)")
    p.add_argument("--plan-out", help="write the full plan as JSON here")
    a = p.parse_args(argv)
    lengths, sup = _read_lengths(a.lengths)
    cost = DEFAULT_COST
    if a.hf_config:
        with open(a.hf_config) as f:
            cost = CostModel.from_hf_config(json.load(f))
    try:
        plan = make_plan(lengths, sup, world_size=a.world_size, micro_tokens=a.micro_tokens, global_batch=a.global_batch,
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

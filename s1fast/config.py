"""Training configuration: one dataclass, named presets, and a command line built from its fields.

Every field is a ``--flag`` (underscores become dashes); ``--preset NAME`` picks the starting values
and any flag given on the command line overrides them. The presets reproduce the published recipes
(docs/recipe.md): ``s1`` and ``s1.1`` (Qwen2.5-32B-Instruct on s1K / s1K-1.1), ``sky-t1`` (Sky-T1-32B-Preview),
``tiny-toy`` (the embedded default, run by scripts/demo.sh: a tiny Qwen2-architecture model with the real
tokenizer on the toy reasoning task ``toy:chain``) and ``tiny`` (its tied twin on the bundled real sample).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields

from .data.cache import POLICIES
from .data.format import RECIPES as RECIPE_NAMES
from .memory import MEMORY_HEADROOM, RUNTIME_RESERVE_GB
from .packing import MODES as PACKING_MODES, WEIGHTINGS


@dataclass
class TrainConfig:
    # what to train
    model: str = field(default="", metadata={"help": "Hugging Face model folder, or a named config "
                                             "(e.g. tiny-qwen2) for a randomly initialised model"})
    data: str = field(default="", metadata={"help": "training data (.json/.jsonl/.parquet); empty = bundled sample"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder; empty = the model folder's, else bundled Qwen2.5"})
    recipe: str = field(default="s1", metadata={"help": "text format and loss mask: s1, s1.1, sky-t1, chat"})
    max_tokens: int = field(default=32768, metadata={"help": "block size: longest example in tokens"})
    policy: str = field(default="error", metadata={"help": "examples over max_tokens: error, drop, truncate"})
    output_dir: str = field(default="runs/s1fast", metadata={"help": "metrics.jsonl, checkpoints/, final/ go here"})
    # the schedule of the recipe
    epochs: int = field(default=5, metadata={"help": "passes over the data"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: all epochs)"})
    global_batch: int = field(default=16, metadata={"help": "examples per optimizer step, all ranks together"})
    micro_tokens: int = field(default=0, metadata={"help": "token budget per rank per micro-step (0: max_tokens)"})
    packing: str = field(default="balanced", metadata={"help": "none (s1's one sequence per rank), balanced, tokens"})
    weighting: str = field(default="sequence", metadata={"help": "loss weighting: sequence (s1's per-sequence mean) or token"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "linear warmup, as a fraction of all steps (rounded up)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay, on the weight matrices "
                                                       "(and the norm weights with --decay-norms true)"})
    decay_norms: bool = field(default=False, metadata={"help": "decay the RMSNorm weights too, as s1's transformers "
                                                       "4.46.1 did (every parameter but biases and nn.LayerNorm; "
                                                       "the s1, s1.1 and sky-t1 presets)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the full gradient norm to this (0: off)"})
    seed: int = field(default=42, metadata={"help": "seed of the plan, the init and the data order"})
    # precision and parallelism
    dtype: str = field(default="bf16", metadata={"help": "compute dtype: bf16 or fp32"})
    master_dtype: str = field(default="fp32", metadata={"help": "dtype of the stored weights and Adam states: fp32 or bf16"})
    shard_size: int = field(default=0, metadata={"help": "ranks per FSDP shard group (0: all ranks, full sharding; "
                                                "N < world: hybrid sharding, shard inside groups of N, replicate across)"})
    cpu_offload: bool = field(default=False, metadata={"help": "keep parameters and optimizer states in CPU memory"})
    activation_checkpointing: str = field(default="none", metadata={"help": "none, full or selective"})
    checkpoint_layers: int = field(default=0, metadata={"help": "checkpoint only the first N blocks (0: all of them)"})
    checkpoint_budget_gb: float = field(default=0.0, metadata={
        "help": "adaptive checkpointing: before each micro-step, checkpoint only the first blocks its tokens need "
                "to stay within this many GB per GPU by s1fast.memory's model (-1: the GPU's memory less "
                "--runtime-reserve-gb, less --memory-headroom; 0: off, --checkpoint-layers decides)"})
    runtime_reserve_gb: float = field(default=RUNTIME_RESERVE_GB, metadata={
        "help": "GB per GPU the memory model leaves to the CUDA context, NCCL buffers and fragmentation"})
    memory_headroom: float = field(default=MEMORY_HEADROOM, metadata={
        "help": "fraction of the budget --checkpoint-budget-gb -1 keeps free"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each decoder block"})
    attention: str = field(default="auto", metadata={"help": "attention backend: auto, flash, varlen, flex, triton, sdpa"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cuda or cpu"})
    # checkpoints and logs
    save_every: int = field(default=0, metadata={"help": "save a checkpoint every K steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    resume: str = field(default="auto", metadata={"help": "auto (latest complete checkpoint in output_dir if any), "
                                                  "never (a new run; refused where another run's checkpoints are), "
                                                  "or a checkpoint folder"})
    replace: bool = field(default=False, metadata={"help": "delete the run already in output_dir (checkpoints/, "
                                                   "final/, metrics) and start a new one"})
    export: bool = field(default=True, metadata={"help": "write final/ in Hugging Face format at the end"})
    log_every: int = field(default=1, metadata={"help": "metrics every K steps"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to TensorBoard (if installed)"})
    plot: bool = field(default=True, metadata={"help": "write loss_curve.png at the end"})
    progress: bool = field(default=True, metadata={"help": "progress bar on rank 0"})
    preset: str = field(default="", metadata={"help": "the preset these values came from"})

    @property
    def micro_budget(self) -> int:
        return self.micro_tokens or self.max_tokens

    def warmup_steps(self, total_steps: int) -> int:
        """HF's convention: ceil(ratio x total). s1: ceil(0.05 x 315) = 16."""
        return math.ceil(self.warmup_ratio * total_steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # s1 (docs/recipe.md): Qwen2.5-32B-Instruct, s1K, block 32768, 5 epochs, global batch 16, lr 1e-5, warmup 5%,
    # cosine to 0, AdamW (0.9, 0.95), wd 1e-4 (norm weights too, optim.param_groups), clip 1.0, bf16 with fp32
    # master weights, per-sequence mean. What the presets do not reproduce: docs/recipe.md, "Where s1fast departs".
    # The reference (TRL) truncates longer examples, hence policy=truncate.
    "s1": dict(recipe="s1", max_tokens=32768, policy="truncate", epochs=5, global_batch=16, lr=1e-5,
               warmup_ratio=0.05, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=1e-4, grad_clip=1.0,
               dtype="bf16", master_dtype="fp32", weighting="sequence", packing="balanced", decay_norms=True,
               activation_checkpointing="full", output_dir="runs/s1"),
    # s1.1: the same on s1K-1.1's R1 traces, block 20000 as the reference ran it ("to avoid OOM").
    "s1.1": dict(recipe="s1.1", max_tokens=20000, policy="truncate", epochs=5, global_batch=16, lr=1e-5,
                 warmup_ratio=0.05, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=1e-4, grad_clip=1.0,
                 dtype="bf16", master_dtype="fp32", weighting="sequence", packing="balanced", decay_norms=True,
                 activation_checkpointing="full", output_dir="runs/s1.1"),
    # Sky-T1-32B-Preview: 16384 tokens, global batch 96, 3 epochs, warmup 10%, wd 0, betas (0.9, 0.999) (transformers'
    # defaults: the LLaMA-Factory yaml sets none); recipe sky-t1 is LLaMA-Factory's qwen25 text (<|endoftext|>).
    "sky-t1": dict(recipe="sky-t1", max_tokens=16384, policy="truncate", epochs=3, global_batch=96, lr=1e-5,
                   warmup_ratio=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
                   dtype="bf16", master_dtype="fp32", weighting="sequence", packing="balanced", decay_norms=True,
                   activation_checkpointing="full", output_dir="runs/sky-t1"),
    # Tiny Qwen2-architecture model (the real 151936-row vocabulary, so the loss head
    # dominates as it does for s1), the bundled real traces cut to 512 tokens, 8 examples a step, 3 epochs
    # (24 steps): a 2-core CPU trains it in a few minutes and the loss falls from ln(V) ~ 11.9; fp32 on CPU.
    "tiny": dict(model="tiny-qwen2", recipe="s1", max_tokens=512, policy="truncate", epochs=3, global_batch=8,
                 lr=5e-3, warmup_ratio=0.1, beta1=0.9, beta2=0.95, weight_decay=1e-4, grad_clip=1.0,
                 dtype="fp32", master_dtype="fp32", weighting="sequence", packing="balanced", device="auto",
                 save_every=10, output_dir="runs/tiny"),
    # The main job (scripts/demo.sh): the toy reasoning task `chain` (s1fast.data.toy; docs/toy.md), 4400
    # problems once, 8 a step (550 steps), lr 1e-2, on the tiny model with untied embeddings (tied, it learned
    # the format but not the digits); held-out accuracy against the thinking budget: bench/RESULTS.md.
    "tiny-toy": dict(model="tiny-qwen2-untied", data="toy:chain:4400", recipe="s1", max_tokens=512, policy="truncate",
                     epochs=1, global_batch=8, lr=1e-2, warmup_ratio=0.05, beta1=0.9, beta2=0.95, weight_decay=1e-4,
                     grad_clip=1.0, dtype="fp32", master_dtype="fp32", weighting="sequence", packing="balanced",
                     device="auto", save_every=100, output_dir="runs/tiny-toy"),
}

CHOICES = {"recipe": RECIPE_NAMES, "policy": POLICIES, "packing": PACKING_MODES, "weighting": WEIGHTINGS,
           "dtype": ("bf16", "fp32"), "master_dtype": ("fp32", "bf16"),
           "activation_checkpointing": ("none", "full", "selective"),
           "attention": ("auto", "flash", "varlen", "flex", "triton", "sdpa"), "device": ("auto", "cuda", "cpu")}


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def dataclass_parser(cls, *, prog: str, description: str, presets: dict, choices: dict,
                     preset_help: str = "starting values") -> argparse.ArgumentParser:
    """A command line with one ``--flag`` per field of the config dataclass ``cls`` (underscores become dashes)
    and ``--preset NAME``; a flag not given is absent, so the preset's value (or the field's default) stays."""
    ap = argparse.ArgumentParser(prog=prog, description=f"{description}\nPresets: {', '.join(presets)}. Any flag "
                                 "overrides the preset's value.", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", choices=list(presets),
                    help=f"{preset_help} [default: none: each field's own default]")
    for f in fields(cls):
        if f.name == "preset":
            continue
        kw = dict(help=f"{f.metadata.get('help', '')} [default: {f.default!r}]", default=argparse.SUPPRESS)
        if f.type in ("bool", bool):
            kw.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(str(f.type), str)
        if f.name in choices:
            kw["choices"] = choices[f.name]
        ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kw)
    return ap


def build_parser() -> argparse.ArgumentParser:
    return dataclass_parser(TrainConfig, prog="torchrun --nproc_per_node N -m s1fast.train",
                            description="Train a reasoning model by distillation (s1 / s1.1 / Sky-T1 recipes) with FSDP2.",
                            presets=PRESETS, choices=CHOICES, preset_help="starting values (docs/recipe.md)")


def parse_config(argv=None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("preset", "") or ""
    values = dict(PRESETS.get(preset, {}))
    values.update(args)
    cfg = TrainConfig(**values, preset=preset)
    return cfg


def validate(cfg: TrainConfig, world_size: int) -> None:
    """Fail before any compute on a configuration that cannot work."""
    if not cfg.model:
        raise ConfigError("no model: pass --model with a Hugging Face model folder (e.g. a local copy of "
                          "Qwen2.5-32B-Instruct) or a named config such as tiny-qwen2 (or use --preset tiny-toy or "
                          "--preset tiny)")
    for name in ("lr", "warmup_ratio", "beta1", "beta2", "eps", "weight_decay", "grad_clip", "checkpoint_budget_gb"):
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(cfg, name)}")
    for name in ("max_tokens", "epochs", "global_batch", "lr", "log_every"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("micro_tokens", "save_every", "keep_checkpoints", "weight_decay", "grad_clip", "eps",
                 "checkpoint_layers"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise ConfigError(f"--max-steps must be a positive number of steps, or -1 for all epochs; got {cfg.max_steps}")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ConfigError(f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if cfg.micro_tokens and cfg.micro_tokens < cfg.max_tokens:
        raise ConfigError(f"--micro-tokens {cfg.micro_tokens} is below --max-tokens {cfg.max_tokens}: the longest "
                          f"example would not fit a micro-step; raise --micro-tokens or lower --max-tokens")
    if cfg.packing == "none" and cfg.global_batch % world_size:
        raise ConfigError(f"--packing none runs one example per rank per micro-step, so --global-batch "
                          f"({cfg.global_batch}) must be a multiple of the world size ({world_size})")
    if cfg.shard_size and (cfg.shard_size < 0 or world_size % cfg.shard_size):
        raise ConfigError(f"--shard-size {cfg.shard_size} must divide the world size {world_size} "
                          f"(e.g. GPUs per node for hybrid sharding)")
    if cfg.checkpoint_budget_gb:
        if cfg.activation_checkpointing != "full":
            raise ConfigError("--checkpoint-budget-gb picks how many blocks to checkpoint in full (its memory model "
                              "is that of full checkpointing): also pass --activation-checkpointing full")
        if cfg.checkpoint_layers:
            raise ConfigError("--checkpoint-budget-gb and --checkpoint-layers both set the checkpointed blocks: "
                              "pass one of them")
        if cfg.checkpoint_budget_gb < 0 and cfg.checkpoint_budget_gb != -1:
            raise ConfigError(f"--checkpoint-budget-gb {cfg.checkpoint_budget_gb}: give GB per GPU, or -1 for the "
                              f"GPU's own memory")
    if cfg.runtime_reserve_gb < 0 or not 0 <= cfg.memory_headroom < 1:
        raise ConfigError(f"--runtime-reserve-gb must be >= 0 and --memory-headroom in [0, 1), got "
                          f"{cfg.runtime_reserve_gb} and {cfg.memory_headroom}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")

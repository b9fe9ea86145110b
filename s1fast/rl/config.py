"""RL configuration: one dataclass, named presets, a command line built from its fields (the trainer's
conventions: every field is a ``--flag``, ``--preset NAME`` picks the starting values, flags override them).

Presets: ``toy`` (the embedded default: GRPO on the toy task from the ``tiny-toy`` SFT run stopped at step
350, 2 CPU cores) and ``r1-zero``-like GPU settings (``grpo``: DeepSeekMath's GRPO constants on a Qwen2.5 folder).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from ..config import ConfigError, dataclass_parser
from ..vllm_backend import sampling_error


@dataclass
class RLConfig:
    # what to train, on what
    model: str = field(default="", metadata={"help": "Hugging Face model folder to start from (an s1fast SFT export, "
                                             "or any Qwen2/Llama checkpoint)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder; empty = the model folder's, else bundled"})
    data: str = field(default="toy:chain:2000", metadata={"help": "prompts: toy:NAME[:N] (the toy task's training split) "
                                                        "or a .jsonl with question and answer fields"})
    question_field: str = field(default="", metadata={"help": "--data .jsonl: the question's field (default: the "
                                                      "first of question, problem, Question, prompt)"})
    answer_field: str = field(default="", metadata={"help": "--data .jsonl: the reference answer's field (default: "
                                                    "the first of answer, gt, Answer, solution)"})
    rewards: str = field(default="toy=1.0", metadata={
        "help": "verifiers and weights, comma-separated NAME=W: toy (the toy task's exact checker), math (s1fast."
                "grading: extracted answer, mathematical equivalence), format (thinking ended on its own and an "
                "answer was given), or module:function (your own: fn(completion: dict, row: dict) -> float)"})
    on_verifier_error: str = field(default="drop", metadata={
        "help": "a verifier that raises: drop (report it with the prompt in verifier_errors.jsonl, count it, and "
                "train nothing on that prompt's group) or fail (stop the run)"})
    output_dir: str = field(default="runs/rl", metadata={"help": "metrics.jsonl, checkpoints/, final/ go here"})
    # the GRPO iteration
    iterations: int = field(default=20, metadata={"help": "RL iterations (one batch of prompts each)"})
    prompts_per_iter: int = field(default=8, metadata={"help": "prompts per iteration, all ranks together"})
    group_size: int = field(default=8, metadata={"help": "completions sampled per prompt (G)"})
    updates_per_batch: int = field(default=1, metadata={"help": "optimizer steps on each batch of completions "
                                                        "(> 1: the ratio to the sampling policy moves and clipping acts)"})
    adv_scale: str = field(default="std", metadata={"help": "advantage: std (r - mean) / (std + 1e-4), or none (r - mean)"})
    norm: str = field(default="token", metadata={"help": "loss normalisation: token (over the batch), sequence (GRPO's "
                                                 "per-sequence mean), constant (Dr. GRPO: / (B x max completion))"})
    clip_low: float = field(default=0.2, metadata={"help": "ratio clip: 1 - clip_low .. (negative: no clipping)"})
    clip_high: float = field(default=0.2, metadata={"help": "ratio clip: .. 1 + clip_high"})
    kl_coef: float = field(default=0.0, metadata={"help": "k3 KL penalty to the frozen start model (0: no reference)"})
    # sampling
    generator: str = field(default="native", metadata={"help": "native (s1fast's engine) or vllm (GPU, colocated)"})
    vllm_gpu_memory: float = field(default=0.3, metadata={"help": "--generator vllm: share of the GPU's memory the "
                                                          "colocated engine may take (the rest trains)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (the policy is softmax(z / T))"})
    max_total_tokens: int = field(default=256, metadata={"help": "prompt + completion budget in tokens"})
    max_thinking_tokens: str = field(default="auto", metadata={"help": "thinking budget (int or auto)"})
    min_thinking_tokens: int = field(default=0, metadata={"help": "budget forcing: think at least this long"})
    num_wait: int = field(default=0, metadata={"help": "budget forcing: ignore the end of thinking this many times"})
    max_answer_tokens: int = field(default=32, metadata={"help": "answer budget in tokens (0: what the context leaves)"})
    gen_batch: int = field(default=32, metadata={"help": "rows per generation batch (whole groups)"})
    # evaluation (held-out accuracy, greedy)
    eval_problems: int = field(default=0, metadata={"help": "held-out problems (toy test split) graded greedily at the "
                                                    "start, every eval_every iterations and at the end (0: none)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every K iterations (0: start and end only)"})
    # optimisation, precision
    lr: float = field(default=1e-6, metadata={"help": "learning rate (constant after warmup)"})
    warmup_iters: int = field(default=0, metadata={"help": "linear warmup iterations"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the full gradient norm to this (0: off)"})
    micro_tokens: int = field(default=4096, metadata={"help": "token budget of one packed micro-batch per rank"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt order and of every sample"})
    dtype: str = field(default="bf16", metadata={"help": "compute dtype: bf16 or fp32"})
    master_dtype: str = field(default="fp32", metadata={"help": "stored weights and Adam states: fp32 or bf16"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cuda or cpu"})
    # checkpoints and logs
    save_every: int = field(default=0, metadata={"help": "checkpoint every K iterations (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    resume: str = field(default="auto", metadata={"help": "auto (latest in output_dir), never (a new run; refused "
                                                  "where another run's checkpoints are), or a checkpoint folder"})
    replace: bool = field(default=False, metadata={"help": "delete the run already in output_dir (checkpoints/, "
                                                   "final/, metrics) and start a new one"})
    export: bool = field(default=True, metadata={"help": "write final/ in Hugging Face format at the end"})
    plot: bool = field(default=True, metadata={"help": "write reward_curve.png at the end"})
    progress: bool = field(default=True, metadata={"help": "progress bar on rank 0"})
    preset: str = field(default="", metadata={"help": "the preset these values came from"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def clip(self):
        return None if self.clip_low < 0 or self.clip_high < 0 else (self.clip_low, self.clip_high)

    @property
    def thinking_budget(self) -> int | str:
        return "auto" if self.max_thinking_tokens == "auto" else int(self.max_thinking_tokens)


PRESETS: dict[str, dict] = {
    # The embedded default: the toy task from an SFT start that still has room to improve (the tiny-toy run
    # stopped at step 350 of 550: TOY_SFT_COMMAND), on 2 CPU cores; every held-out problem (59) graded greedily.
    # 288 tokens: the longest toy prompt (66) + the forcing text + its longest trace (100 tokens) fit beside the
    # answer room the "auto" thinking budget keeps (max_answer_tokens + 1 = 9 here; 100 only without an answer cap).
    "toy": dict(model="runs/tiny-toy-350/final", data="toy:chain:2000", rewards="toy=1.0", iterations=20,
                prompts_per_iter=8, group_size=8, updates_per_batch=1, adv_scale="std", norm="token", lr=1e-4,
                temperature=1.0, max_total_tokens=288, max_answer_tokens=8, dtype="fp32", eval_problems=59,
                eval_every=5, save_every=10, output_dir="runs/rl-toy"),
    # DeepSeekMath / R1-style GRPO constants for a GPU node (pass --model and --data).
    "grpo": dict(rewards="math=1.0,format=0.1", iterations=500, prompts_per_iter=64, group_size=16,
                 updates_per_batch=1, adv_scale="std", norm="token", lr=1e-6, kl_coef=0.04, temperature=1.0,
                 max_total_tokens=8192, max_answer_tokens=1024, micro_tokens=32768, dtype="bf16",
                 save_every=50, output_dir="runs/grpo"),
}
# how to make the toy preset's start (the demo's SFT run, stopped early: the schedule of all 550 steps)
TOY_SFT_COMMAND = ("torchrun --standalone --nproc_per_node 2 -m s1fast.train --preset tiny-toy --max-steps 350 "
                   "--output-dir runs/tiny-toy-350")
CHOICES = {"adv_scale": ("std", "none"), "norm": ("token", "sequence", "constant"), "generator": ("native", "vllm"),
           "on_verifier_error": ("drop", "fail"), "dtype": ("bf16", "fp32"), "master_dtype": ("fp32", "bf16"),
           "device": ("auto", "cuda", "cpu")}


def build_parser() -> argparse.ArgumentParser:
    return dataclass_parser(RLConfig, prog="torchrun --nproc_per_node N -m s1fast.rl",
                            description="Improve a reasoning model by reinforcement learning with verifiable rewards "
                                        "(GRPO).", presets=PRESETS, choices=CHOICES)


def parse_config(argv=None) -> RLConfig:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("preset", "") or ""
    values = dict(PRESETS.get(preset, {}))
    values.update(args)
    return RLConfig(**values, preset=preset)


def validate(cfg: RLConfig, world: int) -> None:
    """Fail before any compute on a configuration that cannot work."""
    if not cfg.model:
        raise ConfigError("no model: pass --model with a Hugging Face folder (e.g. runs/tiny-toy/final from "
                          "`bash scripts/demo.sh`, or any s1fast export), or use --preset toy")
    for name in ("lr", "beta1", "beta2", "weight_decay", "grad_clip", "clip_low", "clip_high", "kl_coef", "temperature",
                 "vllm_gpu_memory"):
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr} (a negative rate would raise the loss: lower the "
                          f"rewards it learns)")
    for name in ("warmup_iters", "weight_decay", "grad_clip", "save_every", "keep_checkpoints", "eval_every",
                 "eval_problems", "min_thinking_tokens", "num_wait", "max_answer_tokens"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ConfigError(f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if not 0 < cfg.vllm_gpu_memory <= 1:
        raise ConfigError(f"--vllm-gpu-memory is a share of the GPU's memory, in (0, 1]; got {cfg.vllm_gpu_memory}")
    for name in ("iterations", "prompts_per_iter", "group_size", "updates_per_batch", "max_total_tokens", "gen_batch"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.prompts_per_iter % world:
        raise ConfigError(f"--prompts-per-iter ({cfg.prompts_per_iter}) must be a multiple of the world size ({world}): "
                          "each rank samples the groups of its own prompts")
    if cfg.group_size < 2:
        raise ConfigError("--group-size must be at least 2: advantages are relative to the group")
    if cfg.micro_tokens < cfg.max_total_tokens:
        raise ConfigError(f"--micro-tokens ({cfg.micro_tokens}) must hold one whole sequence "
                          f"(--max-total-tokens {cfg.max_total_tokens})")
    if cfg.max_thinking_tokens != "auto":
        try:
            if int(cfg.max_thinking_tokens) < 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--max-thinking-tokens {cfg.max_thinking_tokens!r}: a whole number >= 0 or auto") from None
    if cfg.temperature <= 0:
        raise ConfigError("--temperature must be positive: GRPO samples from softmax(z / T)")
    if cfg.generator == "vllm" and (why := sampling_error(cfg.temperature, 1.0)):
        raise ConfigError(f"--generator vllm: {why}")
    if cfg.kl_coef < 0:
        raise ConfigError(f"--kl-coef must be >= 0, got {cfg.kl_coef}")

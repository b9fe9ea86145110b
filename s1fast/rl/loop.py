"""The GRPO iteration, top to bottom: configuration -> prompts (all checked before compute) -> policy (FSDP2,
from a Hugging Face folder) and frozen reference -> resume -> iterations -> final checkpoint and export.

One iteration: the iteration's prompts (a seeded draw, the same whatever the world size) are dealt to ranks;
the FSDP2 shards are gathered into a generation copy and each rank samples G completions per prompt
(``rollout``), then frees it; verifiers score them (``rewards``); every rank receives every completion
(all-gather of token lists), computes the group advantages and the per-token weights of the normalisation
over the whole batch (``loss``), and the balanced planner packs the completions into micro-batches across
ranks; ``updates_per_batch`` optimizer steps follow, each summing sum_t w_t l_t over every micro-batch
(log-probs by ``s1fast_kernels.logprob_op`` inside the model's forward, where FSDP2 has the lm_head gathered).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from types import SimpleNamespace

import torch

from .. import checkpoint, distributed
from ..config import ConfigError
from ..figure import pyplot, save_figure
from ..metrics import Metrics, read_metrics
from ..optim import param_groups
from ..stopping import StopOnSignal, stopped
from ..train import TrainingDiverged, claim_output_dir, rank0_first
from ..train_export import export_final  # final/: the trainer's collective export
from .config import RLConfig
from .loss import group_advantages, grpo_token_loss, token_weights
from .rewards import BUILTIN, CORRECTNESS, parse_rewards, score

# what --replace deletes: the files of a run in its --output-dir
RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "reward_curve.png", "verifier_errors.jsonl", "eval_final.json")
TIMING = ("gen_time", "train_time", "step_time", "tokens_per_s", "eval_time")  # the only run-to-run differences


class VerifierError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ set-up
def resolve(cfg: RLConfig) -> tuple[object, str]:
    from ..data import DEFAULT_TOKENIZER
    from ..model import ModelConfig
    from .config import PRESETS, TOY_SFT_COMMAND
    if not os.path.isdir(cfg.model) or not os.path.exists(os.path.join(cfg.model, "config.json")):
        hint = f" (make it first: {TOY_SFT_COMMAND})" if cfg.model == PRESETS["toy"]["model"] else ""
        raise ConfigError(f"--model {cfg.model} is not a Hugging Face model folder with a config.json{hint}")
    tok = cfg.tokenizer or (cfg.model if os.path.exists(os.path.join(cfg.model, "tokenizer_config.json"))
                            else DEFAULT_TOKENIZER)
    if not os.path.isdir(tok):
        raise ConfigError(f"--tokenizer {tok} is not a folder")
    return ModelConfig.from_hf(os.path.join(cfg.model, "config.json")), tok


def load_rows(cfg: RLConfig) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out evaluation problems): rows with question and answer. The held-out problems
    are the same whatever --seed (so seeds compare), and are those of ``s1fast.eval --data toy:NAME:N``."""
    from ..data import toy
    if toy.is_spec(cfg.data):
        task, n = toy.parse_spec(cfg.data)
        held = toy.make_problems(task, cfg.eval_problems, seed=0, split="test") if cfg.eval_problems else []
        return toy.make_problems(task, n, seed=cfg.seed + 1, split="train"), held
    if not os.path.exists(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such file; give a .jsonl with question/answer fields or toy:NAME")
    from ..eval import read_problems
    try:
        rows = read_problems(cfg.data, cfg.question_field or None, cfg.answer_field or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.eval_problems:
        raise ConfigError("--eval-problems draws from the toy task's held-out split; with a --data file evaluate "
                          "the exported model with python -m s1fast.eval")
    return rows, []


def check_prompts(rows: list[dict], rollout, cfg: RLConfig, what: str) -> None:
    """Refuse, before any compute, a prompt that leaves no room to think within --max-total-tokens."""
    from ..forcing import auto_max_thinking
    for i, row in enumerate(rows):
        n = len(rollout.prompt(row["question"]))
        room = auto_max_thinking(n, cfg.max_total_tokens, rollout.tokens)
        if room < 1:
            raise ConfigError(f"{what} row {i} ({row['question'][:60]!r}...): its prompt takes {n} tokens, which with "
                              f"the forcing text and 100 tokens of answer room leaves no thinking budget within "
                              f"--max-total-tokens {cfg.max_total_tokens}; raise it or remove the row")


def build_policy(mcfg, folder, device, world, compute_dtype, master_dtype, trainable: bool):
    from ..model import build_model, load_weights
    model = build_model(mcfg, device="meta", dtype=master_dtype)
    distributed.shard_model(model, distributed.make_mesh(device, world), param_dtype=compute_dtype)
    model.to_empty(device=device)
    load_weights(model, folder)
    if not trainable:
        model.requires_grad_(False)
    return model


def gathered_state(model) -> dict:
    """Every rank gets the full (unsharded) weights, for its generation copy; collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False,
                                                                broadcast_from_rank0=False))


def iteration_prompts(n_rows: int, k: int, seed: int, it: int) -> list[int]:
    """The prompts of iteration ``it``: a seeded draw without replacement (with it when k > n_rows)."""
    rng = random.Random(f"s1fast-rl/{seed}/{it}")
    return rng.sample(range(n_rows), k) if k <= n_rows else [rng.randrange(n_rows) for _ in range(k)]


# ------------------------------------------------------------------------------------------ one update
def packed_batches(completions, weights, adv, rank, world, cfg, mcfg, it, device):
    """This rank's packed micro-batches (balanced planner over all ranks) with per-token advantages."""
    from ..packing import CostModel, collate, make_plan
    lengths = [len(c["ids"]) for c in completions]
    plan = make_plan(lengths, [c["sampled_tokens"] for c in completions], world_size=world,
                     micro_tokens=cfg.micro_tokens, global_batch=len(completions), epochs=1, seed=cfg.seed + it,
                     mode="balanced", cost=CostModel.from_hf_config(mcfg.to_hf()))
    step = plan.steps[0]
    mine, n_micro = step.micro_batches[rank], max(len(m) for m in step.micro_batches)
    out = []
    for k in range(n_micro):
        ids = mine[k] if k < len(mine) else []
        ex = [(torch.tensor(completions[i]["ids"]), torch.tensor(completions[i]["labels"])) for i in ids]
        b = collate(ex, [float(weights[i]) for i in ids], device=device, pad_to_nonempty=True)
        doc_adv = torch.tensor([float(adv[i]) for i in ids] or [0.0], dtype=torch.float32, device=device)
        doc = torch.repeat_interleave(torch.arange(b.num_docs, device=device),
                                      torch.diff(b.cu_seqlens.to(device).long()))
        out.append((b, doc_adv[doc]))
    return out


def logprob_head(targets, temperature, entropy):
    """Per-token log-probs (and entropy) inside the model's forward; off a GPU only the rows with a target go
    through the head (``rows_with_target``) and the others read 0, as the kernel writes them."""
    from s1fast_kernels.logprob_op import token_logprobs

    from ..collate import rows_with_target

    def head(hidden, weight):
        keep = rows_with_target(targets, hidden)
        if keep is None:
            return token_logprobs(hidden, weight, targets, temperature=temperature, entropy=entropy)
        lp, ent = token_logprobs(hidden.index_select(0, keep), weight, targets[keep], temperature=temperature,
                                 entropy=entropy)
        spread = lambda x: x.new_zeros(targets.shape[0]).index_copy(0, keep, x)  # noqa: E731
        return spread(lp), (spread(ent) if ent is not None else None)
    return head


def forward_logp(model, b, temperature, entropy=False):
    return model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen, head=logprob_head(b.targets, temperature,
                                                                                            entropy))


def update(model, ref, optimizer, batches, cfg, params):
    """``updates_per_batch`` optimizer steps on this batch; returns summed statistics over ranks."""
    scale = distributed.grad_scale()
    old = ref_lp = None
    with torch.no_grad():
        if cfg.updates_per_batch > 1:
            old = [forward_logp(model, b, cfg.temperature)[0] for b, _ in batches]
        if ref is not None:
            ref_lp = [forward_logp(ref, b, cfg.temperature)[0] for b, _ in batches]
    dev = batches[0][0].input_ids.device
    # loss, clipped tokens, tokens, KL sum, entropy sum, grad norm: device sums, read once (no per-micro sync)
    acc = torch.zeros(6, dtype=torch.float64, device=dev)
    for _ in range(cfg.updates_per_batch):
        for k, (b, adv) in enumerate(batches):
            logp, ent = forward_logp(model, b, cfg.temperature, entropy=True)
            loss, st = grpo_token_loss(logp, old[k] if old is not None else logp.detach(), adv, b.loss_weight,
                                       ref_logp=ref_lp[k] if ref_lp is not None else None, clip=cfg.clip,
                                       kl_coef=cfg.kl_coef)
            (loss * scale).backward()
            acc[:5] += torch.stack([loss.detach(), st["clipped"], st["tokens"],
                                    st["kl"] if st["kl"] is not None else torch.zeros((), device=dev),
                                    torch.where(b.loss_weight != 0, ent.detach(), 0.0).sum()]).double()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        acc[5] += (gn.full_tensor() if hasattr(gn, "full_tensor") else gn).double()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loss_sum, clipped, tokens, kl_sum, ent_sum, gnorm_sum = acc.tolist()
    # the grad norm is already global; the other sums are over this rank's tokens
    loss_sum, clipped, tokens, kl_sum, ent_sum = distributed.all_reduce_sum([loss_sum, clipped, tokens, kl_sum,
                                                                             ent_sum], dev)
    u = cfg.updates_per_batch
    return {"loss": loss_sum / u, "clip_fraction": clipped / max(tokens, 1), "kl": kl_sum / max(tokens, 1)
            if ref is not None else None, "entropy": ent_sum / max(tokens, 1), "grad_norm": gnorm_sum / u}


# ------------------------------------------------------------------------------------------ metrics
def reward_metrics(groups: list[list[dict]], verifiers, dropped: int) -> dict:
    flat = [c for g in groups for c in g]
    r = torch.tensor([c["reward"] for c in flat], dtype=torch.float64)
    row = {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if len(flat) > 1 else 0.0}
    for name, _, _ in verifiers:
        row[f"reward/{name}"] = sum(c["scores"][name] for c in flat) / len(flat)
    correct = [n for n, _, _ in verifiers if n in CORRECTNESS]
    if correct:
        row["accuracy"] = sum(c["scores"][correct[0]] == 1.0 for c in flat) / len(flat)
    row["completion_tokens"] = sum(c["completion_tokens"] for c in flat) / len(flat)
    row["sampled_tokens"] = sum(c["sampled_tokens"] for c in flat) / len(flat)
    row["capped"] = sum(c["capped"] for c in flat) / len(flat)
    equal = sum(len({c["reward"] for c in g}) == 1 for g in groups)
    row["all_equal_groups"] = equal / len(groups)
    row["all_zero_reward"] = bool((r == 0).all())
    row["no_signal"] = equal + dropped >= len(groups)
    row["verifier_errors"] = sum(len(c["errors"]) for c in flat)
    row["dropped_groups"] = dropped
    return row


def evaluate(rollout, rows, rank, world, verifiers) -> tuple[float, list[dict]]:
    """(held-out accuracy, every rank's verifier errors): greedy, the rows dealt to ranks; graded by the first
    correctness verifier through ``score``'s guard, so one that raises (``math`` on an unusable reference)
    counts that problem not correct and is reported, never a crash of the run."""
    name = next((n for n, _, _ in verifiers if n in CORRECTNESS), "toy")
    fn = dict((n, f) for n, _, f in verifiers).get(name) or BUILTIN[name]
    mine = rows[rank::world]
    got, errs = 0, []
    for c, r in zip(rollout.greedy(mine), mine):
        _, scores, e = score(c, r, [(name, 1.0, fn)])
        got += not e and scores[name] == 1.0
        errs += e
    total, n = distributed.all_reduce_sum([float(got), float(len(mine))], rollout.device)
    return total / max(n, 1), [x for part in distributed.all_gather_objects(errs) for x in part]


def plot_rewards(metrics_path: str) -> str | None:
    """``reward_curve.png`` beside the metrics: mean reward, sampled and held-out accuracy per iteration."""
    rows = read_metrics(metrics_path)
    out = os.path.join(os.path.dirname(metrics_path), "reward_curve.png")
    plt = pyplot(out, "metrics.jsonl has every iteration") if rows else None
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    it = [r["step"] for r in rows]
    ax.plot(it, [r["reward_mean"] for r in rows], label="reward (mean)", lw=1.6)
    if "accuracy" in rows[0]:
        ax.plot(it, [r["accuracy"] for r in rows], label="sampled accuracy", lw=1)
    ev = [(r["step"], r["eval_accuracy"]) for r in rows if r.get("eval_accuracy") is not None]
    if ev:
        ax.plot(*zip(*ev), "o-", label="held-out accuracy (greedy)")
    ax.set_xlabel("RL iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"s1fast RL: {rows[-1].get('run', '')}")
    return save_figure(plt, fig, out, "metrics.jsonl has every iteration")


# ------------------------------------------------------------------------------------------ the loop
def run(cfg: RLConfig, device: torch.device, rank: int, world: int) -> dict:
    """The run, holding ``--output-dir``'s lock (the trainer's: one run per folder, a new one needs --replace)."""
    lock = rank0_first(lambda: claim_output_dir(cfg), rank, others=lambda: None)  # None on ranks > 0
    try:
        return iterate(cfg, device, rank, world)
    finally:
        checkpoint.release_lock(lock)


def iterate(cfg: RLConfig, device: torch.device, rank: int, world: int) -> dict:
    s = set_up(cfg, device, rank, world)
    start, last_ckpt = resume(s)
    if start > cfg.iterations:
        raise ConfigError(f"--iterations {cfg.iterations} is below the iteration this run resumes from ({start}, "
                          f"{last_ckpt}): pass more --iterations, or --replace true to start a new run in "
                          f"{cfg.output_dir}")
    s.metrics = Metrics(cfg.output_dir, cfg.iterations, enabled=rank == 0, progress=cfg.progress, start_step=start)
    s.errors_path = os.path.join(cfg.output_dir, "verifier_errors.jsonl")
    if rank == 0:
        if start:
            s.metrics.message(f"[s1fast] resumed from {last_ckpt} at iteration {start}")
        s.metrics.message(f"[s1fast rl] {cfg.preset or 'custom'}: {len(s.rows)} prompts, {cfg.iterations} "
                          f"iterations of {cfg.prompts_per_iter} prompts x {cfg.group_size} samples, {world} "
                          f"rank(s), rewards {cfg.rewards}, norm {cfg.norm}, generator {cfg.generator}")
    total, saved = cfg.iterations, None
    try:
        with StopOnSignal() as stop:
            for it in range(start, total):
                t0 = time.perf_counter()
                idx = iteration_prompts(len(s.rows), cfg.prompts_per_iter, cfg.seed, it)
                eval_acc, groups = rollout_step(s, it, idx[rank::world])
                t_gen = time.perf_counter() - t0
                groups = reward_step(s, it, idx, groups)
                upd, lr, bad, flat, t_train = update_step(s, it, groups, last_ckpt)
                log_step(s, it, groups, bad, flat, upd, lr, eval_acc, t0, t_gen, t_train)
                if cfg.save_every and (it + 1) % cfg.save_every == 0 and it + 1 < total:
                    last_ckpt, saved = save(s, it + 1), it + 1
                if (signum := stop.agreed(device)) is not None:  # every rank: the same iteration and save
                    if saved != it + 1:  # a periodic save of this iteration is already complete
                        last_ckpt = save(s, it + 1)
                    return stopped(s.metrics.message, signum, last_ckpt, "iteration", it + 1)
            last_ckpt, halted = last_save(s, start, total, last_ckpt, stop)
            if halted:
                return halted
        return finish(s, total, last_ckpt)  # a signal from here on acts as without a run: the export cleans up
    finally:
        s.metrics.close(plot=cfg.plot)
        if cfg.plot and rank == 0 and os.path.exists(s.metrics.path):
            plot_rewards(s.metrics.path)


def set_up(cfg: RLConfig, device: torch.device, rank: int, world: int) -> SimpleNamespace:
    """Everything checked before compute (rewards, model folder, prompts), then the generator, the policy,
    the frozen reference, the optimizer and the warmup schedule."""
    from transformers import AutoTokenizer

    from .rollout import Rollout, VLLMRollout
    s = SimpleNamespace(cfg=cfg, device=device, rank=rank, world=world)
    s.verifiers = parse_rewards(cfg.rewards)
    s.mcfg, s.tok_dir = resolve(cfg)
    tokenizer = AutoTokenizer.from_pretrained(s.tok_dir)
    s.rows, s.held = load_rows(cfg)
    if cfg.generator == "vllm":
        s.rollout = VLLMRollout(tokenizer, cfg, device, cfg.model)
    else:
        s.rollout = Rollout(tokenizer, cfg, device)
    check_prompts(s.rows, s.rollout, cfg, cfg.data)
    check_prompts(s.held, s.rollout, cfg, "held-out")
    s.compute_dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    master_dtype = torch.bfloat16 if cfg.master_dtype == "bf16" else torch.float32
    s.model = build_policy(s.mcfg, cfg.model, device, world, s.compute_dtype, master_dtype, True)
    s.ref = (build_policy(s.mcfg, cfg.model, device, world, s.compute_dtype, master_dtype, False) if cfg.kl_coef
             else None)
    s.params = [p for p in s.model.parameters() if p.requires_grad]
    s.optimizer = torch.optim.AdamW(param_groups(s.model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    eps=1e-8)
    warm = cfg.warmup_iters
    s.scheduler = torch.optim.lr_scheduler.LambdaLR(s.optimizer, lambda i: min(1.0, (i + 1) / warm) if warm else 1.0)
    s.ckpt_root = os.path.join(cfg.output_dir, "checkpoints")
    s.signature = {k: getattr(cfg, k) for k in ("model", "data", "rewards", "seed", "prompts_per_iter", "group_size",
                                                "updates_per_batch", "norm", "adv_scale", "temperature", "kl_coef")}
    return s


def resume(s) -> tuple[int, str | None]:
    """(first iteration, checkpoint resumed from or None); a checkpoint of another RL run is refused."""
    cfg = s.cfg
    if cfg.replace and s.rank == 0:
        checkpoint.remove_run(cfg.output_dir, RUN_FILES)
    distributed.barrier()
    if cfg.resume == "never" or (cfg.replace and cfg.resume == "auto"):
        return 0, None
    path = checkpoint.latest(s.ckpt_root) if cfg.resume == "auto" else cfg.resume
    if path is None:
        return 0, None
    state = checkpoint.load(path, s.model, s.optimizer)
    if "rl_signature" not in state:
        raise ConfigError(f"{path} was saved by s1fast.train, not by s1fast.rl: use another --output-dir (to start "
                          f"RL from it, export it with python -m s1fast.export and pass --model)")
    saved = state["rl_signature"]
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in s.signature.items() if saved.get(k) != v]
    if diff:
        raise ConfigError(f"{path} was saved by another RL run ({'; '.join(diff)}): use its settings, pass --replace "
                          f"true to start a new run in {cfg.output_dir}, or use another --output-dir")
    s.scheduler.load_state_dict(state["scheduler"])
    return state["step"], path


def save(s, it: int) -> str:
    return checkpoint.save(s.ckpt_root, it, s.model, s.optimizer, {"scheduler": s.scheduler.state_dict(),
                                                                   "config": s.cfg.to_dict(),
                                                                   "rl_signature": s.signature,
                                                                   "cwd": os.getcwd()},
                           s.cfg.keep_checkpoints)


def with_generator(s, fn):
    """``fn()`` with the generation copy holding the policy's current weights, freed afterwards."""
    sd = gathered_state(s.model)
    s.rollout.refresh(s.model, sd, s.compute_dtype)
    del sd
    try:
        return fn()
    finally:
        s.rollout.free()


def rollout_step(s, it: int, mine: list[int]):
    """(held-out accuracy or None, this rank's groups of completions for its prompts ``mine``)."""
    cfg = s.cfg

    def generate():
        acc = None
        if s.held and ((it == 0) or (cfg.eval_every and it % cfg.eval_every == 0)):
            acc, errs = evaluate(s.rollout, s.held, s.rank, s.world, s.verifiers)
            report_errors(s, errs, it + 1, held_out=True)
        return acc, s.rollout.sample([s.rows[i] for i in mine], mine, it)
    return with_generator(s, generate)


def reward_step(s, it: int, idx: list[int], groups: list) -> list:
    """Score this rank's groups, gather every rank's (in the iteration's prompt order), and report (or, with
    --on-verifier-error fail, raise) verifier errors."""
    cfg, rank, world = s.cfg, s.rank, s.world
    for p, g in zip(idx[rank::world], groups):
        for c in g:
            c["reward"], c["scores"], c["errors"] = score(c, s.rows[p], s.verifiers)
    # every rank gets every group, in the iteration's prompt order
    by_prompt = {}
    for part in distributed.all_gather_objects(list(zip(range(rank, len(idx), world), groups))):
        by_prompt.update(dict(part))
    groups = [by_prompt[j] for j in range(len(idx))]
    errs = [e for j, g in enumerate(groups) for c in g for e in c["errors"]]
    if errs:
        report_errors(s, errs, it + 1)
        if cfg.on_verifier_error == "fail":
            raise VerifierError(f"verifier {errs[0]['verifier']} raised on prompt {errs[0]['question']!r}: "
                                f"{errs[0]['error']} (see {s.errors_path}; --on-verifier-error drop skips such groups)")
    return groups


def report_errors(s, errs: list[dict], iteration: int, held_out: bool = False) -> None:
    """Rank 0 appends the verifier errors to verifier_errors.jsonl (``held_out``: of the held-out evaluation)
    and warns with the first."""
    if s.rank != 0 or not errs:
        return
    with open(s.errors_path, "a") as f:
        for e in errs:
            f.write(json.dumps(dict(e, iteration=iteration, **({"held_out": True} if held_out else {}))) + "\n")
    e, what = errs[0], "held-out evaluation" if held_out else f"iteration {iteration}"
    s.metrics.message(f"[s1fast rl] warning: {what}: {len(errs)} verifier error(s){', counted not correct' * held_out}"
                      f", e.g. {e['verifier']} on {e['question']!r}: {e['error']} (all in {s.errors_path})")


def update_step(s, it: int, groups: list, last_ckpt):
    """Advantages and token weights over the whole batch, packed micro-batches, the optimizer steps:
    (statistics, learning rate used, groups dropped, completions, seconds)."""
    cfg = s.cfg
    bad = torch.tensor([any(c["errors"] for c in g) for g in groups])
    flat = [c for g in groups for c in g]
    rewards = torch.tensor([c["reward"] for c in flat], dtype=torch.float64)
    adv = group_advantages(rewards, cfg.group_size, cfg.adv_scale)
    adv = torch.where(bad.repeat_interleave(cfg.group_size), 0.0, adv)
    w = token_weights(torch.tensor([c["sampled_tokens"] for c in flat]), cfg.norm, max_len=cfg.max_total_tokens)
    t1 = time.perf_counter()
    batches = packed_batches(flat, w, adv, s.rank, s.world, cfg, s.mcfg, it, s.device)
    s.model.train()
    upd = update(s.model, s.ref, s.optimizer, batches, cfg, s.params)
    lr = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    t_train = time.perf_counter() - t1
    if not math.isfinite(upd["loss"]) or not math.isfinite(upd["grad_norm"]):
        raise TrainingDiverged(f"loss {upd['loss']} / grad norm {upd['grad_norm']} at iteration {it + 1}: "
                               f"stopped. Last good checkpoint: {last_ckpt or 'none'}. Lower --lr or check "
                               "the rewards.")
    return upd, lr, bad, flat, t_train


def log_step(s, it, groups, bad, flat, upd, lr, eval_acc, t0, t_gen, t_train) -> None:
    """The iteration's metrics row, and a notice when it carried no learning signal."""
    dt = time.perf_counter() - t0
    row = {"step": it + 1, **reward_metrics(groups, s.verifiers, int(bad.sum())), **upd, "lr": lr,
           "gen_time": t_gen, "train_time": t_train, "step_time": dt,
           "tokens_per_s": sum(len(c["ids"]) for c in flat) / dt, "run": s.cfg.preset or "custom"}
    if eval_acc is not None:
        row["eval_accuracy"] = eval_acc
    if row["no_signal"] and s.rank == 0:
        why = "every reward is 0" if row["all_zero_reward"] else "every group's rewards are all equal"
        s.metrics.message(f"[s1fast rl] iteration {it + 1}: {why}: no learning signal (only the KL term, if any)")
    s.metrics.log(row)


def last_save(s, start: int, total: int, last_ckpt, stop) -> tuple[str, dict | None]:
    """(the last iteration's checkpoint, the run's result if a signal came by then on any rank: it then stops
    before the held-out evaluation and the export)."""
    if total > start or last_ckpt is None:
        last_ckpt = save(s, total)
    signum = stop.agreed(s.device)
    return last_ckpt, (stopped(s.metrics.message, signum, last_ckpt, "iteration", total,
                               then="evaluate and export it") if signum is not None else None)


def finish(s, total: int, last_ckpt) -> dict:
    """The held-out accuracy and the Hugging Face export."""
    cfg, rank = s.cfg, s.rank
    result = {"iterations": total, "checkpoint": last_ckpt}
    if s.held:
        acc, errs = with_generator(s, lambda: evaluate(s.rollout, s.held, rank, s.world, s.verifiers))
        report_errors(s, errs, total, held_out=True)
        result["eval_accuracy"] = acc
        if rank == 0:
            with open(os.path.join(cfg.output_dir, "eval_final.json"), "w") as f:
                json.dump({"iterations": total, "eval_accuracy": acc, "eval_problems": len(s.held)}, f)
            s.metrics.message(f"[s1fast rl] held-out accuracy after {total} iterations: {acc:.3f}")
    if cfg.export:  # the trainer's export: collective, and a failure on rank 0 ends every rank alike
        result["final"] = export_final(cfg.output_dir, s.model, s.mcfg, s.tok_dir, s.device, rank)
        s.metrics.message(f"[s1fast] exported {result['final']} (Hugging Face format)")
    return result

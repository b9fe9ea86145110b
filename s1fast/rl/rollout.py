"""Sampling a group of completions per prompt with the current weights, recording which tokens the policy
sampled (forced protocol tokens, such as "Wait" or the forced end of thinking, are not the policy's and get
no gradient).

``Rollout`` drives s1fast's generation engine (``s1fast.generate.run_native``, budget forcing from
``s1fast.forcing``) on a plain, unsharded copy of the policy: the FSDP2 shards are gathered into it before
generation and it is freed after. Every sample's seed is a function of (run seed, iteration, prompt index,
sample index) only, so a prompt's group does not depend on which rank or batch sampled it, and a resumed
run samples what the uninterrupted run sampled. ``VLLMRollout`` does the same on a colocated vLLM engine
(GPU nodes), its weights refreshed from the trainer every iteration.
"""
from __future__ import annotations

import torch

from ..config import ConfigError
from ..forcing import BudgetForcer, ForcingTokens
from ..generate import DEFAULT_SYSTEM, prompt_ids, run_native


class RecordingForcer(BudgetForcer):
    """A BudgetForcer that marks the positions of ``ids`` holding a token the policy sampled."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sampled: set[int] = set()

    def push(self, token: int) -> None:
        at = len(self.ids)
        super().push(token)
        if len(self.ids) > at and self.ids[at] == int(token):  # kept where it was drawn (not dropped or replaced)
            self.sampled.add(at)


def sample_seed(seed: int, iteration: int, prompt: int, sample: int) -> int:
    return (((seed * 1_000_003 + iteration) * 1_000_033 + prompt) * 1009 + sample) % (2**63 - 1)


def completion_record(tokenizer, f: RecordingForcer) -> dict:
    """What verifiers and the update need of one finished forcer."""
    r = f.result()
    dec = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    answer, forced_end = dec(r["answer_ids"]), dec(r["forced_end_ids"])
    n = len(f.ids)
    labels = [f.ids[i] if i in f.sampled else -100 for i in range(n)]
    return {"ids": list(f.ids), "labels": labels, "prompt_tokens": f.prompt_len, "sampled_tokens": len(f.sampled),
            "completion_tokens": n - f.prompt_len, "thinking": dec(r["thinking_ids"]), "answer": answer,
            "answer_text": forced_end + answer, "capped": r["capped"], "finished": r["finished"],
            "waits": r["waits"], "thinking_tokens": r["thinking_tokens"]}


class Rollout:
    """G completions for each of a rank's prompts, by s1fast's engine."""

    def __init__(self, tokenizer, cfg, device):
        self.tokenizer, self.cfg, self.device = tokenizer, cfg, device
        self.tokens = ForcingTokens.from_tokenizer(tokenizer)

    def prompt(self, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, question, DEFAULT_SYSTEM)

    def forcers(self, question: str, n: int) -> list[RecordingForcer]:
        c = self.cfg
        return [RecordingForcer(self.prompt(question), self.tokens, max_thinking_tokens=c.thinking_budget,
                                min_thinking_tokens=c.min_thinking_tokens, num_wait=c.num_wait,
                                max_answer_tokens=c.max_answer_tokens or None, max_total_tokens=c.max_total_tokens)
                for _ in range(n)]

    def refresh(self, policy, full_state: dict, dtype) -> None:
        """Build the generation copy from the gathered full state dict (every rank holds it)."""
        from ..model import build_model
        self.model = build_model(policy.cfg, device=self.device, dtype=dtype, init=False)
        missing, unexpected = self.model.load_state_dict(full_state, strict=False)
        if unexpected or [k for k in missing if not (k == "lm_head.weight" and policy.cfg.tie_word_embeddings)]:
            raise RuntimeError(f"generation copy: missing {missing}, unexpected {unexpected}")
        self.model.tie_weights()
        self.model.eval()

    def free(self) -> None:
        self.model = None

    def run(self, forcers: list[RecordingForcer], seeds: list[int], temperature: float) -> None:
        run_native(self.model, forcers, temperature=temperature, top_p=1.0, seeds=seeds,
                   vocab_limit=len(self.tokenizer))

    def sample(self, rows: list[dict], indices: list[int], iteration: int) -> list[list[dict]]:
        """One group of G completions per row (whole groups per generation batch)."""
        c = self.cfg
        per_batch = max(1, c.gen_batch // c.group_size)
        groups = []
        for s in range(0, len(rows), per_batch):
            forcers, seeds = [], []
            for row, p in zip(rows[s:s + per_batch], indices[s:s + per_batch]):
                forcers += self.forcers(row["question"], c.group_size)
                seeds += [sample_seed(c.seed, iteration, p, j) for j in range(c.group_size)]
            self.run(forcers, seeds, c.temperature)
            recs = [completion_record(self.tokenizer, f) for f in forcers]
            groups += [recs[i:i + c.group_size] for i in range(0, len(recs), c.group_size)]
        return groups

    def greedy(self, rows: list[dict]) -> list[dict]:
        """One greedy completion per row (held-out evaluation)."""
        out = []
        for s in range(0, len(rows), self.cfg.gen_batch):
            forcers = [self.forcers(r["question"], 1)[0] for r in rows[s:s + self.cfg.gen_batch]]
            self.run(forcers, list(range(len(forcers))), 0.0)
            out += [completion_record(self.tokenizer, f) for f in forcers]
        return out


class VLLMRollout(Rollout):
    """The same on a colocated vLLM engine (GPU only); weights refreshed in place from the trainer."""

    def __init__(self, tokenizer, cfg, device, model_dir: str):
        if device.type != "cuda":
            raise ConfigError("--generator vllm runs on a GPU node; this run is on the CPU: use --generator native")
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ConfigError("--generator vllm needs vllm installed on this GPU node (`pip install vllm`); "
                              "or use --generator native") from e
        from ..vllm_backend import VLLMBackend
        super().__init__(tokenizer, cfg, device)
        import os

        import torch.distributed as dist
        # The engine in this process (vLLM's V1 engine runs in a child process by default, where the trainer
        # cannot load weights into it; vLLM sets the same itself for "external_launcher").
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        extra = {}
        if dist.is_initialized() and dist.get_world_size() > 1:
            # colocated under torchrun: one engine per rank in this process (vLLM's "external_launcher" backend,
            # as TRL's colocate mode runs it), each on its rank's GPU
            extra = dict(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
        self.backend = VLLMBackend.from_pretrained(
            model_dir, dtype="bfloat16" if cfg.dtype == "bf16" else "float32",
            gpu_memory_utilization=cfg.vllm_gpu_memory, enable_prefix_caching=True, seed=cfg.seed, **extra)
        self.llm = self.backend.llm
        self._engine_model()    # refused now, before any training, where this vLLM hides its model

    def _engine_model(self):
        """The engine's torch module (in-process engine: ``LLMEngine.model_executor`` exists only then)."""
        eng = self.llm.llm_engine
        for path in ("model_executor.driver_worker.model_runner.model",
                     "model_executor.driver_worker.worker.model_runner.model"):
            obj = eng
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                continue
        raise ConfigError("--generator vllm: cannot reach the vLLM engine's model to load the policy's weights "
                          "(llm.llm_engine.model_executor.driver_worker.model_runner.model: not in this vLLM "
                          "version, or its engine runs in another process); use --generator native")

    def refresh(self, policy, full_state: dict, dtype) -> None:
        """Load the policy's weights into the engine, then drop its prefix cache: the cached KV blocks (the
        shared system prompt, repeated held-out prompts) were computed by the old weights and would be reused."""
        from ..model import hf_name
        self._engine_model().load_weights((hf_name(k), v.to(self.device, dtype)) for k, v in full_state.items())
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM did not reset its prefix cache after the weight update (requests running?); "
                               "the next rollouts would reuse KV computed by the old weights")

    def free(self) -> None:
        pass

    def run(self, forcers, seeds, temperature) -> None:
        self.backend.run(forcers, temperature=temperature, top_p=1.0, seeds=seeds, vocab_limit=len(self.tokenizer))

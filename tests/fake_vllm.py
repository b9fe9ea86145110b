"""Stand-ins for ``vllm.SamplingParams`` and ``vllm.LLM`` with the real signatures and checks, so a call that
vLLM would refuse fails here too (vLLM itself needs a GPU). Mirrors vLLM main (2026):
``vllm/sampling_params.py`` (fields, ``__post_init__``, ``_verify_args``, ``verify``), ``vllm/entrypoints/llm.py``
(``LLM.generate``, ``LLM.reset_prefix_cache``) and ``vllm/v1/core/sched/utils.py`` (``check_stop``).

``FakeLLM(next_token)``: ``next_token(context, params)`` gives the token, or a list of preferred tokens (the
first one allowed is taken: ``allowed_token_ids`` and, before ``min_tokens``, the stop and EOS ids are masked).
"""
from __future__ import annotations

import abc
import enum
import sys
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Sequence

import torch

# SamplingParams's init fields and defaults (every one, so any real keyword is accepted)
FIELDS = dict(
    n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, temperature=1.0, top_p=1.0, top_k=0,
    min_p=0.0, seed=None, stop=None, stop_token_ids=None, ignore_eos=False, max_tokens=16, min_tokens=0,
    logprobs=None, prompt_logprobs=None, prompt_logprob_token_ids=None, prompt_logprob_start=None,
    logprob_token_ids=None, flat_logprobs=False, detokenize=True, skip_special_tokens=True,
    spaces_between_special_tokens=True, include_stop_str_in_output=False, output_kind=None, stream_interval=None,
    skip_clone=False, structured_outputs=None, logit_bias=None, allowed_token_ids=None, extra_args=None,
    bad_words=None, skip_reading_prefix_cache=None, thinking_token_budget=None, repetition_detection=None,
    routed_experts_prompt_start=0, trace_decode_token_ids=None)


class VLLMValidationError(ValueError):
    pass


class SamplingParams:
    """Keyword-only, as the msgspec struct; an unknown keyword is a TypeError; the same validation."""

    def __init__(self, **kw):
        for k in kw:
            if k not in FIELDS:
                raise TypeError(f"Unexpected keyword argument '{k}'")
        self.__dict__.update({**FIELDS, **kw})
        if 0 < self.temperature < 1e-2:
            self.temperature = 1e-2
        if self.seed == -1:
            self.seed = None
        self.stop_token_ids = list(dict.fromkeys(self.stop_token_ids or []))
        self._verify_args()
        if self.temperature < 1e-5:
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    def _verify_args(self) -> None:
        checks = [(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
                  (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
                  (self.repetition_penalty > 0.0, "repetition_penalty must be greater than zero"),
                  (0.0 <= self.temperature <= 2.0, "temperature must be in [0, 2]"),
                  (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
                  (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be at least 1"),
                  (self.min_tokens >= 0, "min_tokens must be greater than or equal to 0"),
                  (self.max_tokens is None or self.min_tokens <= self.max_tokens,
                   "min_tokens must be less than or equal to max_tokens"),
                  (all(isinstance(t, int) for t in self.stop_token_ids), "stop_token_ids must contain only integers")]
        for ok, message in checks:
            if not ok:
                raise VLLMValidationError(f"{message}, got {self.__dict__}")

    def verify(self, vocab_size: int) -> None:
        """The engine's checks against the model (``SamplingParams.verify``)."""
        if self.allowed_token_ids is not None:
            if len(self.allowed_token_ids) == 0:
                raise VLLMValidationError("allowed_token_ids is not None and empty!")
            if any(not 0 <= t < vocab_size for t in self.allowed_token_ids):
                raise VLLMValidationError("allowed_token_ids contains out-of-vocab token id!")
        if any(not 0 <= t < vocab_size for t in self.stop_token_ids):
            raise VLLMValidationError("stop_token_ids contain out-of-vocab token ids")


PROMPT_KEYS = {"prompt_token_ids", "prompt", "multi_modal_data", "mm_processor_kwargs", "cache_salt"}


# vllm/v1/sample/logits_processor/interface.py
class MoveDirectionality(enum.Enum):
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass(frozen=True)
class BatchUpdate:
    batch_size: int
    removed: Sequence[int]
    added: Sequence[tuple]          # (index, params, prompt_tok_ids, output_tok_ids)
    moved: Sequence[tuple]          # (index 1, index 2, MoveDirectionality)


class LogitsProcessor(abc.ABC):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        return None

    @abc.abstractmethod
    def __init__(self, vllm_config, device, is_pin_memory: bool) -> None: ...

    @abc.abstractmethod
    def apply(self, logits: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def is_argmax_invariant(self) -> bool: ...

    @abc.abstractmethod
    def update_state(self, batch_update) -> None: ...


class FakeLLM:
    """``logits_processors``: classes built and run as vLLM's V1 engine does, one request at a time (row 0);
    a preferred token whose logit they set to -inf is skipped."""

    def __init__(self, next_token, *, vocab_size: int = 152064, eos_token_id: int = 151645,
                 generation_eos=(151645, 151643), logits_processors=(), max_model_len: int = 32768):
        self.next_token, self.vocab_size, self.eos = next_token, vocab_size, eos_token_id
        self.max_model_len = max_model_len
        self.processors = []
        for cls in logits_processors or ():
            if not (isinstance(cls, type) and issubclass(cls, LogitsProcessor)):
                raise ValueError(f"{cls} is not a LogitsProcessor subclass")
            self.processors.append(cls(None, torch.device("cpu"), False))
        self.generation_eos = set(generation_eos)
        self.model_config = SimpleNamespace(get_vocab_size=lambda: self.vocab_size, max_model_len=max_model_len)
        self.llm_engine = SimpleNamespace(model_config=self.model_config)
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self.prefix_resets = 0

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.prefix_resets += 1
        return True

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None):
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and params must be the same.")
        outs = []
        for pr, sp in zip(prompts, params):
            if not isinstance(pr, dict) or not set(pr) <= PROMPT_KEYS or "prompt_token_ids" not in pr:
                raise TypeError(f"this stand-in takes TokensPrompt dicts, got {pr!r}")
            if not isinstance(sp, SamplingParams):
                raise TypeError(f"sampling_params must be SamplingParams, got {type(sp).__name__}")
            sp.verify(self.vocab_size)
            if len(pr["prompt_token_ids"]) >= self.max_model_len:    # the input processor's check
                raise ValueError(f"The decoder prompt (length {len(pr['prompt_token_ids'])}) is longer than the "
                                 f"maximum model length of {self.max_model_len}.")
            for proc in self.processors:
                proc.validate_params(sp)
            self.requests.append((list(pr["prompt_token_ids"]), sp))
            outs.append(SimpleNamespace(prompt_token_ids=list(pr["prompt_token_ids"]),
                                        outputs=[self._complete(list(pr["prompt_token_ids"]), sp)]))
        return outs

    def _complete(self, ctx: list[int], sp: SamplingParams):
        stops = set(sp.stop_token_ids)
        masked_early = stops | self.generation_eos | {self.eos}      # min_tokens masks these (all_stop_token_ids)
        allowed = set(sp.allowed_token_ids) if sp.allowed_token_ids is not None else None
        toks, reason, stop_reason = [], "length", None
        update = BatchUpdate(1, [], [(0, sp, ctx, toks)], [])
        while True:
            prefs = self.next_token(ctx + toks, sp)
            prefs = prefs if isinstance(prefs, list) else [prefs]
            if self.processors:
                logits = torch.zeros(1, self.vocab_size)
                logits[0, [t for t in prefs if 0 <= t < self.vocab_size]] = 1.0
                for proc in self.processors:
                    proc.update_state(update)
                    logits = proc.apply(logits)
                update = None
                prefs = [t for t in prefs if 0 <= t < self.vocab_size and logits[0, t] != float("-inf")]
            ok = [t for t in prefs if (allowed is None or t in allowed)
                  and not (len(toks) < sp.min_tokens and t in masked_early) and 0 <= t < self.vocab_size]
            t = ok[0]
            toks.append(t)
            if len(toks) >= sp.min_tokens:   # check_stop: EOS, then the stop ids, then the length
                if not sp.ignore_eos and t == self.eos:
                    reason = "stop"
                    break
                if t in stops:
                    reason, stop_reason = "stop", t
                    break
            if (sp.max_tokens is not None and len(toks) >= sp.max_tokens) or len(ctx) + len(toks) >= self.max_model_len:
                break
        for proc in self.processors:
            proc.update_state(BatchUpdate(0, [0], [], []))
        return SimpleNamespace(token_ids=toks, finish_reason=reason, stop_reason=stop_reason, text="")


def install(monkeypatch, next_token, *, takes_processors: bool = True, **llm_kw) -> list:
    """Make ``import vllm`` (``LLM``, ``SamplingParams``, ``vllm.v1.sample.logits_processor``) these stand-ins
    for one test; ``takes_processors=False``: an LLM without the ``logits_processors`` keyword (an older vLLM).
    Returns the list of LLMs built."""
    built = []

    class LLM(FakeLLM):
        def __init__(self, model, **kw):
            if "logits_processors" in kw and not takes_processors:
                raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'logits_processors'")
            super().__init__(next_token, logits_processors=kw.pop("logits_processors", ()), **llm_kw)
            self.model, self.engine_kwargs = model, kw
            built.append(self)

    mods = {name: ModuleType(name) for name in ("vllm", "vllm.v1", "vllm.v1.sample",
                                                "vllm.v1.sample.logits_processor")}
    mods["vllm"].LLM, mods["vllm"].SamplingParams = LLM, SamplingParams
    lp = mods["vllm.v1.sample.logits_processor"]
    lp.BatchUpdate, lp.LogitsProcessor, lp.MoveDirectionality = BatchUpdate, LogitsProcessor, MoveDirectionality
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "s1fast.vllm_vocab", raising=False)
    return built

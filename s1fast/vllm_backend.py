"""The optional vLLM backend of ``s1fast.generate``: s1's budget forcing on a vLLM engine by re-prompting,
driven by the same ``BudgetForcer`` state machines as the native engine (docs/forcing.md).

Checked against vLLM's source (``vllm/sampling_params.py``, ``vllm/entrypoints/llm.py``,
``vllm/v1/core/sched/utils.py``, ``vllm/v1/worker/gpu_input_batch.py``; main branch, 2026):

* ``LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
  tokenization_kwargs=None)``; a prompt ``{"prompt_token_ids": [...]}`` is a ``TokensPrompt``.
* ``SamplingParams`` refuses (``VLLMValidationError``, a ValueError) a temperature above 2, a top_p outside
  (0, 1], max_tokens < 1, min_tokens > max_tokens, an empty ``allowed_token_ids`` and ids outside the model's
  vocabulary; it raises a temperature in (0, 0.01) to 0.01; below 1e-5 it is greedy (the seed unused).
* A stop id ends the request and stays in ``token_ids`` (``stop_reason`` names it); it counts toward
  ``max_tokens``. ``min_tokens`` masks the stop ids *and* the model's EOS ids before that many tokens.
* ``allowed_token_ids`` costs per request: the list is deep-copied with the parameters, checked id by id,
  sent to the engine process, and written into a [max_num_seqs, vocabulary] boolean mask row (about 0.2 s of
  CPU for Qwen2.5's 151,665 ids on a small CPU), and the mask's live rows are copied to the GPU whenever the
  batch changes. So the ids the tokenizer does not have (the model's padded rows: ``vocab_limit`` below the
  engine's vocabulary) are masked by s1fast's logits processor (``s1fast.vllm_vocab``: one int per request,
  one slice per step) where this vLLM takes custom ones, else by ``allowed_token_ids`` built once per limit;
  nothing is sent where the limit masks nothing.
* ``detokenize=False``: s1fast reads ``token_ids`` only (and decodes them itself).
* ``repetition_penalty`` is over the request's prompt and output ids. A re-prompted round's prompt holds the
  earlier rounds and the forced text, so it is the native engine's penalty over prompt + everything after it:
  supported. ``presence_penalty`` / ``frequency_penalty`` count the request's output only, the current round
  here, where the native engine counts everything after the prompt: refused (``UNSUPPORTED_PENALTIES``).
"""
from __future__ import annotations

from typing import Sequence

from s1fast.forcing import BudgetForcer, ProtocolError
from s1fast.sampling import GREEDY_BELOW    # vLLM's _SAMPLING_EPS: greedy below
from s1fast.sampling import VLLM_VOCAB_LIMIT_KEY as VOCAB_LIMIT_ARG  # read by s1fast.vllm_vocab.VocabLimit

MAX_TEMPERATURE = 2.0      # vLLM refuses above
MIN_TEMPERATURE = 1e-2     # vLLM raises (0, MIN) to MIN
_ROUND_ONLY = ("vLLM counts only the current re-prompting round's output, s1fast everything after the prompt "
               "(earlier rounds, forced text)")
UNSUPPORTED_PENALTIES = {"presence_penalty": _ROUND_ONLY, "frequency_penalty": _ROUND_ONLY}


def sampling_error(temperature: float, top_p: float) -> str | None:
    """What vLLM would refuse (or silently change) of these settings, as flag words; None when all is well."""
    if not (temperature < GREEDY_BELOW or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        return (f"--temperature {temperature} with vLLM: it takes 0 (greedy) or [{MIN_TEMPERATURE}, "
                f"{MAX_TEMPERATURE}] (it refuses more and raises less to {MIN_TEMPERATURE})")
    if not 0 < top_p <= 1:
        return f"--top-p {top_p} with vLLM: it takes (0, 1]"
    return None


def _model_config(llm):
    return getattr(llm, "model_config", None) or getattr(getattr(llm, "llm_engine", None), "model_config", None)


def engine_vocab_size(llm) -> int | None:
    """The width of the engine's logits (the model's vocab_size, padding included), or None if unknown."""
    try:
        return int(_model_config(llm).get_vocab_size())
    except (AttributeError, TypeError, ValueError):
        return None


def engine_setting(llm, name: str) -> int | None:
    """An int of the engine's ModelConfig (``max_model_len``), or None if unknown."""
    v = getattr(_model_config(llm), name, None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class VLLMBackend:
    """Budget forcing on a vLLM engine by re-prompting (s1's way), driven by the same forcers.

    ``llm`` is a ``vllm.LLM``; ``sampling_params`` the ``vllm.SamplingParams`` class (tests pass a stand-in).
    Thinking rounds set ``ignore_eos=True`` so that only the protocol's stop ids end a round."""

    def __init__(self, llm, sampling_params=None, *, vocab_processor: bool = False):
        if sampling_params is None:
            try:
                from vllm import SamplingParams as sampling_params  # noqa: N813
            except ImportError as e:
                raise ImportError("the vLLM backend was requested but vllm is not installed; install it on a "
                                  "GPU machine (`pip install vllm`) or use the native backend (--backend native)"
                                  ) from e
        self.llm = llm
        self.sampling_params = sampling_params
        self.vocab_size = engine_vocab_size(llm)
        self.vocab_processor = vocab_processor    # the engine was built with s1fast.vllm_vocab.VocabLimit
        self.max_model_len = engine_setting(llm, "max_model_len")    # vLLM refuses longer sequences
        self._masks: dict[int, dict] = {}

    @classmethod
    def from_pretrained(cls, model_dir: str, **engine_kwargs) -> "VLLMBackend":
        """A backend on ``vllm.LLM(model_dir, **engine_kwargs)``, with s1fast's vocab-limit logits processor
        where this vLLM takes custom ones (V1 ``LLM(logits_processors=...)``)."""
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(f"--backend vllm needs vllm, which is not installed (model {model_dir}); "
                              "`pip install vllm` on a GPU machine, or use --backend native") from e
        try:
            from s1fast.vllm_vocab import VocabLimit
        except ImportError:    # a vLLM without V1 logits processors: allowed_token_ids instead
            VocabLimit = None  # noqa: N806
        if VocabLimit is not None:
            try:
                return cls(LLM(model_dir, logits_processors=[VocabLimit], **engine_kwargs), vocab_processor=True)
            except TypeError as e:      # an LLM without the keyword (raised before anything loads)
                if "logits_processors" not in str(e):
                    raise
        return cls(LLM(model_dir, **engine_kwargs))

    def mask_args(self, vocab_limit: int | None) -> dict:
        """The SamplingParams fields masking the ids at and above ``vocab_limit``: none where that masks
        nothing (no limit, or it covers the engine's vocabulary), else the processor's one int, else
        ``allowed_token_ids``; one per limit, reused."""
        if vocab_limit is None or (self.vocab_size is not None and vocab_limit >= self.vocab_size):
            return {}
        if vocab_limit not in self._masks:
            self._masks[vocab_limit] = ({"extra_args": {VOCAB_LIMIT_ARG: vocab_limit}} if self.vocab_processor
                                        else {"allowed_token_ids": list(range(vocab_limit))})
        return self._masks[vocab_limit]

    def run(self, forcers: Sequence[BudgetForcer], *, temperature: float = 0.0, top_p: float = 1.0,
            seeds: Sequence[int] | None = None, vocab_limit: int | None = None,
            repetition_penalty: float = 1.0) -> None:
        seeds = list(seeds) if seeds is not None else list(range(len(forcers)))
        rounds = 0
        active = [i for i, f in enumerate(forcers) if not f.done]
        while active:
            segs = [forcers[i].segment() for i in active]
            params = [self.params_for(s, seeds[i], rounds, temperature=temperature, top_p=top_p,
                                      vocab_limit=vocab_limit, repetition_penalty=repetition_penalty)
                      for i, s in zip(active, segs)]
            outs = self.generate(segs, params)
            for i, s, out in zip(active, segs, outs):
                self._absorb(forcers[i], s, out.outputs[0])
            rounds += 1
            active = [i for i in active if not forcers[i].done]

    def generate(self, segs, params) -> list:
        """One ``LLM.generate`` call: each segment's context as a TokensPrompt, with its parameters."""
        return self.llm.generate([{"prompt_token_ids": s.context} for s in segs], sampling_params=params,
                                 use_tqdm=False)

    def params_for(self, s, seed: int, round_index: int, *, temperature: float, top_p: float,
                   vocab_limit: int | None, repetition_penalty: float = 1.0):
        """The sampling parameters of one segment (round ``round_index`` of a prompt seeded ``seed``)."""
        return self.sampling_params(
            max_tokens=s.max_new, min_tokens=s.min_new, stop_token_ids=sorted(s.stops), ignore_eos=True,
            temperature=temperature, top_p=top_p, seed=seed + 1_000_003 * round_index,
            repetition_penalty=repetition_penalty, skip_special_tokens=False, detokenize=False,
            **self.mask_args(vocab_limit))

    @staticmethod
    def _absorb(f: BudgetForcer, seg, o) -> None:
        toks = [int(t) for t in o.token_ids]
        f.push_segment(toks)
        # vLLM may leave the stop id out of token_ids; its stop_reason then names it.
        if (not f.done and o.finish_reason == "stop" and (not toks or toks[-1] not in seg.stops)
                and isinstance(getattr(o, "stop_reason", None), int)):
            f.push(o.stop_reason)
        if not f.done and len(f.ids) == len(seg.context):
            raise ProtocolError(f"the engine returned nothing for a segment (finish_reason={o.finish_reason!r}); "
                                "stopping instead of re-prompting forever")

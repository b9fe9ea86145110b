"""The optional vLLM backend of ``s1fast.generate``: s1's budget forcing on a vLLM engine by re-prompting,
driven by the same ``BudgetForcer`` state machines as the native engine (docs/forcing.md)."""
from __future__ import annotations

from typing import Sequence

from s1fast.forcing import BudgetForcer, ProtocolError


class VLLMBackend:
    """Budget forcing on a vLLM engine by re-prompting (s1's way), driven by the same forcers.

    ``llm`` is a ``vllm.LLM``; ``sampling_params`` the ``vllm.SamplingParams`` class (tests pass a stand-in).
    Thinking rounds set ``ignore_eos=True`` so that only the protocol's stop ids end a round."""

    def __init__(self, llm, sampling_params=None):
        if sampling_params is None:
            try:
                from vllm import SamplingParams as sampling_params  # noqa: N813
            except ImportError as e:
                raise ImportError("the vLLM backend was requested but vllm is not installed; install it on a "
                                  "GPU machine (`pip install vllm`) or use the native backend (--backend native)"
                                  ) from e
        self.llm = llm
        self.sampling_params = sampling_params

    @classmethod
    def from_pretrained(cls, model_dir: str, **engine_kwargs) -> "VLLMBackend":
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(f"--backend vllm needs vllm, which is not installed (model {model_dir}); "
                              "`pip install vllm` on a GPU machine, or use --backend native") from e
        return cls(LLM(model_dir, **engine_kwargs))

    def run(self, forcers: Sequence[BudgetForcer], *, temperature: float = 0.0, top_p: float = 1.0,
            seeds: Sequence[int] | None = None, vocab_limit: int | None = None) -> None:
        seeds = list(seeds) if seeds is not None else list(range(len(forcers)))
        allowed = list(range(vocab_limit)) if vocab_limit is not None else None
        rounds = 0
        active = [i for i, f in enumerate(forcers) if not f.done]
        while active:
            segs = [forcers[i].segment() for i in active]
            params = [self.params_for(s, seeds[i], rounds, temperature=temperature, top_p=top_p, allowed=allowed)
                      for i, s in zip(active, segs)]
            outs = self.llm.generate([{"prompt_token_ids": s.context} for s in segs], sampling_params=params,
                                     use_tqdm=False)
            for i, s, out in zip(active, segs, outs):
                self._absorb(forcers[i], s, out.outputs[0])
            rounds += 1
            active = [i for i in active if not forcers[i].done]

    def params_for(self, s, seed: int, round_index: int, *, temperature: float, top_p: float, allowed):
        """The sampling parameters of one segment (round ``round_index`` of a prompt seeded ``seed``)."""
        return self.sampling_params(
            max_tokens=s.max_new, min_tokens=s.min_new, stop_token_ids=sorted(s.stops), ignore_eos=True,
            temperature=temperature, top_p=top_p, seed=seed + 1_000_003 * round_index,
            skip_special_tokens=False, allowed_token_ids=allowed)

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

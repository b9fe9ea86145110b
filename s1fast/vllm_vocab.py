"""A vLLM (V1) logits processor masking the ids at and above a request's vocab limit (the model's padded
embedding rows, which have no token), for ``s1fast.vllm_backend``.

A request asks for it with ``SamplingParams(extra_args={ARG: limit})``: one int, where vLLM's own
``allowed_token_ids`` costs a 151,665-id list per request (copied, checked id by id, sent to the engine
process, written into a vocabulary-wide mask row). Each step sets ``logits[rows, limit:] = -inf``, the native
engine's mask (``s1fast.sampling.pick_tokens``), before penalties and sampling (a -inf logit stays -inf under
them). vLLM builds it inside its engine from ``LLM(logits_processors=[VocabLimit])``; this module imports vLLM
(``vllm/v1/sample/logits_processor/interface.py``): import it only where vLLM is installed.
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from s1fast.sampling import VLLM_VOCAB_LIMIT_KEY as ARG


def request_limit(params) -> int | None:
    """The vocab limit a request's SamplingParams ask for, or None."""
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(ARG)


class VocabLimit(LogitsProcessor):
    """Per batch row, the limit of the request in it (rows come, go and move as vLLM says)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.limits: dict[int, int] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        limit = request_limit(sampling_params)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"extra_args[{ARG!r}] must be a positive int, got {limit!r}")

    def is_argmax_invariant(self) -> bool:
        return False    # masking changes the argmax: applied to greedy rows too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.limits.pop(index, None)
        for index, params, *_ in batch_update.added:   # (index, params, [prompt ids,] output ids)
            limit = request_limit(params)
            if limit is None:
                self.limits.pop(index, None)
            else:
                self.limits[index] = int(limit)
        for a, b, direction in batch_update.moved:
            la, lb = self.limits.pop(a, None), self.limits.pop(b, None)
            if la is not None:
                self.limits[b] = la
            if direction == MoveDirectionality.SWAP and lb is not None:
                self.limits[a] = lb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows_by_limit: dict[int, list[int]] = {}
        for row, limit in self.limits.items():
            if limit < logits.shape[-1]:
                rows_by_limit.setdefault(limit, []).append(row)
        for limit, rows in rows_by_limit.items():
            if len(rows) == logits.shape[0]:
                logits[:, limit:] = float("-inf")
            else:
                logits[torch.tensor(rows, device=logits.device), limit:] = float("-inf")
        return logits

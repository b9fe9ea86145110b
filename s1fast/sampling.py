"""Picking the next token: penalties, then the greedy or seeded top-p draw; and the logprobs a server reports.

``pick_tokens`` is the one sampler of the native engine (``s1fast.generate`` and the server's continuous
batcher). Penalties are per row (rows of one batch may differ), with vLLM's definitions: ``repetition``
(HF/CTRL: a positive logit is divided by it, a negative one multiplied) over the prompt's and the output's
ids, ``frequency`` (times the id's count) and ``presence`` (once) over the output's ids only; the output is
everything after the prompt. A row's counts live in its ``PenaltyState``, updated with each step's new ids
(not rebuilt from the whole sequence: at a 32K thinking budget that was the step's cost). ``token_logprobs`` gives the model's raw log-softmax (temperature 1, no
penalty, no top-p: vLLM's default ``logprobs_mode``), only for the rows that ask. Details: docs/serving.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

# Below this temperature a draw is the argmax, as in vLLM (its _SAMPLING_EPS): logits / 1e-38 overflow to inf
# and the softmax to NaN, which drew the last id of the vocabulary every time.
GREEDY_BELOW = 1e-5
# the key of vLLM's SamplingParams.extra_args that carries the vocabulary limit to s1fast.vllm_vocab.VocabLimit
# (the same ids >= len(tokenizer) that pick_tokens masks); here so that vllm_backend and vllm_vocab share it
VLLM_VOCAB_LIMIT_KEY = "s1fast_vocab_limit"
LOGPROB_FLOOR = -9999.0   # reported logprobs are clamped here, as vLLM does (-inf is not JSON)


@dataclass(frozen=True)
class Penalties:
    """One row's penalties; the defaults change nothing (and cost nothing: ``pick_tokens`` skips them)."""
    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0

    @property
    def active(self) -> bool:
        return self != Penalties()


class PenaltyState:
    """One row's penalties and the counts they read, kept from step to step: the output's count per id and
    the ids the penalties touch (the output's, and the prompt's for ``repetition``), built at the row's first
    pick, then updated with only the ids added to the row since the last pick (picked or forced alike).
    ``apply`` reads and writes only the touched ids: a step costs O(distinct ids + new ids), not O(sequence)
    nor O(vocabulary). One per row (request); ``ids`` only grows between picks (a shorter one starts over)."""

    def __init__(self, penalties: Penalties, prompt_len: int):
        self.penalties, self.prompt_len = penalties, prompt_len
        self.counts: torch.Tensor | None = None    # [V] float32 (exact below 2**24): times each id is in the output
        self.seen: torch.Tensor | None = None      # [V] bool: the id is in ``touched``
        self.touched: torch.Tensor | None = None   # [k] int64: each id the penalties change, once, first seen first
        self.counted = prompt_len                  # ids[:counted] are in the state

    def sync(self, ids: Sequence[int], vocab: int, device: torch.device) -> None:
        """Count the ids past the last sync (ids >= vocab are no token of the logits and are skipped)."""
        if self.counts is None or self.counts.shape[0] != vocab or self.counts.device != device \
                or len(ids) < self.counted:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.touched, self.counted = torch.zeros(0, dtype=torch.long, device=device), self.prompt_len
            if self.penalties.repetition != 1.0:
                self._touch(_ids_below(ids[:self.prompt_len], vocab, device))
        if len(ids) > self.counted:
            new = _ids_below(ids[self.counted:], vocab, device)
            self.counts.index_add_(0, new, torch.ones(new.shape, dtype=self.counts.dtype, device=device))
            self._touch(new)
            self.counted = len(ids)

    def _touch(self, new: torch.Tensor) -> None:
        fresh = new.unique()
        fresh = fresh[~self.seen[fresh]]
        if len(fresh):
            self.seen[fresh] = True
            self.touched = torch.cat([self.touched, fresh])

    def apply(self, logits: torch.Tensor, ids: Sequence[int]) -> None:
        """Penalize one row of logits [V] in place; ``ids``: the row's whole sequence so far (the prompt, then
        the output: thinking, forced text, answer). The same float operations, id by id, as over the whole
        vocabulary (an untouched id's logit would only lose 0)."""
        p = self.penalties
        self.sync(ids, logits.shape[-1], logits.device)
        at = self.touched
        x, counts = logits[at], self.counts[at].to(logits.dtype)
        if p.repetition != 1.0:
            x = torch.where(x > 0, x / p.repetition, x * p.repetition)
        if p.frequency:
            x -= p.frequency * counts
        if p.presence:
            x -= p.presence * (counts > 0).to(logits.dtype)
        logits[at] = x


def _ids_below(ids: Sequence[int], vocab: int, device: torch.device) -> torch.Tensor:
    t = torch.tensor(list(ids), dtype=torch.long, device=device)
    return t[t < vocab]


# (a row's penalty state, the row's ids so far), or None for no penalty
RowPenalty = tuple[PenaltyState, Sequence[int]] | None


def new_penalty_state(p: Penalties, prompt_len: int) -> PenaltyState | None:
    """The state a row keeps for ``pick_tokens``, or None when ``p`` changes nothing."""
    return PenaltyState(p, prompt_len) if p.active else None


def pick_tokens(logits: torch.Tensor, *, temperature: float, top_p: float, vocab_limit: int,
                banned: Sequence[Iterable[int] | None], generators: Sequence[torch.Generator | None],
                penalties: Sequence[RowPenalty] | None = None) -> list[int]:
    """Next token per row of ``logits`` [n, V]: mask ids >= vocab_limit and each row's banned ids, apply each
    row's penalties, then argmax (temperature below ``GREEDY_BELOW``) or a seeded draw from the top-p nucleus
    of softmax(logits / temperature).

    The draw inverts each row's cumulative distribution (float64, so no tail mass is lost to rounding) at one
    uniform from the row's own generator: one batched pass over the vocabulary for all rows, where a
    per-row ``torch.multinomial`` costs a vocabulary pass each. A token of probability 0 is never drawn."""
    logits = logits.float().clone()
    if vocab_limit < logits.shape[-1]:
        logits[:, vocab_limit:] = float("-inf")
    for i, ban in enumerate(banned):
        if ban:
            logits[i, list(ban)] = float("-inf")
    for i, row in enumerate(penalties or ()):
        if row is not None and row[0].penalties.active:
            row[0].apply(logits[i], row[1])
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop[:, 0] = False   # the top token always stays (a top_p under float32's range rounds to 0: it dropped all)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    cdf = probs.double().cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, device=g.device, dtype=torch.float64) for g in generators])
    # the smallest i with cdf_i >= x, for x in (0, total]: then cdf_{i-1} < x <= cdf_i, so p_i > 0
    x = (1.0 - u.to(cdf.device)) * cdf[:, -1]
    return torch.searchsorted(cdf, x[:, None]).squeeze(1).clamp(max=cdf.shape[-1] - 1).tolist()


# (token id, its logprob, ((id, logprob) of the top k, best first))
TokenLogprob = tuple[int, float, tuple[tuple[int, float], ...]]


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: Sequence[int], *,
                   vocab_limit: int) -> list[TokenLogprob]:
    """For row i of ``logits`` [n, V] (the model's raw logits): the logprob of ``tokens[i]`` and the ``top[i]``
    most likely ids, from a float64 log-softmax over the ids below ``vocab_limit``; clamped at LOGPROB_FLOOR.
    Call it with only the rows that asked: it builds an [n, V] float64 tensor for them."""
    lsm = logits.double()
    if vocab_limit < lsm.shape[-1]:
        lsm = lsm[:, :vocab_limit]
    lsm = torch.log_softmax(lsm, dim=-1).clamp(min=LOGPROB_FLOOR)
    chosen = lsm.gather(1, torch.tensor(list(tokens), device=lsm.device)[:, None]).squeeze(1).tolist()
    k = max(top, default=0)
    best_lp, best_id = lsm.topk(k, dim=-1) if k else (lsm[:, :0], lsm[:, :0].long())
    best_lp, best_id = best_lp.tolist(), best_id.tolist()
    return [(int(t), chosen[i], tuple(zip(best_id[i][:top[i]], best_lp[i][:top[i]])))
            for i, t in enumerate(tokens)]

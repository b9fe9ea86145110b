"""Logprobs in OpenAI's two shapes, from the engine's (token id, logprob, top) entries of the answer tokens.

Chat: ``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``. Completions:
``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``, whose dicts hold the top k and the
sampled token (OpenAI's "up to logprobs + 1"). A token's text is its own decode, its bytes that text's UTF-8
(a token holding part of a character reads as U+FFFD), as vLLM does. Only answer tokens carry logprobs (they
are the ``content``); what the thinking and the forced text do not get: docs/serving.md.
"""
from __future__ import annotations

from typing import Sequence

from s1fast.sampling import TokenLogprob


class Logprobs:
    """One choice's logprobs: ``take`` formats new entries (a chunk's, or all of them) for ``kind``."""

    def __init__(self, tokenizer, kind: str):
        self.tok, self.kind, self.offset = tokenizer, kind, 0
        self.entries: list[TokenLogprob] = []

    def text(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    def add(self, entries: Sequence[TokenLogprob]) -> None:
        self.entries.extend(entries)

    def take(self, entries: Sequence[TokenLogprob]) -> dict:
        if self.kind == "chat":
            return {"content": [self._chat(t, lp, top) for t, lp, top in entries], "refusal": None}
        tokens = [self.text(t) for t, _, _ in entries]
        offsets = []
        for s in tokens:
            offsets.append(self.offset)
            self.offset += len(s)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{**{self.text(i): v for i, v in top}, self.text(t): lp} for t, lp, top in entries],
                "text_offset": offsets}

    def _chat(self, token_id: int, logprob: float, top) -> dict:
        def one(i: int, v: float) -> dict:
            s = self.text(i)
            return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}
        return {**one(token_id, logprob), "top_logprobs": [one(i, v) for i, v in top]}

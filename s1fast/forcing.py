"""Budget forcing (s1, arXiv 2501.19393) as a backend-independent state machine.

One :class:`BudgetForcer` follows one prompt through s1's protocol, token by token: a backend produces the
next token id, the forcer decides what it means and which tokens the protocol forces (the think start,
"Wait" extensions instead of an early stop, the cap at ``max_thinking_tokens``, the answer start). The
native backend pushes one token at a time; a re-prompting engine (vLLM) asks for a :meth:`segment`.
The protocol, its token ids and the choices s1's scripts leave open: docs/forcing.md. Usage::

    tokens = ForcingTokens.from_tokenizer(tokenizer, extension="Wait")
    f = BudgetForcer(prompt_ids, tokens, max_thinking_tokens=1000, num_wait=2, max_total_tokens=32768)
    while not f.done:
        f.push(next_token(f.ids, forbid=f.stops if f.suppress_stop else ()))
    f.result()   # thinking/answer ids, thinking_tokens, waits, capped
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

THINK, ANSWER, DONE = "think", "answer", "done"

# Room s1's "auto" budget leaves for the answer phase (lm-evaluation-harness fork, vllm_causallms.py).
AUTO_ANSWER_ROOM = 100


class ProtocolError(RuntimeError):
    """A backend pushed a token the protocol forbids at that point (a bug in the backend)."""


@dataclass(frozen=True)
class ForcingTokens:
    """The token ids of the protocol's fixed strings, and how to decode thinking ids to text."""
    think_start: tuple[int, ...] = (151644, 26865)                      # <|im_start|>think
    think_end: tuple[int, ...] = (151644, 9217)                         # <|im_start|>answer
    cap_end: tuple[int, ...] = (151644, 9217, 198, 19357, 21806, 25)    # ... + \nFinal Answer:
    newline: tuple[int, ...] = (198,)
    extension: tuple[int, ...] = (14190,)                               # Wait
    thinking_stops: frozenset[int] = frozenset({151644, 151645})        # <|im_start|>, <|im_end|>
    answer_stops: frozenset[int] = frozenset({151645})                  # <|im_end|>
    # Text of a list of ids; used once per capped prompt to see whether the thinking ends in "\n".
    decode: Callable[[Sequence[int]], str] | None = field(default=None, compare=False)

    @classmethod
    def from_tokenizer(cls, tokenizer, extension: str = "Wait") -> "ForcingTokens":
        def enc(text: str) -> tuple[int, ...]:
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise ValueError(f"the tokenizer encodes {text!r} to no tokens; budget forcing needs it")
            return ids

        def one(text: str) -> int:
            ids = enc(text)
            if len(ids) != 1:
                raise ValueError(f"{text!r} must be a single token for budget forcing (a stop id), got {ids}; "
                                 "is this a Qwen2.5-style chat tokenizer?")
            return ids[0]

        if not extension:
            raise ValueError("the extension string (e.g. 'Wait', 'Hmm', 'Alternatively') must not be empty")
        im_start, im_end = one("<|im_start|>"), one("<|im_end|>")
        return cls(think_start=enc("<|im_start|>think"), think_end=enc("<|im_start|>answer"),
                   cap_end=enc("<|im_start|>answer\nFinal Answer:"), newline=enc("\n"),
                   extension=enc(extension), thinking_stops=frozenset({im_start, im_end}),
                   answer_stops=frozenset({im_end}),
                   decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False))

    def ends_with_newline(self, ids: Sequence[int]) -> bool:
        if not ids:
            return False
        if self.decode is None:  # no tokenizer: only the plain newline token counts
            return ids[-1] in self.newline
        return self.decode(ids[-1:]).endswith("\n")


def auto_max_thinking(prompt_len: int, max_total_tokens: int, tokens: ForcingTokens,
                      answer_room: int = AUTO_ANSWER_ROOM) -> int:
    """s1's ``max_tokens_thinking="auto"``: what the context leaves after the forcing text and the answer's
    room (``max_answer_tokens`` where one is given, else 100 tokens)."""
    return max_total_tokens - prompt_len - len(tokens.think_start) - len(tokens.cap_end) - answer_room


@dataclass(frozen=True)
class Segment:
    """One re-prompting request: continue ``context`` by at most ``max_new`` tokens, at least ``min_new``
    before any of ``stops`` may end it (vLLM: ``max_tokens``, ``min_tokens``, ``stop_token_ids``)."""
    context: list[int]
    max_new: int
    min_new: int
    stops: frozenset[int]
    phase: str


class BudgetForcer:
    """s1's budget-forcing protocol for one prompt. Push generated tokens; read ``ids`` for the sequence."""

    def __init__(self, prompt_ids: Sequence[int], tokens: ForcingTokens, *,
                 max_thinking_tokens: int | str = "auto", min_thinking_tokens: int = 0, num_wait: int = 0,
                 max_answer_tokens: int | None = None, max_total_tokens: int = 32768):
        if not prompt_ids:
            raise ValueError("empty prompt: budget forcing needs the chat-formatted prompt ids")
        if num_wait < 0 or min_thinking_tokens < 0:
            raise ValueError(f"num_wait ({num_wait}) and min_thinking_tokens ({min_thinking_tokens}) must be >= 0")
        self.tokens = tokens
        self.prompt_len = len(prompt_ids)
        # with an answer budget, the bound keeps exactly its room, plus the newline forced before the cap
        # when thinking stops mid-line
        bound = auto_max_thinking(self.prompt_len, max_total_tokens, tokens,
                                  AUTO_ANSWER_ROOM if max_answer_tokens is None else max_answer_tokens + 1)
        if max_thinking_tokens == "auto":
            max_thinking = bound
        elif isinstance(max_thinking_tokens, int) and max_thinking_tokens >= 0:
            max_thinking = min(max_thinking_tokens, bound)
        else:
            raise ValueError(f"max_thinking_tokens must be an int >= 0 or 'auto', got {max_thinking_tokens!r}")
        if max_thinking < 0:
            raise ValueError(f"the prompt ({self.prompt_len} tokens) leaves no room to think within "
                             f"max_total_tokens={max_total_tokens}; raise it or shorten the prompt")
        self.max_thinking_tokens = max_thinking
        self.min_thinking_tokens = min_thinking_tokens
        self.num_wait = num_wait
        self.max_total_tokens = max_total_tokens
        self._max_answer = max_answer_tokens
        # s1 runs every thinking round with min_tokens=1 when it ignores the end of thinking, so the
        # token right after an extension cannot end the thinking again.
        self.round_min = 1 if (num_wait > 0 or min_thinking_tokens > 0) else 0

        self.ids: list[int] = list(prompt_ids) + list(tokens.think_start)
        self.thinking: list[int] = []
        self.answer: list[int] = []
        self.forced_end: list[int] = []   # the ids appended when thinking ended ("\n" + cap text, or think_end)
        self.waits = 0
        self.capped = False
        self.stopped_by: int | None = None  # the answer's stop id, if it stopped on one
        self.phase = THINK
        self.round_tokens = 0
        self.max_answer_tokens = 0
        if self.max_thinking_tokens == 0:
            self._end_thinking(capped=True)

    # ---- what the backend reads -------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase == DONE

    @property
    def stops(self) -> frozenset[int]:
        return self.tokens.thinking_stops if self.phase == THINK else self.tokens.answer_stops

    @property
    def suppress_stop(self) -> bool:
        """True while the next token must not be a stop id (mask them before sampling)."""
        return self.phase == THINK and self.round_tokens < self.round_min

    @property
    def max_len(self) -> int:
        """An upper bound on ``len(ids)`` at the end, for sizing a KV cache."""
        end = max(len(self.tokens.think_end), len(self.tokens.newline) + len(self.tokens.cap_end))
        answer = self._max_answer if self._max_answer is not None else self.max_total_tokens
        return min(self.prompt_len + len(self.tokens.think_start) + self.max_thinking_tokens + end + answer,
                   self.max_total_tokens)

    def remaining(self) -> int:
        """Tokens the current phase may still generate."""
        if self.phase == THINK:
            return self.max_thinking_tokens - len(self.thinking)
        if self.phase == ANSWER:
            return self.max_answer_tokens - len(self.answer)
        return 0

    def segment(self) -> Segment:
        """The next re-prompting request (all tokens up to the next protocol decision)."""
        if self.done:
            raise ProtocolError("segment() called on a finished forcer")
        return Segment(list(self.ids), self.remaining(), max(0, self.round_min - self.round_tokens)
                       if self.phase == THINK else 0, self.stops, self.phase)

    # ---- what the backend does --------------------------------------------------------------------
    def push(self, token: int) -> None:
        """Feed one generated token; the forcer appends it and whatever the protocol forces after it."""
        token = int(token)
        if self.phase == THINK:
            if token in self.tokens.thinking_stops:
                if self.suppress_stop:
                    raise ProtocolError(f"stop id {token} generated at thinking token {len(self.thinking)} while "
                                        f"stops were suppressed (round token {self.round_tokens} < {self.round_min});"
                                        " the backend must mask stop ids when suppress_stop is true")
                if self.waits < self.num_wait or len(self.thinking) < self.min_thinking_tokens:
                    self._extend()
                else:
                    self._end_thinking(capped=False)
                return
            self._think(token)
            self.round_tokens += 1
            if len(self.thinking) >= self.max_thinking_tokens:
                self._end_thinking(capped=True)
        elif self.phase == ANSWER:
            self.ids.append(token)
            if token in self.tokens.answer_stops:
                self.stopped_by = token
                self.phase = DONE
                return
            self.answer.append(token)
            if len(self.answer) >= self.max_answer_tokens:
                self.phase = DONE
        else:
            raise ProtocolError(f"token {token} pushed after the answer ended")

    def push_segment(self, tokens: Sequence[int]) -> None:
        """Feed one engine segment. A segment ends at the protocol's next decision (a stop, the cap, the
        end of the answer); tokens after that point mean the engine ignored its request: an error."""
        if len(tokens) > self.remaining() + 1:   # + 1: a trailing stop id is not counted by max_tokens
            raise ProtocolError(f"{len(tokens)} tokens for a segment of at most {self.remaining()} "
                                f"(phase {self.phase}); the engine ignored max_tokens")
        for i, t in enumerate(tokens):
            before = (self.phase, self.waits)
            self.push(t)
            if (self.phase, self.waits) != before and i != len(tokens) - 1:
                raise ProtocolError(f"{len(tokens) - 1 - i} tokens follow a protocol decision (phase {before[0]} "
                                    f"-> {self.phase}, waits {before[1]} -> {self.waits}) in one segment; "
                                    "the engine ignored its stop ids")

    def result(self) -> dict:
        return {"thinking_ids": list(self.thinking), "answer_ids": list(self.answer),
                "forced_end_ids": list(self.forced_end), "thinking_tokens": len(self.thinking),
                "answer_tokens": len(self.answer), "waits": self.waits, "capped": self.capped,
                "max_thinking_tokens": self.max_thinking_tokens, "prompt_tokens": self.prompt_len,
                "finished": self.stopped_by is not None}

    # ---- the protocol's moves ---------------------------------------------------------------------
    def _think(self, token: int) -> None:
        self.thinking.append(token)
        self.ids.append(token)

    def _extend(self) -> None:
        # The stop token is dropped (never appended); the extension is cut to the budget left.
        room = self.max_thinking_tokens - len(self.thinking)
        for t in self.tokens.extension[:room]:
            self._think(t)
        self.waits += 1
        self.round_tokens = 0
        if len(self.thinking) >= self.max_thinking_tokens:
            self._end_thinking(capped=True)

    def _end_thinking(self, capped: bool) -> None:
        if capped:
            tail = [] if self.tokens.ends_with_newline(self.thinking) else list(self.tokens.newline)
            end = tail + list(self.tokens.cap_end)
        else:
            end = list(self.tokens.think_end)
        self.capped = capped
        self.forced_end = end
        self.ids.extend(end)
        self.phase = ANSWER
        room = self.max_total_tokens - len(self.ids)
        self.max_answer_tokens = max(0, room if self._max_answer is None else min(self._max_answer, room))
        if self.max_answer_tokens == 0:
            self.phase = DONE

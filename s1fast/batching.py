"""Continuous batching of budget-forced requests on s1fast's KV-cache engine (the server's scheduler).

A :class:`ContinuousBatcher` owns one KV cache of ``slots`` rows and one worker thread. Requests (one
:class:`~s1fast.forcing.BudgetForcer` each) wait in a queue and take a free row between decode steps; a row
is freed as soon as its forcer is done or its request is cancelled. Each step prefills joining prompts by
chunks, feeds every other busy row in one batched call, and picks tokens with ``sampling.pick_tokens``, so a
request's tokens are those of ``s1fast.generate`` for the same prompt, settings and seed. After every step
each changed request gets an :class:`Update` through its callback, on the worker thread (callbacks must be
quick and thread-safe; a request with nothing to generate gets its one update in ``submit``). The step in detail: docs/forcing.md, "Continuous batching".
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from s1fast.forcing import ANSWER, BudgetForcer
from s1fast.sampling import Penalties, PenaltyState, TokenLogprob, new_penalty_state, pick_tokens, token_logprobs

BATCH_FEED = 8   # a row with more pending ids than this is prefilled alone


@dataclass(frozen=True)
class Update:
    """New ids since the last update; ``result`` (``BudgetForcer.result()``) once done; ``error`` on failure;
    ``logprobs``: one entry per new answer id when the request asked for them."""
    thinking: tuple[int, ...] = ()
    answer: tuple[int, ...] = ()
    done: bool = False
    result: dict | None = None
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(eq=False)
class Ticket:
    forcer: BudgetForcer
    on_update: Callable[[Update], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    penalties: Penalties = Penalties()
    logprobs: int | None = None        # top logprobs per answer token (0: the token's own only); None: none
    cancelled: bool = False
    row: int = -1
    fed: int = 0
    sent: tuple[int, int, int] = (0, 0, 0)
    answer_logprobs: list[TokenLogprob] = field(default_factory=list, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)
    penalty_state: PenaltyState | None = field(default=None, repr=False)   # the request's own: rows are reused


class Scheduler:
    """A queue of tickets and one worker thread running ``_loop``; subclasses schedule the work."""
    unsupported: dict[str, str] = {}   # request option -> why this engine cannot apply it (submit refuses it)

    def __init__(self, *, max_len: int, device=None, name: str = "s1fast-scheduler"):
        self.max_len, self.device = max_len, device or torch.device("cpu")
        self.waiting: deque[Ticket] = deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def refused(self, penalties: Penalties, logprobs: int | None) -> list[str]:
        """The request options asked for (as API field names) that this engine cannot apply."""
        asked = (("logprobs", logprobs is not None), ("presence_penalty", penalties.presence != 0),
                 ("frequency_penalty", penalties.frequency != 0), ("repetition_penalty", penalties.repetition != 1))
        return [k for k, on in asked if on and k in self.unsupported]

    def submit(self, forcer: BudgetForcer, on_update: Callable[[Update], None], *, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, penalties: Penalties = Penalties(),
               logprobs: int | None = None) -> Ticket:
        if refused := self.refused(penalties, logprobs):
            raise NotImplementedError(f"{type(self).__name__} cannot apply {', '.join(refused)}")
        if forcer.max_len > self.max_len:
            raise ValueError(f"the request needs up to {forcer.max_len} positions; this server's rows hold "
                             f"{self.max_len} (--max-total-tokens)")
        t = Ticket(forcer, on_update, temperature, top_p, seed, penalties, logprobs)
        t.penalty_state = new_penalty_state(penalties, forcer.prompt_len)
        if temperature > 0:
            t.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        with self.cv:
            if self.stopping:
                raise RuntimeError("the server is shutting down")
            if forcer.done:     # nothing to generate (zero budgets): answered now; a step would push into it
                self.report(t)
                return t
            self.waiting.append(t)
            self.cv.notify()
        return t

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request (its row is freed before the next step); no further updates are sent."""
        with self.cv:
            ticket.cancelled = True
            self.cv.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then end the worker thread."""
        with self.cv:
            self.stopping = True
            self.cv.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @staticmethod
    def report(t: Ticket) -> None:
        """Send ``t`` its new ids (and its result once done), unless it was cancelled."""
        f = t.forcer
        if t.cancelled:
            return
        upd = Update(tuple(f.thinking[t.sent[0]:]), tuple(f.answer[t.sent[1]:]), f.done,
                     f.result() if f.done else None, logprobs=tuple(t.answer_logprobs[t.sent[2]:]))
        t.sent = (len(f.thinking), len(f.answer), len(t.answer_logprobs))
        if upd.thinking or upd.answer or upd.done:
            t.on_update(upd)

    def _loop(self) -> None:
        raise NotImplementedError


class ContinuousBatcher(Scheduler):
    """Serve many forcers at once on ``model`` (s1fast's model interface: new_kv_cache, decode)."""

    def __init__(self, model, *, vocab_limit: int, slots: int = 16, max_len: int = 4096,
                 prefill_chunk: int = 256):
        if slots < 1 or max_len < 1 or prefill_chunk < 1:
            raise ValueError(f"slots ({slots}), max_len ({max_len}) and prefill_chunk ({prefill_chunk}) must be >= 1")
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
        super().__init__(max_len=max_len, device=device, name="s1fast-batcher")
        self.model, self.vocab_limit, self.slots, self.prefill_chunk = model, vocab_limit, slots, prefill_chunk
        self.cache = model.new_kv_cache(slots, max_len, device=self.device)
        self.rows: list[Ticket | None] = [None] * slots
        self.steps = 0

    @property
    def busy(self) -> int:
        """Requests admitted or waiting."""
        return sum(r is not None for r in self.rows) + len(self.waiting)

    # ---- the worker -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                self._free_cancelled()
                self._admit()
                while not any(self.rows) and not self.waiting:
                    if self.stopping:
                        return
                    self.cv.wait()
                    self._free_cancelled()
                    self._admit()
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - the failure goes to the requests, the server keeps running
                self._fail_all(f"{type(e).__name__}: {e}")

    def _free_cancelled(self) -> None:
        self.waiting = deque(t for t in self.waiting if not t.cancelled)
        for r, t in enumerate(self.rows):
            if t is not None and t.cancelled:
                self.rows[r] = None

    def _admit(self) -> None:
        for r in range(self.slots):
            if not self.waiting:
                return
            if self.rows[r] is None:
                t = self.waiting.popleft()
                t.row, t.fed = r, 0
                self.cache.seqlens[r] = 0
                self.rows[r] = t

    def _feed(self, items: list[tuple[Ticket, list[int]]]) -> list[tuple[Ticket, torch.Tensor]]:
        """One ``decode`` call feeding each ticket its ids, on the cache rows lo..hi that they span;
        returns (ticket, logits of its last position) for the tickets whose sequence is now all cached."""
        lo, hi = min(t.row for t, _ in items), max(t.row for t, _ in items) + 1
        x = torch.zeros(hi - lo, max(len(ids) for _, ids in items), dtype=torch.long)
        lengths = [0] * (hi - lo)
        for t, ids in items:
            x[t.row - lo, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            lengths[t.row - lo] = len(ids)
        logits = self.model.decode(x.to(self.device), self._view(lo, hi),
                                   lengths=torch.tensor(lengths, device=self.device), last_only=True)
        ready = []
        for t, ids in items:
            t.fed += len(ids)
            if t.fed == len(t.forcer.ids):
                ready.append((t, logits[t.row - lo]))
        return ready

    def _view(self, lo: int, hi: int):
        c = self.cache
        return type(c)(c.k[:, lo:hi], c.v[:, lo:hi], c.seqlens[lo:hi])

    def _step(self) -> None:
        busy = [t for t in self.rows if t is not None]
        # Prefill: rows with a long backlog, one chunk each, within a budget of prefill_chunk tokens a step.
        prefill, used = [], 0
        for t in busy:
            n = min(len(t.forcer.ids) - t.fed, self.prefill_chunk)
            if n > BATCH_FEED and (not prefill or used + n <= self.prefill_chunk):
                prefill.append((t, t.forcer.ids[t.fed:t.fed + n]))
                used += n
        chosen = {id(t) for t, _ in prefill}
        decode = [(t, t.forcer.ids[t.fed:]) for t in busy
                  if id(t) not in chosen and 0 < len(t.forcer.ids) - t.fed <= BATCH_FEED]
        ready = (self._feed(prefill) if prefill else []) + (self._feed(decode) if decode else [])
        self.steps += 1
        # Group by sampling settings: pick_tokens takes one temperature/top_p per call (penalties are per row).
        groups: dict[tuple[float, float], list[tuple[Ticket, torch.Tensor]]] = {}
        for t, lg in ready:
            groups.setdefault((t.temperature, t.top_p), []).append((t, lg))
        for (temp, top_p), items in groups.items():
            toks = pick_tokens(torch.stack([lg for _, lg in items]), temperature=temp, top_p=top_p,
                               vocab_limit=self.vocab_limit,
                               banned=[t.forcer.stops if t.forcer.suppress_stop else None for t, _ in items],
                               generators=[t.generator for t, _ in items],
                               penalties=[(t.penalty_state, t.forcer.ids) if t.penalty_state else None
                                          for t, _ in items])
            self._push(items, toks)
        with self.cv:
            for t, _ in ready:
                self.report(t)
                if t.forcer.done and not t.cancelled:
                    self.rows[t.row] = None

    def _push(self, items: list[tuple[Ticket, torch.Tensor]], toks: list[int]) -> None:
        """Each ticket's forcer takes its token; a ticket that asked for logprobs keeps those of its answer ids."""
        want = [(i, t) for i, (t, _) in enumerate(items) if t.logprobs is not None and t.forcer.phase == ANSWER]
        lps = token_logprobs(torch.stack([items[i][1] for i, _ in want]), [toks[i] for i, _ in want],
                             [t.logprobs for _, t in want], vocab_limit=self.vocab_limit) if want else []
        for (t, _), tok in zip(items, toks):
            t.forcer.push(tok)
        for (i, t), lp in zip(want, lps):
            if len(t.answer_logprobs) < len(t.forcer.answer):     # the token joined the answer (not a stop id)
                t.answer_logprobs.append(lp)

    def _fail_all(self, message: str) -> None:
        with self.cv:
            victims = [t for t in self.rows if t is not None]
            self.rows = [None] * self.slots
        for t in victims:
            if not t.cancelled:
                t.on_update(Update(done=True, error=message))


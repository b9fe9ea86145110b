"""The server's vLLM engine: budget forcing by re-prompting rounds, with requests joining between rounds.

Same interface as :class:`s1fast.batching.ContinuousBatcher` (submit, cancel, busy, start, stop) and the
same forcers. Each round sends one :class:`~s1fast.forcing.Segment` per running request to
``vllm.LLM.generate`` (vLLM batches them itself) through ``generate.VLLMBackend``, so the sampling
parameters and the seeds (request seed + 1_000_003 x round) are those of ``s1fast.generate --backend vllm``.
Streaming is therefore per segment, not per token. Needs vLLM and a GPU; the CLI refuses it otherwise.
"""
from __future__ import annotations

import threading
from collections import deque

from s1fast.batching import Ticket, Update
from s1fast.generate import VLLMBackend


class VLLMBatcher:
    def __init__(self, backend: VLLMBackend, *, vocab_limit: int, max_len: int):
        self.backend, self.vocab_limit, self.max_len = backend, vocab_limit, max_len
        self.allowed = list(range(vocab_limit))
        self.running: list[Ticket] = []
        self.rounds: dict[int, int] = {}
        self.waiting: deque[Ticket] = deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="s1fast-vllm", daemon=True)

    def start(self) -> "VLLMBatcher":
        self.thread.start()
        return self

    def submit(self, forcer, on_update, *, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Ticket:
        if forcer.max_len > self.max_len:
            raise ValueError(f"the request needs up to {forcer.max_len} positions; this server allows "
                             f"{self.max_len} (--max-total-tokens)")
        t = Ticket(forcer, on_update, temperature, top_p, seed)
        with self.cv:
            if self.stopping:
                raise RuntimeError("the engine is shutting down")
            self.waiting.append(t)
            self.cv.notify()
        return t

    def cancel(self, ticket: Ticket) -> None:
        with self.cv:
            ticket.cancelled = True

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.waiting)

    def stop(self, timeout: float | None = None) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.running and not self.waiting:
                    if self.stopping:
                        return
                    self.cv.wait()
                self.running = [t for t in self.running + list(self.waiting) if not t.cancelled]
                self.waiting.clear()
            if not self.running:
                continue
            try:
                self._round()
            except Exception as e:  # noqa: BLE001 - reported to the requests; the server keeps serving
                for t in self.running:
                    t.on_update(Update(done=True, error=f"{type(e).__name__}: {e}"))
                self.running = []

    def _round(self) -> None:
        segs = [t.forcer.segment() for t in self.running]
        params = [self.backend.params_for(s, t.seed, t.row + 1, temperature=t.temperature, top_p=t.top_p,
                                          allowed=self.allowed) for t, s in zip(self.running, segs)]
        outs = self.backend.llm.generate([{"prompt_token_ids": s.context} for s in segs], sampling_params=params,
                                         use_tqdm=False)
        for t, s, out in zip(self.running, segs, outs):
            t.row += 1                       # the round index of this request (rows mean nothing here)
            self.backend._absorb(t.forcer, s, out.outputs[0])
            f = t.forcer
            if not t.cancelled:
                upd = Update(tuple(f.thinking[t.sent[0]:]), tuple(f.answer[t.sent[1]:]), f.done,
                             f.result() if f.done else None)
                t.sent = (len(f.thinking), len(f.answer))
                t.on_update(upd)
        self.running = [t for t in self.running if not t.forcer.done]

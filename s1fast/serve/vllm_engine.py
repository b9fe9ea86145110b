"""The server's vLLM engine: budget forcing by re-prompting rounds, with requests joining between rounds.

Same interface as :class:`s1fast.batching.ContinuousBatcher` (submit, cancel, busy, start, stop) and the
same forcers. Each round sends one :class:`~s1fast.forcing.Segment` per running request to
``vllm.LLM.generate`` (vLLM batches them itself) through ``generate.VLLMBackend``, so the sampling
parameters and the seeds (request seed + 1_000_003 x round) are those of ``s1fast.generate --backend vllm``.
Streaming is therefore per segment, not per token. Needs vLLM and a GPU; the CLI refuses it otherwise.
"""
from __future__ import annotations

from s1fast.batching import Scheduler, Ticket, Update
from s1fast.vllm_backend import UNSUPPORTED_PENALTIES, VLLMBackend


class VLLMBatcher(Scheduler):
    # the native engine only (the app answers 400); the repetition penalty is applied (see vllm_backend)
    unsupported = {"logprobs": "the vllm adapter does not report them", **UNSUPPORTED_PENALTIES}

    def __init__(self, backend: VLLMBackend, *, vocab_limit: int, max_len: int):
        super().__init__(max_len=max_len, name="s1fast-vllm")
        self.backend, self.vocab_limit = backend, vocab_limit
        self.running: list[Ticket] = []

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.waiting)

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
                                          vocab_limit=self.vocab_limit, repetition_penalty=t.penalties.repetition)
                  for t, s in zip(self.running, segs)]
        outs = self.backend.generate(segs, params)
        for t, s, out in zip(self.running, segs, outs):
            t.row += 1                       # the round index of this request (rows mean nothing here)
            self.backend._absorb(t.forcer, s, out.outputs[0])
            self.report(t)
        self.running = [t for t in self.running if not t.forcer.done]

"""The trainer's loss head on a CPU drops the rows without a target before the fused loss: the loss and the
gradients of the hidden states and the weight must equal those of the head over every row."""
import os

import torch

from s1fast.train import loss_head


def test_cpu_loss_head_skips_untrained_rows_exactly(monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")  # the PyTorch path of the fused loss on both sides
    g = torch.Generator().manual_seed(0)
    t, h, v = 37, 16, 101
    hidden = torch.randn(t, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) / 4
    targets = torch.randint(0, v, (t,), generator=g)
    targets[[0, 1, 2, 9, 20, 36]] = -100          # prompt rows, and a document's last token
    weights = torch.rand(t, generator=g, dtype=torch.float64)
    weights[targets == -100] = float("nan")       # never read for untrained rows

    def run(head):
        hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = head(hh, ww)
        loss.backward()
        return loss.detach(), hh.grad, ww.grad

    from s1fast_kernels import fused_linear_cross_entropy
    safe_w = torch.where(targets == -100, torch.zeros_like(weights), weights)
    ref = run(lambda hh, ww: fused_linear_cross_entropy(hh, ww, targets, token_weight=safe_w, reduction="sum"))
    import s1fast_kernels
    rows = []

    def counted(hh, *a, **k):
        rows.append(hh.shape[0])
        return fused_linear_cross_entropy(hh, *a, **k)
    monkeypatch.setattr(s1fast_kernels, "fused_linear_cross_entropy", counted)
    got = run(loss_head(targets, weights))
    assert rows == [t - 6]                        # only the trained rows reached the head
    assert os.environ["S1FAST_DISABLE_TRITON"] == "1"
    for a, b in zip(got, ref):  # the CPU path computes in fp32: the same math to fp32 rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert torch.count_nonzero(got[1][targets == -100]) == 0

"""The index range checks run once per tensor, not once per layer, and never let a changed tensor through."""
import pytest
import torch

import s1fast_kernels as tk
from s1fast_kernels import index_checks


@pytest.fixture
def calls(monkeypatch):
    """Counts the checks that were computed (not skipped as already passed)."""
    seen = []
    real = index_checks.fail_where
    monkeypatch.setattr(index_checks, "fail_where", lambda *a: (seen.append(a[3]), real(*a)))
    monkeypatch.setattr(index_checks, "_passed", {})
    return seen


def test_a_tensor_that_passed_is_not_checked_again(calls):
    pos = torch.arange(7)
    for _ in range(4):  # the layers of one forward
        index_checks.check_positions("rope", pos, 8)
    index_checks.check_positions("rope", pos, 7)  # another bound: checked
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    index_checks.check_cu_seqlens("packed_attention", cu, 7)
    index_checks.check_cu_seqlens("packed_attention", cu, 7)
    index_checks.check_positions("rope", pos.clone(), 8)  # another tensor with the same values: checked
    assert calls == ["position_ids", "position_ids", "cu_seqlens", "position_ids"]


def test_an_in_place_change_is_checked_again_and_caught(calls):
    pos = torch.arange(7)
    index_checks.check_positions("rope", pos, 8)
    pos[2] = 9  # bumps the version counter shared by every view of pos
    with pytest.raises(ValueError, match=r"position_ids\[2\] = 9 is outside \[0, 8\)"):
        index_checks.check_positions("rope", pos[:], 8)
    cu = torch.tensor([0, 3, 7])
    index_checks.check_cu_seqlens("packed_attention", cu, 7)
    cu[1:].fill_(8)
    with pytest.raises(ValueError, match=r"cu_seqlens\[1\] = 8 is outside"):
        index_checks.check_cu_seqlens("packed_attention", cu, 7)


def test_a_failed_check_is_not_remembered(calls):
    pos = torch.tensor([0, 1, -1])
    for _ in range(2):
        with pytest.raises(ValueError, match=r"position_ids\[2\] = -1"):
            index_checks.check_positions("rope", pos, 8)
    assert calls == ["position_ids", "position_ids"]


def test_inference_tensors_are_always_checked(calls):
    with torch.inference_mode():
        pos = torch.arange(5)
    index_checks.check_positions("rope", pos, 8)
    index_checks.check_positions("rope", pos, 8)
    assert calls == ["position_ids", "position_ids"]


def test_the_rope_op_checks_shared_positions_once(calls):
    """As a model calls it: every layer with the same position_ids, the tables and q/k new each time."""
    g = torch.Generator().manual_seed(0)
    pos = torch.tensor([0, 1, 2, 0, 1])
    cos, sin = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    for _ in range(3):
        q, k = torch.randn(5, 3, 8, generator=g), torch.randn(5, 1, 8, generator=g)
        qo, _ = tk.rope(q, k, cos, sin, pos)
        ref, _ = tk.rope_reference(q.double(), k.double(), cos.double(), sin.double(), pos)
        torch.testing.assert_close(qo.double(), ref)
    assert calls == ["position_ids"]

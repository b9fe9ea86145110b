"""Every Triton kernel's launch grid at given shapes, computed by the real launchers without launching: run
by tests/test_launch_grids.py in a subprocess without TRITON_INTERPRET (the GPU's block sizes), on "meta"
tensors (no memory) that claim ``is_cuda`` (so every launcher takes its GPU branch: views of fake "cuda"
tensors fail in a CPU build of torch), with each kernel replaced by a recorder of its grid and an H100's
132 SMs. Prints one JSON list."""
from __future__ import annotations

import json
import sys
import types

import torch

KERNELS = {"matmul_tiles": ["_matmul_kernel"], "linear_cross_entropy_op": ["_logits_stats_kernel", "_logits_grad_kernel"],
           "cross_entropy_op": ["_ce_rows_kernel", "_ce_grad_tile_kernel"],  # targets.py: a 1-D grid of cdiv(n, 1024)
           "rms_norm_op": ["_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel"],
           "rope_op": ["_rope_kernel"], "swiglu_op": ["_swiglu_fwd_kernel", "_swiglu_bwd_kernel"]}
H100_SMS = 132


def main(shapes: list[dict]) -> list[dict]:
    import importlib

    mods = {m: importlib.import_module(f"s1fast_kernels.{m}") for m in KERNELS}
    assert not mods["rope_op"].INTERPRET, "run without TRITON_INTERPRET: the GPU's block sizes are wanted"
    seen: list[dict] = []
    case = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kw):
                g = grid(kw) if callable(grid) else grid
                seen.append({"kernel": self.name, "grid": [int(x) for x in g], **case})
            return launch

    for m, names in KERNELS.items():
        for n in names:
            setattr(mods[m], n, Recorder(n))
    torch.cuda.get_device_properties = lambda *_: types.SimpleNamespace(multi_processor_count=H100_SMS)
    torch.Tensor.is_cuda = property(lambda self: True)  # this process only: the GPU branches, on meta tensors
    ce, lce, rms, rope, sw = (mods[m] for m in ("cross_entropy_op", "linear_cross_entropy_op", "rms_norm_op",
                                                 "rope_op", "swiglu_op"))
    dev, bf = "meta", torch.bfloat16
    if True:
        for s in shapes:
            case.clear()
            case.update(shape=s["name"])
            n, h, v, f, hq, hk, d = (s[k] for k in ("tokens", "hidden", "vocab", "inter", "hq", "hk", "head_dim"))
            g, u = (torch.empty(n, f, dtype=bf, device=dev) for _ in range(2))
            sw._launch_fwd(g, u)
            sw._launch_bwd(g, u, g)
            x = torch.empty(n, h, dtype=bf, device=dev)
            w = torch.empty(h, dtype=bf, device=dev)
            _, rstd = rms._launch_fwd(x, w, 1e-6)
            rms._launch_bwd(x, w, x, rstd)
            q, k = torch.empty(n, hq, d, dtype=bf, device=dev), torch.empty(n, hk, d, dtype=bf, device=dev)
            cos = torch.empty(s["max_seqlen"], d, dtype=torch.float32, device=dev)
            pos = torch.empty(n, dtype=torch.long, device=dev)
            for backward in (False, True):
                rope._launch(q, k, torch.empty_like(q), torch.empty_like(k), cos, cos, pos, backward=backward,
                             copy_rest=True)
            hid = torch.empty(n, h, dtype=bf, device=dev)
            weight = torch.empty(v, h, dtype=bf, device=dev)
            tgt = torch.empty(n, dtype=torch.long, device=dev)
            for gemm, low in (("cublas", False), ("triton", False), ("triton", True)):  # both GEMM paths
                lce.GEMM = gemm
                args = lce.prepare_linear_ce(hid, weight, tgt, None, ignore_index=-100, label_smoothing=0.0,
                                            z_loss=0.0, softcap=None, reduction="sum", token_weight=None,
                                            normalizer=None, chunk_size=None, low_memory=low)
                hh, ww, bb, tt, we, cfg, want, chunk = args
                _, lse, *_ = lce._linear_ce_chunks(hh, ww, bb, tt, we, cfg, True, chunk, (True, not low, False))
                if low:
                    lce._linear_ce_dweight(hh, ww, bb, tt, we, lse, cfg, chunk)
            logits = torch.empty(n, v, dtype=bf, device=dev)  # the plain cross-entropy on given logits
            ce._ce_rows(logits, tgt, torch.empty(n, dtype=torch.float32, device=dev),
                        dict(ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="sum",
                             low_memory=False), True)
    return seen


if __name__ == "__main__":
    json.dump(main(json.loads(sys.argv[1])), sys.stdout)

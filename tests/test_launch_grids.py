"""Launch grids within CUDA's limits at s1's shapes and at 4x them: every Triton kernel's grid as its launcher
computes it (tests/launch_grid_probe.py records it instead of launching), and the CUDA collate's blocks.
CUDA: grid x <= 2^31 - 1, y and z <= 65535."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = (2**31 - 1, 65535, 65535)
# Qwen2.5-32B at s1's 32768-token packs; then every dimension x4
S1 = dict(name="s1", tokens=32768, hidden=5120, vocab=152064, inter=27648, hq=40, hk=8, head_dim=128, max_seqlen=32768)
X4 = dict(S1, name="s1 x4", **{k: 4 * S1[k] for k in ("tokens", "hidden", "vocab", "inter", "hq", "hk", "max_seqlen")})


def test_every_triton_kernel_grid_is_within_cuda_limits():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "launch_grid_probe.py"), json.dumps([S1, X4])],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"launch grid probe failed ({p.returncode}):\n{p.stderr[-4000:]}"
    seen = json.loads(p.stdout)
    from launch_grid_probe import KERNELS
    every = {k for names in KERNELS.values() for k in names}
    for shape in ("s1", "s1 x4"):
        got = {r["kernel"] for r in seen if r["shape"] == shape}
        assert got == every, f"{shape}: kernels never launched: {sorted(every - got)}"
    bad = [r for r in seen if not (1 <= len(r["grid"]) <= 3 and all(1 <= g <= lim for g, lim in zip(r["grid"], LIMITS)))]
    assert not bad, f"grids outside CUDA's limits (x <= 2^31-1, y/z <= 65535): {bad[:5]}"


def test_cuda_collate_blocks_are_within_limits():
    src = open(os.path.join(ROOT, "csrc", "collate_cuda.cu")).read()
    threads = int(re.search(r"kThreads\s*=\s*(\d+)", src).group(1))
    assert re.search(r"<<<static_cast<unsigned>\(blocks\), kThreads", src), "the collate launch changed: update this test"
    for tokens in (S1["tokens"], X4["tokens"], 16 * X4["tokens"]):
        assert (tokens + threads - 1) // threads <= LIMITS[0]

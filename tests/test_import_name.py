"""The kernels install as ``s1fast_kernels``: triton-lang's own ``triton_kernels`` package (which vLLM probes for
and imports ``triton_kernels.matmul_ogs`` from) must import beside s1fast, untouched."""
import os
import subprocess
import sys
import textwrap


def test_stand_in_triton_kernels_package_imports_beside_s1fast(tmp_path):
    site = tmp_path / "site" / "triton_kernels"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("STAND_IN = True\n")
    (site / "matmul_ogs.py").write_text("def matmul_ogs(*a):\n    return 'stand-in'\n")
    code = textwrap.dedent("""
        import triton_kernels, s1fast_kernels
        from triton_kernels.matmul_ogs import matmul_ogs
        import s1fast.model, s1fast.train
        assert triton_kernels.STAND_IN and matmul_ogs() == "stand-in", triton_kernels.__file__
        assert hasattr(s1fast_kernels, "fused_linear_cross_entropy") and hasattr(s1fast_kernels, "patch_hf")
        print("ok", triton_kernels.__file__)
    """)
    # cwd outside the checkout, so only installed packages (and the stand-in) are importable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(tmp_path) in proc.stdout

"""The native extension: every .cu file compiles for sm_90 with nvcc (its ops run in test_packing*.py)."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu")))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed on this machine")
@pytest.mark.parametrize("path", CU_FILES, ids=[os.path.basename(p) for p in CU_FILES])
def test_cu_compiles_for_sm90(path, tmp_path):
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-O3", "-c", path, "-o", str(tmp_path / "x.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed on {path}:\n{proc.stderr}"
    assert (tmp_path / "x.o").stat().st_size > 0


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/ must hold the CUDA collate source"

"""Build s1fast, the standalone ``s1fast_kernels`` package, and the native extension ``s1fast._C``.

The extension is C++ (``csrc/*.cpp``) everywhere; the CUDA sources (``csrc/*.cu``) are added only
when the installed torch has CUDA and nvcc is found, since ``CUDAExtension`` cannot link against a
CPU build of torch. Build with ``pip install --no-build-isolation -e .`` so pip never pulls a
second (CUDA) torch into an isolated build environment.
"""
import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover
    raise SystemExit("s1fast builds against an installed torch: `pip install torch==2.13.0` (CPU) or your "
                     "CUDA build first, then `pip install --no-build-isolation -e .`") from e

here = os.path.dirname(os.path.abspath(__file__))
cpp = sorted(glob.glob("csrc/*.cpp"))
cu = sorted(glob.glob("csrc/*.cu"))
with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("S1FAST_NO_CUDA") != "1"
cxx = ["-O3", "-std=c++17"]
if with_cuda:
    ext = CUDAExtension("s1fast._C", cpp + cu, define_macros=[("S1FAST_WITH_CUDA", "1")],
                        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]})
else:
    ext = CppExtension("s1fast._C", cpp, extra_compile_args={"cxx": cxx})

core = ["torch>=2.10", "triton", "transformers>=4.45", "safetensors", "numpy", "tqdm", "math-verify[antlr4_13_2]>=0.7",
        "matplotlib"]  # the loss curve (on by default) and eval's scaling plot; without it they are skipped with a notice
extras = {
    "test": ["pytest", "hypothesis", "pytest-benchmark", "matplotlib", "pyarrow", "ijson>=3.6"],
    "bench": ["pytest-benchmark", "liger-kernel", "trl", "binpacking", "matplotlib"],
    "gpu": ["flash-attn"],
    "parquet": ["pyarrow"],
    "json": ["ijson>=3.6"],  # .json data streamed a row at a time; without it a .json file is read whole
    "plot": ["matplotlib"],
    "serve": ["fastapi", "uvicorn"],
    "openai": ["openai>=1.0"],
}

setup(
    name="s1fast",
    version="0.1.0",
    description="Fast, exact distillation training of reasoning models (s1, s1.1, Sky-T1 recipes)",
    long_description=open(os.path.join(here, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # The kernels live in the folder triton_kernels/ but install as ``s1fast_kernels``: the name
    # ``triton_kernels`` belongs to triton-lang's package, which vLLM probes for and imports.
    packages=find_packages(include=["s1fast", "s1fast.*"]) + ["s1fast_kernels"],
    package_dir={"s1fast_kernels": "triton_kernels"},
    package_data={"s1fast": ["assets/data/*", "assets/tokenizer/qwen2.5/*"]},
    python_requires=">=3.10",
    install_requires=core,
    extras_require=extras,
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

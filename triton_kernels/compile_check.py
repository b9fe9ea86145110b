"""Compile a Triton kernel for the H100 (sm_90) with no GPU, and read its resource use.

Triton can lower a kernel all the way to a cubin for a named target without a driver. The
triton wheel ships ``cuobjdump``, so the registers, spills and shared memory the real GPU would
see can be read from that cubin on a CPU-only box. Tests use this to prove that every kernel
compiles for the H100 and to record its register use; ``bench/`` collects the table.

    >>> from s1fast_kernels.compile_check import compile_sm90
    >>> r = compile_sm90(my_kernel, {"x_ptr": "*bf16", "n": "i32"}, {"BLOCK": 1024})
    >>> r.registers, r.spill_stores, r.uses_wgmma
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

H100 = GPUTarget("cuda", 90, 32)


@dataclass
class CompileReport:
    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    num_warps: int
    uses_wgmma: bool
    ptx: str

    def row(self) -> str:
        return (f"| {self.name} | {self.registers} | {self.spill_stores + self.spill_loads} | "
                f"{self.shared_bytes} | {self.num_warps} | {'yes' if self.uses_wgmma else 'no'} |")


def _tool(name: str) -> str:
    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return here if os.path.exists(here) else name


def _resource_usage(cubin: bytes) -> tuple[int, int, int, int]:
    """Registers, spill stores, spill loads, static shared memory from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
    finally:
        os.unlink(path)

    def grab(key: str) -> int:
        m = re.search(rf"{key}[:=]\s*(\d+)", out)
        return int(m.group(1)) if m else 0

    return grab("REG"), grab("STACK"), grab("LOCAL"), grab("SHARED")


def as_jit_function(fn):
    """Under ``TRITON_INTERPRET=1`` ``@triton.jit`` gives an interpreted function; compile its source."""
    from triton.runtime.jit import JITFunction
    if isinstance(fn, JITFunction):
        return fn
    return JITFunction(fn.fn)


def compile_sm90(fn, signature: dict, constexprs: dict | None = None, *, num_warps: int = 4,
                 num_stages: int = 3, name: str | None = None, divisible: tuple = (),
                 debug: bool = False) -> CompileReport:
    """Compile ``fn`` (a ``@triton.jit`` function) for sm_90 and report its resource use.

    ``signature`` maps every non-constexpr argument to a Triton type string ("*bf16", "i32", "fp32");
    ``constexprs`` maps the constexpr arguments to values. Spills are read from the cubin: STACK and
    LOCAL bytes (a kernel that spills keeps registers in local memory).

    To compile what a real launch compiles, mirror Triton's launch-time specialisation: an integer
    argument equal to 1 (a unit stride) becomes a constant (pass it in ``constexprs``), pointer
    arguments are 16-byte aligned (torch allocations are) and the integers named in ``divisible`` are
    multiples of 16 (``tt.divisibility``); without these the loads cannot be vectorised and a GEMM
    tile's address arithmetic alone spills. ``debug``: keep ``tl.device_assert`` (as ``@triton.jit(debug=True)``).
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        # The interpreter patches triton.language in this process; compile in a clean one.
        return _compile_in_subprocess(fn, signature, constexprs, num_warps, num_stages, name, divisible, debug)
    fn = as_jit_function(fn)
    constexprs = dict(constexprs or {})
    sig = dict(signature)
    for k in constexprs:
        sig[k] = "constexpr"
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, t in signature.items()
             if k not in constexprs and (t.startswith("*") or k in divisible)}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    compiled = triton.compile(src, target=H100, options={"num_warps": num_warps, "num_stages": num_stages,
                                                            "debug": debug})
    regs, stack, local, shared_static = _resource_usage(compiled.asm["cubin"])
    shared = max(int(getattr(compiled.metadata, "shared", 0) or 0), shared_static)
    ptx = compiled.asm["ptx"]
    return CompileReport(name=name or fn.__name__, registers=regs, spill_stores=stack, spill_loads=local,
                         shared_bytes=shared, num_warps=num_warps, uses_wgmma="wgmma" in ptx, ptx=ptx)


def _compile_in_subprocess(fn, signature, constexprs, num_warps, num_stages, name, divisible,
                           debug=False) -> CompileReport:
    target = as_jit_function(fn).fn if not hasattr(fn, "fn") else fn.fn
    spec = {"module": target.__module__, "name": target.__name__, "signature": signature,
            "constexprs": constexprs or {}, "num_warps": num_warps, "num_stages": num_stages, "label": name,
            "divisible": list(divisible), "debug": debug}
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "s1fast_kernels.compile_check"], input=json.dumps(spec),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"sm_90 compile of {spec['module']}.{spec['name']} failed:\n{proc.stderr[-4000:]}")
    return CompileReport(**json.loads(proc.stdout.strip().splitlines()[-1]))


def compile_variants(module_names: list[str]) -> list[CompileReport]:
    """Compile every variant listed by ``<module>.sm90_variants()`` (one process for all of them).

    A kernel module lists its launch configurations at H100 shapes as dicts with ``name``, ``fn``,
    ``signature``, ``constexprs``, ``num_warps``, ``num_stages`` (and ``divisible``). Under the interpreter the whole batch
    runs in one clean subprocess (a Python start-up and a Triton import cost seconds each).
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        env = dict(os.environ, TRITON_INTERPRET="0")
        proc = subprocess.run([sys.executable, "-m", "s1fast_kernels.compile_check"],
                              input=json.dumps({"modules": list(module_names)}), capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"sm_90 compile of {module_names} failed:\n{proc.stderr[-4000:]}")
        return [CompileReport(**d) for d in json.loads(proc.stdout.strip().splitlines()[-1])]
    import importlib
    reports = []
    for mod in module_names:
        for v in importlib.import_module(mod).sm90_variants():
            reports.append(compile_sm90(v["fn"], v["signature"], v.get("constexprs"), num_warps=v["num_warps"],
                                        num_stages=v.get("num_stages", 3), name=v["name"],
                                        divisible=tuple(v.get("divisible", ())), debug=v.get("debug", False)))
    return reports


KERNEL_MODULES = tuple(f"s1fast_kernels.{m}" for m in ("rms_norm_op", "rope_op", "swiglu_op", "cross_entropy_op",
                                                                "linear_cross_entropy_op", "targets",
                                                                "attention_op",
                                                                "logprob_op"))


@functools.lru_cache(maxsize=None)
def kernel_reports() -> dict[str, list[CompileReport]]:
    """Every kernel family's sm_90 reports, compiled once per process (one subprocess under the interpreter)."""
    reports = compile_variants(list(KERNEL_MODULES))
    by_module, i = {}, 0
    import importlib
    for mod in KERNEL_MODULES:
        n = len(importlib.import_module(mod).sm90_variants())
        by_module[mod.rsplit(".", 1)[1]] = reports[i:i + n]
        i += n
    return by_module


def _main() -> None:
    import importlib
    spec = json.loads(sys.stdin.read())
    if "modules" in spec:
        print(json.dumps([asdict(r) for r in compile_variants(spec["modules"])]))
        return
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    rep = compile_sm90(fn, spec["signature"], spec["constexprs"], num_warps=spec["num_warps"],
                       num_stages=spec["num_stages"], name=spec["label"], divisible=tuple(spec.get("divisible", ())),
                       debug=spec.get("debug", False))
    print(json.dumps(asdict(rep)))


if __name__ == "__main__":
    _main()

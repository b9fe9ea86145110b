"""Load a script of bench/ by its path: bench/ is a folder of scripts, not a package that tests import."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    """The module bench/<name>.py, loaded from its file (cached in sys.modules as bench_script_<name>)."""
    key = f"bench_script_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(ROOT, "bench", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]

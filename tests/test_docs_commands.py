"""The README and docs/ say what is true: every documented command parses with the command line it names,
every file path they cite exists, and the README's Layout tree lists the repository's files, no more, no less.

A command is a line of a code block (or an indented block) that runs ``python -m s1fast.* | bench.*`` or
``torchrun ... -m ...``; its arguments go through that module's own ``main`` up to ``parse_args``, which
is stopped there, so nothing runs: a renamed flag, a removed one or a missing required one fails here."""
import argparse
import importlib
import os
import re
import shlex
import subprocess

import pytest

from s1fast.cli_help import states_a_value

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
RUNS = re.compile(r"^(?:torchrun\b.*?\s)?(?:python\s+)?-m\s+((?:s1fast|bench)[\w.]*)\s*(.*)$")


def _text(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _code_lines(text: str):
    """Lines of fenced code blocks and of 4-space indented blocks, backslash continuations joined."""
    lines, fenced, out, held = text.splitlines(), False, [], ""
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            held = ""
            continue
        line = held + line.strip()
        if line.endswith("\\"):
            held = line[:-1] + " "
            continue
        held = ""
        out.append(line)
    return out


def documented_commands():
    cmds = []
    for doc in DOCS:
        for line in _code_lines(_text(doc)):
            m = RUNS.match(line)
            if m and line.startswith(("python", "torchrun")):
                synopsis = re.sub(r"\[[^\]]*\]", "", m.group(2))   # [--optional ARG] of a synopsis
                argv = [a for a in shlex.split(synopsis, comments=True) if a != "..."]
                cmds.append(pytest.param(m.group(1), argv, id=f"{doc}: {line[:90]}"))
    return cmds


class _Parsed(Exception):
    pass


def _entry(module: str):
    """The module's ``main`` (a package's is in its __main__)."""
    mod = importlib.import_module(module)
    if not hasattr(mod, "main"):
        mod = importlib.import_module(module + ".__main__")
    return mod.main


@pytest.mark.parametrize("module,argv", documented_commands())
def test_documented_command_parses(module, argv, monkeypatch):
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)   # a bad flag exits 2 here, with argparse's message
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main = _entry(module)
    try:
        main(argv)
    except _Parsed:
        return
    except SystemExit as e:
        if e.code == 0 and "--help" in argv:
            return
        pytest.fail(f"python -m {module} {shlex.join(argv)}: the documented command does not parse (exit {e.code})")
    pytest.fail(f"python -m {module}: main returned without parsing its arguments")


def test_commands_were_found():
    """The extraction itself works: the README's main commands are among those checked."""
    found = {p.values[0] for p in documented_commands()}
    assert {"s1fast.train", "s1fast.data", "s1fast.eval", "s1fast.generate", "s1fast.rl", "s1fast.serve",
            "s1fast.packing", "s1fast.project"} <= found, found


PATH = re.compile(r"(?<![\w./-])((?:docs|bench|s1fast|scripts|tests|triton_kernels|csrc)/[\w./-]*\w)")


@pytest.mark.parametrize("doc", DOCS)
def test_cited_paths_exist(doc):
    """Every repository path a doc cites (``docs/x.md``, ``s1fast/data/format.py``, ...) exists."""
    missing = sorted({p for p in PATH.findall(_text(doc)) if not os.path.exists(os.path.join(ROOT, p))
                      and not p.startswith(("bench/out", "bench/gpu_results"))})
    assert not missing, f"{doc} cites paths that do not exist: {missing}"


def _layout_paths() -> set:
    tree = _text("README.md").split("## Layout", 1)[1].split("```")[1]
    stack, paths = [], set()
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent, name = len(line) - len(line.lstrip()), line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full = "".join(s[1] for s in stack) + name
        if name.endswith("/"):
            stack.append((indent, name))
        paths.add(full)
    return paths


def test_layout_matches_the_repository():
    try:
        tracked = set(subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout.split())
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = _layout_paths()
    # a folder listed with no children stands for all its files (tests/, bench/results/ in bench/'s line)
    leaves = {d for d in listed if d.endswith("/") and not any(p != d and p.startswith(d) for p in listed)}
    gone = sorted(p for p in listed
                  if not (p in tracked or (p.endswith("/") and any(t.startswith(p) for t in tracked))))
    assert not gone, f"README's Layout lists what the repository does not hold: {gone}"
    top = {p for p in listed if p.count("/") == 1 and p.endswith("/")} | {p for p in listed if "/" not in p}
    # bench/RESULTS.<branch>.md: a branch's figures waiting to be spliced into RESULTS.md (then deleted)
    unlisted = sorted(t for t in tracked if t not in listed and not any(t.startswith(d) for d in leaves)
                      and any(t.startswith(d) for d in top if d.endswith("/")) and not t.startswith("bench/results/")
                      and not re.fullmatch(r"bench/RESULTS\.[\w-]+\.md", t))
    assert not unlisted, f"files missing from README's Layout: {unlisted}"


def _parser_of(module: str, argv: list, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds (caught at parse_args, before anything runs)."""
    caught = []

    def catch(self, args=None, namespace=None):
        caught.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Parsed):
        _entry(module)(argv)
    return caught[0]


def _parsers(p: argparse.ArgumentParser):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield from _parsers(sp)


@pytest.mark.parametrize("module", ["s1fast.generate", "s1fast.eval", "s1fast.serve", "s1fast.data",
                                    "s1fast.export", "s1fast.packing", "s1fast.project"])
def test_help_states_each_default(module, monkeypatch):
    """A flag whose default is a value (not None, not off) says it in --help, so --help and the README can agree."""
    silent = []
    for p in _parsers(_parser_of(module, ["--model", "m"] if module != "s1fast.data" else ["stats"], monkeypatch)):
        fmt = p._get_formatter()
        for a in p._actions:
            if (a.option_strings and states_a_value(a.default) and not isinstance(a, argparse._HelpAction)
                    and "default" not in (fmt._get_help_string(a) if a.help else "").lower()):
                silent.append(f"{p.prog} {a.option_strings[0]} (default {a.default!r})")
    assert not silent, f"--help leaves these defaults unsaid: {silent}"

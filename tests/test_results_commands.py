"""Every command bench/RESULTS.md cites still parses with the command line it names (a renamed or removed flag
fails here), inline ones included, as tests/test_docs_commands.py checks the README's code blocks; and every
commit it cites exists in this repository."""
import inspect
import os
import re
import shlex
import subprocess
import sys

import pytest

from test_docs_commands import _entry, _Parsed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
COMMAND = re.compile(r"^(?:[A-Z_0-9]+=\S+\s+)*(?:torchrun\b.*?\s-m\s+(s1fast[\w.]*)|python\s+(?:-m\s+((?:s1fast|bench)"
                     r"[\w.]*)|bench/(\w+)\.py))(?:\s+(.*))?$")


def cited_commands() -> list[tuple[str, str]]:
    """(the text, as cited) of every command in a code block (continuations joined) or in `backticks`."""
    text, blocks = open(RESULTS, encoding="utf-8").read(), []

    def block(m):
        blocks.extend(re.sub(r"\\\n\s*", " ", m.group(1)).splitlines())
        return ""
    rest = re.sub(r"^```[^\n]*\n(.*?)^```", block, text, flags=re.S | re.M)
    inline = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", rest)]
    return [c.split("  #")[0].strip() for c in blocks + inline if COMMAND.match(c.split("  #")[0].strip())]


def parse_only(cmd: str, monkeypatch):
    """Run the command's ``main`` up to its ``parse_args`` (placeholders such as ``<the start>`` or ``DIR`` are
    values, ``[...]`` optional parts are left out): returns None if it parses, else why not."""
    m = COMMAND.match(cmd)
    module = m.group(1) or m.group(2) or f"bench.{m.group(3)}"
    argv = [re.sub(r"^[A-Z]+$", "1", a)   # R, S, DIR, FILE: placeholders, some of them for numbers
            for a in shlex.split(re.sub(r"\[[^\]]*\]|<[^>]*>", lambda x: "" if x[0][0] == "[" else "X",
                                        m.group(4) or ""), comments=True) if a != "..."] or ["--help"]  # a bare name
    real = __import__("argparse").ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed
    monkeypatch.setattr("argparse.ArgumentParser.parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    main = _entry(module)
    try:
        main(argv) if inspect.signature(main).parameters else main()
    except _Parsed:
        return None
    except SystemExit as e:
        return None if e.code == 0 and argv == ["--help"] else f"exit {e.code}"
    return "main returned without parsing"


# Commands bench/RESULTS.md cites that are known not to run: each an expected failure until its text is fixed.
PENDING: dict[str, str] = {}  # a cited command known not to run, with why (strict xfail until fixed)


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=pytest.mark.xfail(reason=PENDING[c], strict=True))
                                 if c in PENDING else c for c in sorted(set(cited_commands()))])
def test_cited_command_parses(cmd, monkeypatch, capsys):
    why = parse_only(cmd, monkeypatch)
    assert why is None, f"bench/RESULTS.md cites `{cmd}`: {why}\n{capsys.readouterr().err[-600:]}"


def test_commands_were_found():
    found = cited_commands()
    assert "OMP_NUM_THREADS=1 python bench/op_overhead.py --repeat 40" in found          # inline, over two lines
    assert any(c.startswith("python -m s1fast.project --preset sky-t1") for c in found)  # in a code block
    assert len(found) > 40


def test_every_cited_commit_exists():
    text = open(RESULTS, encoding="utf-8").read()
    shas = set(re.findall(r"`([0-9a-f]{7,40})(?:\+dirty)?`", text))
    missing = [s for s in sorted(shas) if subprocess.run(["git", "cat-file", "-e", f"{s}^{{commit}}"], cwd=ROOT,
                                                         capture_output=True).returncode != 0]
    assert len(shas) > 20 and not missing, f"bench/RESULTS.md cites commits this repository lacks: {missing}"

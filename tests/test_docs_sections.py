"""Every pointer into the docs holds: a ``docs/x.md`` named in the code, the README or the docs exists, and a
section cited with it (``docs/x.md, "Section"`` or ``docs/x.md ("Section")``; the same for bench/RESULTS.md)
is a heading of that file. A heading matches when it starts with the cited words ("One autograd path" names
"One autograd path: the registered ops")."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("README.md", "docs", "s1fast", "triton_kernels", "bench", "csrc", "scripts", "setup.py", "pyproject.toml")
SKIPPED = ("s1fast/assets", "bench/out", "bench/results")
EXTENSIONS = (".py", ".md", ".sh", ".cpp", ".cu", ".h", ".toml")
# a docs file (or RESULTS.md), then optionally a quoted section: , "Section"  or  ("Section")
CITATION = re.compile(r'(?<![\w/.-])(docs/[\w.-]+\.md|bench/RESULTS\.md)(?:,\s*"([^"]{1,80})"|\s*\("([^"]{1,80})"\))?')
ATX = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _files():
    for entry in SCANNED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield entry
            continue
        for folder, dirs, names in os.walk(path):
            rel = os.path.relpath(folder, ROOT)
            dirs[:] = [d for d in dirs if not os.path.join(rel, d).startswith(SKIPPED) and not d.startswith(".")
                       and d != "__pycache__"]
            yield from (os.path.join(rel, n) for n in sorted(names) if n.endswith(EXTENSIONS))


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def citations(text: str):
    """(cited file, section or None) for each pointer in ``text``."""
    for m in CITATION.finditer(text):
        section = m.group(2) or m.group(3)
        yield m.group(1), " ".join(section.split()) if section else None   # a section may wrap across lines


def headings(text: str) -> list[str]:
    """The headings of a markdown text: ``# ATX`` ones and setext ones (a line over ``---`` or ``===``), outside
    fenced code."""
    out, fenced, lines = [], False, text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = ATX.match(line)
        if m:
            out.append(m.group(1))
        elif (i + 1 < len(lines) and line.strip() and not line.startswith((" ", "-", "|"))
              and re.fullmatch(r"(-{3,}|={3,})\s*", lines[i + 1])):
            out.append(line.strip())
    return out


def _names(heading: str) -> str:
    return re.sub(r"[`*_]", "", heading).strip().lower()


def has_section(text: str, section: str) -> bool:
    want = _names(section)
    return any(h == want or (h.startswith(want) and not h[len(want)].isalnum())
               for h in map(_names, headings(text)))


def _all_citations():
    for rel in _files():
        for cited, section in citations(_read(rel)):
            yield rel, cited, section


def test_the_scan_finds_the_known_pointers():
    """The extraction itself works: pointers of both forms, from code and from the README, are found."""
    found = set(_all_citations())
    assert ("s1fast/batching.py", "docs/forcing.md", "Continuous batching") in found
    assert ("s1fast/memory.py", "docs/projection.md", "Memory of one GPU") in found
    assert ("README.md", "docs/kernels.md", "One autograd path") in found
    assert any(rel.startswith("triton_kernels/") and section is None for rel, _, section in found)


def test_section_matching():
    text = "# Title\n\n## One autograd path: the registered ops\n\nCalibration\n-----------\n```\n# not one\n```\n"
    assert has_section(text, "One autograd path") and has_section(text, "Calibration")
    assert not has_section(text, "One auto") and not has_section(text, "not one")
    assert not has_section(text, "Time of a run")


@pytest.mark.parametrize("rel", sorted(_files()))
def test_cited_docs_and_sections_exist(rel):
    bad = []
    for cited, section in citations(_read(rel)):
        path = os.path.join(ROOT, cited)
        if not os.path.isfile(path):
            bad.append(f"{cited} (no such file)")
        elif section is not None and not has_section(_read(cited), section):
            bad.append(f'{cited}, "{section}" (no such heading)')
    assert not bad, f"{rel} points to: {', '.join(sorted(set(bad)))}"

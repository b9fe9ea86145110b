"""Leftover folders on a filesystem shared by hosts: ``out.tmp-HOST-PID`` / ``out.old-HOST-PID`` name the host,
and the cleanup removes only this host's folders of processes that are gone. Another host's folder survives
(its process id says nothing here: the cleanup removed another node's export under way), named in one notice;
older ``out.tmp-PID`` names are still this host's."""
import os
import subprocess
import sys

import pytest

from s1fast import checkpoint, whole_folder
from s1fast.whole_folder import Sibling, clean_stale, parse_sibling, sibling, write_whole


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setattr(whole_folder.socket, "gethostname", lambda: "gpu node/7")
    return "gpu_node_7"


def test_names_carry_the_sanitised_host_and_parse_back(host, tmp_path):
    out = str(tmp_path / "final")
    assert sibling(out) == f"{out}.tmp-{host}-{os.getpid()}"
    assert sibling(out, "old") == f"{out}.old-{host}-{os.getpid()}"
    assert parse_sibling(os.path.basename(sibling(out))) == Sibling("final", "tmp", host, os.getpid())
    assert parse_sibling("final.old-n1.cluster-x-42") == Sibling("final", "old", "n1.cluster-x", 42)
    assert parse_sibling("c.tmp-42") == Sibling("c", "tmp", None, 42)           # an older version's name
    assert parse_sibling("c.tmp-42").here and parse_sibling(f"c.tmp-{host}-1").here
    assert not parse_sibling("c.tmp-other-1").here
    for name in ("final", "final.tmp", "final.tmp-", "final.tmp-node-", "final.new-h-1", "final.tmp-a b-1"):
        assert parse_sibling(name) is None, name


def test_only_this_hosts_dead_leftovers_are_removed_and_another_hosts_are_named(host, tmp_path):
    dead, live = _dead_pid(), os.getppid()
    out = tmp_path / "final"
    mine_dead, mine_live = f"final.tmp-{host}-{dead}", f"final.tmp-{host}-{live}"
    old_style_dead, old_style_live = f"final.old-{dead}", f"final.tmp-{live}"
    theirs = [f"final.tmp-node2-{dead}", f"final.old-node2.cluster-{dead}"]   # dead here, maybe alive there
    for name in (mine_dead, mine_live, old_style_dead, old_style_live, *theirs, f"other.tmp-{host}-{dead}"):
        os.makedirs(tmp_path / name)
    out.mkdir()
    logs = []
    clean_stale(str(out), logs.append)
    assert sorted(os.listdir(tmp_path)) == sorted(["final", mine_live, old_style_live, *theirs,
                                                   f"other.tmp-{host}-{dead}"])
    assert f"[s1fast] notice: removed {tmp_path / mine_dead}, left by process {dead}, which is gone" in logs
    assert f"[s1fast] notice: removed {tmp_path / old_style_dead}, left by process {dead}, which is gone" in logs
    other = [x for x in logs if "other hosts" in x]
    assert len(other) == 1 and "\n" not in other[0] and "left 2 folder(s)" in other[0]
    assert all(n in other[0] for n in theirs) and "delete them by hand" in other[0]


def test_another_hosts_moved_aside_folder_is_not_put_back_nor_removed(host, tmp_path):
    """``out`` missing beside another host's ``out.old-...``: that host may be between its two renames now."""
    out, theirs = tmp_path / "c", tmp_path / f"c.old-node2-{_dead_pid()}"
    theirs.mkdir()
    (theirs / "summary.json").write_text("{}")
    logs = []
    write_whole(str(out), lambda tmp: os.makedirs(tmp), logs.append)
    assert out.is_dir() and (theirs / "summary.json").exists()
    assert len(logs) == 1 and "other hosts" in logs[0]
    mine = tmp_path / f"c.old-{host}-{_dead_pid()}"          # this host's: put back when c is missing
    os.replace(theirs, mine)
    os.rmdir(out)
    clean_stale(str(out), logs.append)
    assert (out / "summary.json").exists() and not mine.exists() and "was put back" in logs[-1]


def test_a_checkpoint_save_removes_moved_aside_steps_of_any_host(host, tmp_path):
    """Under the run's lock no other save runs: every ``step_N.old-...`` and ``step_N.tmp`` is a leftover."""
    for name in ("step_00000003.tmp", f"step_00000003.old-node2-{os.getpid()}", f"step_00000004.old-{host}-1",
                 "step_00000005.old-7", "step_00000005"):
        assert checkpoint._leftover(name) == (name != "step_00000005"), name
    assert not checkpoint._leftover("final.old-node2-1") and not checkpoint._leftover("step_5.tmp")

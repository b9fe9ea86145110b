"""`python -m s1fast.data generate`: the OpenAI-compatible path's failure handling (a scripted endpoint on
loopback), resuming after a kill, and s1fast's own engine as the teacher (tiny random model)."""
import json
import os
import subprocess
import sys
import time

import pytest

from fake_openai import FakeEndpoint
from s1fast.data.__main__ import main as data_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"), OMP_NUM_THREADS="1")


def questions(path, qs):
    path.write_text("".join(json.dumps({"question": q, "answer": "42", "domain": f"d{i % 3}"}) + "\n"
                            for i, q in enumerate(qs)))
    return str(path)


def lines(path):
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def gen(tmp_path, url, data, *extra):
    summary = tmp_path / "summary.json"
    rc = data_main(["generate", "--teacher", "openai", "--model", "teacher", "--base-url", url, "--data", data,
                    "--out", str(tmp_path / "gen.jsonl"), "--no-progress", "--backoff", "0.01",
                    "--summary", str(summary), *extra])
    return rc, (json.load(open(summary)) if summary.exists() else None)


def test_faults_are_retried_recorded_and_counted(tmp_path):
    qs = ["q ok", "q 429 then ok", "q 500 then ok", "q malformed then ok", "q timeout then ok", "q always 500"]
    scripts = {"q 429 then ok": ["429"], "q 500 then ok": ["500", "500"], "q malformed then ok": ["malformed"],
               "q timeout then ok": ["timeout"], "q always 500": ["500"] * 10}
    data = questions(tmp_path / "q.jsonl", qs)
    with FakeEndpoint(scripts, hang=3.0) as ep:
        rc, s = gen(tmp_path, ep.url, data, "--retries", "2", "--timeout", "1", "--concurrency", "3")
    assert rc == 0
    out = lines(tmp_path / "gen.jsonl")
    assert sorted(r["question"] for r in out) == sorted(qs[:5])     # all but the one that never succeeds
    for r in out:
        assert r["thinking_trajectories"] == [f"Let me think about: {r['question']}"]
        assert r["attempt"] == "The answer is \\boxed{42}." and r["generation"]["reasoning_from"] == "reasoning_content"
        assert r["answer"] == "42" and r["domain"].startswith("d")   # the input row's fields carried
    failed = lines(tmp_path / "gen.failed.jsonl")
    assert [(f["question"], f["kind"], f["attempts"]) for f in failed] == [("q always 500", "server_error", 3)]
    assert "InternalServerError" in failed[0]["error"]
    assert s["kept"] == {"generated": 5} and s["dropped"] == {"failed_server_error": 1}
    assert s["other"]["retried_rate_limit"] == 1 and s["other"]["retried_malformed"] == 1
    assert s["other"]["retried_timeout"] == 1 and s["other"]["retried_server_error"] == 4   # 2 + 2
    assert ep.seen["q always 500"] == 3 and ep.seen["q 500 then ok"] == 3

    # a rerun retries only the failed request (which now succeeds), and repeats nothing
    with FakeEndpoint() as ep2:
        rc, s = gen(tmp_path, ep2.url, data)
    assert rc == 0 and dict(ep2.seen) == {"q always 500": 1}
    assert s["kept"] == {"generated": 1} and s["other"]["already_done"] == 5
    assert sorted(r["question"] for r in lines(tmp_path / "gen.jsonl")) == sorted(qs)


def test_client_errors_fail_at_once_and_auth_errors_stop_the_run(tmp_path, capsys):
    data = questions(tmp_path / "q.jsonl", [f"q{i}" for i in range(6)])
    with FakeEndpoint({"q0": ["401"]}, delay=0.05) as ep:
        rc, _ = gen(tmp_path, ep.url, data, "--concurrency", "1")
    err = capsys.readouterr().err
    assert rc == 2 and "error: generate: the endpoint refused the credentials" in err and "OPENAI_API_KEY" in err
    assert ep.seen["q0"] == 1 and sum(ep.seen.values()) <= 2    # stopped, not retried, nothing more sent
    assert not any(r["question"] == "q0" for r in lines(tmp_path / "gen.jsonl"))
    # an unknown path gives 404: a client error, recorded without retries
    (tmp_path / "b").mkdir()
    with FakeEndpoint() as ep:
        rc, s = gen(tmp_path / "b", ep.url.replace("/v1", "/nope"), data, "--retries", "3")
    assert rc == 0 and s["dropped"] == {"failed_client_error": 6} and not lines(tmp_path / "b" / "gen.jsonl")
    failed = lines(tmp_path / "b" / "gen.failed.jsonl")
    assert len(failed) == 6 and all(f["attempts"] == 1 and "NotFoundError" in f["error"] for f in failed)
    # the endpoint's reason is shown once (an endpoint refusing a parameter refuses every request), not only
    # in the failures file
    err = capsys.readouterr().err
    assert err.count("warning: generate: a request failed (client_error, after 1 attempt(s)): NotFoundError") == 1
    assert "gen.failed.jsonl" in err


def test_an_endpoint_never_reached_stops_the_run(tmp_path, capsys):
    import socket
    with socket.socket() as sock:        # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = questions(tmp_path / "q.jsonl", [f"q{i}" for i in range(20)])
    rc, _ = gen(tmp_path, f"http://127.0.0.1:{port}/v1", data, "--retries", "1", "--concurrency", "2")
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the endpoint" in err and "failed_connection" in err
    failed = lines(tmp_path / "gen.failed.jsonl")
    assert 1 <= len(failed) <= 2 and all(f["kind"] == "connection" and f["attempts"] == 2 for f in failed)


def test_a_rerun_with_another_teacher_or_seed_refuses_to_mix_its_samples_in(tmp_path, capsys):
    """Keys are question : sample, so another teacher's (or --seed's) rerun used to count the first run's rows
    as its own and skip them; now it is refused, and the same teacher at another URL still resumes."""
    data = questions(tmp_path / "q.jsonl", ["q one", "q two", "q three"])
    with FakeEndpoint() as ep:
        assert gen(tmp_path, ep.url, data, "--limit", "2")[0] == 0
        before = (tmp_path / "gen.jsonl").read_text()
        capsys.readouterr()
        rc, _ = gen(tmp_path, ep.url, data, "--model", "another-teacher")
        err = capsys.readouterr().err
        assert rc == 2 and "2 made with teacher openai:teacher" in err and "openai:another-teacher" in err, err
        rc, _ = gen(tmp_path, ep.url, data, "--seed", "1")
        err = capsys.readouterr().err
        assert rc == 2 and "2 made with another --seed" in err, err
        assert (tmp_path / "gen.jsonl").read_text() == before            # nothing written by the refused runs
    with FakeEndpoint() as ep2:                                         # the same teacher, another address
        rc, s = gen(tmp_path, ep2.url, data)
    assert rc == 0 and s["other"]["already_done"] == 2 and len(lines(tmp_path / "gen.jsonl")) == 3


def test_killed_mid_run_then_rerun_loses_nothing_and_repeats_nothing(tmp_path):
    qs = [f"problem {i}: what is {i} + {i}?" for i in range(20)]
    data = questions(tmp_path / "q.jsonl", qs)
    out = tmp_path / "gen.jsonl"
    with FakeEndpoint(delay=0.05) as ep:
        cmd = [sys.executable, "-m", "s1fast.data", "generate", "--teacher", "openai", "--model", "t",
               "--base-url", ep.url, "--data", data, "--out", str(out), "--samples", "2", "--concurrency", "2",
               "--no-progress"]
        p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t0 = time.time()
        while len(lines(out)) < 8 and time.time() - t0 < 60 and p.poll() is None:
            time.sleep(0.02)
        p.kill()
        p.wait()
        first = lines(out)
        assert 8 <= len(first) < 40, "the run should be killed mid-way"
        with open(out, "a") as f:          # as if killed in the middle of writing a line
            f.write('{"question": "half a li')
        served = sum(ep.seen.values())
        p2 = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert p2.returncode == 0, p2.stderr[-2000:]
        assert "partial last line" in p2.stderr
    rows = lines(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == 40 and len(set(keys)) == 40                       # nothing lost, nothing twice
    assert {(r["question"], r["sample"]) for r in rows} == {(q, s) for q in qs for s in (0, 1)}
    assert rows[:len(first)] == first                                      # what was written stays as it was
    # requests made again: only those in flight at the kill (at most --concurrency)
    assert sum(ep.seen.values()) - served <= 40 - len(first) + 2


@pytest.fixture
def tiny_dir(tiny_export):
    return tiny_export


def test_native_engine_teacher_batches_and_is_seeded_per_request(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    data = questions(tmp_path / "q.jsonl", ["1+1?", "2+3?", "7*6?"])
    args = ["generate", "--teacher", "native", "--model", tiny_dir, "--data", data, "--samples", "2",
            "--max-thinking-tokens", "6", "--max-answer-tokens", "3", "--temperature", "1.0", "--no-progress"]
    assert data_main(args + ["--out", str(tmp_path / "a.jsonl"), "--batch-size", "6"]) == 0
    a = {r["key"]: r for r in lines(tmp_path / "a.jsonl")}
    assert len(a) == 6 and all(r["generation"]["thinking_tokens"] == 6 for r in a.values())
    assert all(r["teacher"].startswith("native:") for r in a.values())
    # one at a time, in another order of completion: the same samples (each request's seed comes from its key)
    assert data_main(args + ["--out", str(tmp_path / "b.jsonl"), "--batch-size", "1"]) == 0
    b = {r["key"]: r for r in lines(tmp_path / "b.jsonl")}
    traces = lambda rows: {k: r["thinking_trajectories"] for k, r in rows.items()}  # noqa: E731
    assert traces(a) == traces(b)
    assert len({r["thinking_trajectories"][0] for r in a.values()}) > 1      # sampled, not all the same


def test_a_question_too_long_for_the_context_is_recorded_failed_and_the_others_are_made(tmp_path, tiny_dir,
                                                                                         monkeypatch, capsys):
    """The engine teacher: a question whose prompt leaves no room within --max-total-tokens is a failure of
    that row (in <out>.failed.jsonl, naming the flag), as the endpoint's context-length 400 is for the openai
    teacher; it stopped the whole run with an error naming no file or row, and every rerun stopped there."""
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    data = questions(tmp_path / "q.jsonl", ["1+1?", "long " * 80, "2+3?"])
    out = tmp_path / "gen.jsonl"
    args = ["generate", "--teacher", "native", "--model", tiny_dir, "--data", data, "--out", str(out),
            "--max-total-tokens", "64", "--max-thinking-tokens", "4", "--max-answer-tokens", "2", "--no-progress",
            "--summary", str(tmp_path / "s.json")]
    assert data_main(args) == 0
    assert sorted(r["question"] for r in lines(out)) == ["1+1?", "2+3?"]
    failed = lines(tmp_path / "gen.failed.jsonl")
    assert [(f["row"], f["kind"]) for f in failed] == [(2, "too_long")]
    assert "--max-total-tokens 64" in failed[0]["error"]
    assert json.load(open(tmp_path / "s.json"))["dropped"] == {"failed_too_long": 1}
    assert "too_long" in capsys.readouterr().err


def test_vllm_teacher_without_vllm_stops_with_a_clear_error(tmp_path, capsys):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here, so the missing-vllm error cannot be shown")
    except ImportError:
        pass
    data = questions(tmp_path / "q.jsonl", ["1+1?"])
    assert data_main(["generate", "--teacher", "vllm", "--model", str(tmp_path), "--data", data,
                      "--out", str(tmp_path / "g.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: generate:" in err and "pip install vllm" in err


def test_a_question_repeated_in_the_input_is_asked_once_not_written_twice(tmp_path, capsys):
    data = questions(tmp_path / "q.jsonl", ["q a", "q b", "q a", "q c", "q b", ""])
    with FakeEndpoint() as ep:
        rc, s = gen(tmp_path, ep.url, data, "--samples", "2")
    assert rc == 0 and dict(ep.seen) == {"q a": 2, "q b": 2, "q c": 2}
    keys = [r["key"] for r in lines(tmp_path / "gen.jsonl")]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert s["kept"] == {"generated": 6} and s["other"]["questions"] == 3
    assert s["dropped"] == {"repeated_question": 2, "no_question": 1}
    err = capsys.readouterr().err
    assert "2 row(s) repeat the question of an earlier row and are asked once (rows 3, 5)" in err
    assert "1 row(s) have no question and are skipped (rows 6)" in err


def test_the_thinking_is_split_from_the_answer_whatever_the_endpoint_returns():
    """A DeepSeek-R1 distill behind vLLM with no reasoning parser returns ``...</think> answer`` (its template
    opened the block in the prompt), or, cut by the token limit, ``<think> ...`` never closed: the thinking
    must not land in the attempt (verify would grade a \\boxed{} from the middle of the reasoning, and the row
    would have no trace to train on)."""
    from types import SimpleNamespace as M
    from s1fast.data.pipeline.teacher_openai import split_reasoning
    cases = {
        "<think>\nTry 7. \\boxed{7}? No.\n</think>\n\nSo \\boxed{8}.":
            ("Try 7. \\boxed{7}? No.", "So \\boxed{8}.", "think_tags"),
        "Try 7. \\boxed{7}? No.\n</think>\n\nSo \\boxed{8}.":
            ("Try 7. \\boxed{7}? No.", "So \\boxed{8}.", "think_close"),
        "<think>\nTry 7. \\boxed{7}? Or maybe": ("Try 7. \\boxed{7}? Or maybe", "", "think_unclosed"),
        "think\nTry 7.<|im_start|>answer\nAnswer: 8": ("Try 7.", "Answer: 8", "s1_sections"),
        "Just \\boxed{8}.": ("", "Just \\boxed{8}.", "none"),
    }
    for content, want in cases.items():
        assert split_reasoning(M(content=content)) == want, content
    assert split_reasoning(M(content="So 8.", reasoning_content="Try 7.")) == ("Try 7.", "So 8.", "reasoning_content")


def test_bad_numbers_and_a_wrong_question_field_are_refused_before_any_request(tmp_path, capsys):
    """--samples 0 / -1 used to do nothing and exit 0, --retries -1 crashed a worker ('unreachable'),
    --concurrency 0 said only 'max_workers must be greater than 0', and --question-field naming no field
    'succeeded' with every row dropped."""
    data = questions(tmp_path / "q.jsonl", ["q a", "q b"])
    with FakeEndpoint() as ep:
        for flag, value, want in (("--samples", "0", "must be a positive whole number, got 0"),
                                  ("--samples", "-1", "must be a positive whole number, got -1"),
                                  ("--concurrency", "0", "must be a positive whole number, got 0"),
                                  ("--retries", "-1", "must be a whole number >= 0, got -1"),
                                  ("--timeout", "0", "must be a number > 0, got 0.0"),
                                  ("--limit", "x", "expected a positive whole number, got 'x'")):
            with pytest.raises(SystemExit) as e:
                gen(tmp_path, ep.url, data, flag, value)
            assert e.value.code == 2 and f"argument {flag}: {want}" in capsys.readouterr().err
        rc, _ = gen(tmp_path, ep.url, data, "--question-field", "prompt")
        err = capsys.readouterr().err
        assert rc == 2 and "row 1: no row has a question (a non-empty field 'prompt')" in err
        assert "--question-field" in err
        assert not ep.seen and not lines(tmp_path / "gen.jsonl")
    for step, flag in (("decontaminate", "--ngram"), ("select", "--size"), ("verify", "--k")):
        with pytest.raises(SystemExit):
            data_main([step, "--data", data, "--out", str(tmp_path / "o.jsonl"), flag, "0"])
        assert f"argument {flag}: must be a positive whole number, got 0" in capsys.readouterr().err


def test_ctrl_c_stops_at_once_keeps_what_came_back_and_a_rerun_finishes(tmp_path):
    """Ctrl-C used to wait for every request in flight (minutes, for a reasoning model), then throw their
    answers away and print a traceback."""
    import signal
    qs = [f"q{i}" for i in range(6)]
    data = questions(tmp_path / "q.jsonl", qs)
    out = tmp_path / "gen.jsonl"
    with FakeEndpoint({q: ["timeout"] for q in qs[2:]}, hang=60) as ep:
        # Ctrl-C as from a terminal: a suite started as a background job (no job control) ignores SIGINT, a
        # child inherits that and Python keeps it (seen in CI: the child never stopped), so it is restored here.
        cmd = [sys.executable, "-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('s1fast.data', run_name='__main__', alter_sys=True)",
               "generate", "--teacher", "openai", "--model", "teacher",
               "--base-url", ep.url, "--data", data, "--out", str(out), "--concurrency", "3", "--no-progress"]
        p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while (len(lines(out)) < 2 or sum(ep.seen.values()) < 3) and time.time() - t0 < 60 and p.poll() is None:
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        t1 = time.time()
        _, err = p.communicate(timeout=30)
        assert time.time() - t1 < 10, "the interrupt waited for the requests in flight"
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "error: generate: interrupted; the rows written to" in err and "generated 2" in err
    assert sorted(r["question"] for r in lines(out)) == ["q0", "q1"]
    with FakeEndpoint() as ep2:
        rc, s = gen(tmp_path, ep2.url, data)
    assert rc == 0 and sorted(ep2.seen) == qs[2:] and s["other"]["already_done"] == 2
    assert sorted(r["question"] for r in lines(out)) == qs


def test_a_missing_vllm_names_this_commands_flag(tmp_path, capsys):
    """The error said '--backend vllm needs vllm ... or use --backend native': generate's flag is --teacher."""
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: the error under test cannot happen")
    data = questions(tmp_path / "q.jsonl", ["q a"])
    assert data_main(["generate", "--teacher", "vllm", "--model", "Qwen/QwQ-32B", "--data", data,
                      "--out", str(tmp_path / "g.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--teacher vllm needs vllm" in err and "use --teacher native" in err and "--backend" not in err


def test_empty_and_truncated_replies_are_recorded_and_a_cut_trace_is_not_graded(tmp_path):
    data = questions(tmp_path / "q.jsonl", ["q ok", "q empty", "q cut"])
    with FakeEndpoint({"q empty": ["empty"], "q cut": ["cut"]}) as ep:
        rc, s = gen(tmp_path, ep.url, data)
    assert rc == 0 and s["kept"] == {"generated": 2} and s["dropped"] == {"failed_empty": 1}
    assert ep.seen["q empty"] == 1                                     # no retry: recorded, a rerun retries it
    [failed] = lines(tmp_path / "gen.failed.jsonl")
    assert failed["question"] == "q empty" and failed["error"] == "the response has no text"
    cut = next(r for r in lines(tmp_path / "gen.jsonl") if r["question"] == "q cut")
    assert cut["thinking_trajectories"] == ["Let me think about: q cut. Maybe"] and cut["attempt"] == ""
    assert cut["generation"]["finish_reason"] == "length" and cut["generation"]["reasoning_from"] == "think_unclosed"
    assert data_main(["verify", "--data", str(tmp_path / "gen.jsonl"), "--out", str(tmp_path / "v.jsonl"),
                      "--graded", str(tmp_path / "g.jsonl")]) == 0
    verdicts = {r["question"]: r["verdict"] for r in lines(tmp_path / "g.jsonl")}
    assert verdicts == {"q ok": "correct", "q cut": "no_answer"}

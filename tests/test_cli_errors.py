"""Every CLI turns an expected failure into one ``error: ...`` line naming the file, row or field and what to
do, with exit status 2, before any compute (issue 14's poor list). The real CLIs run in subprocesses, several
at once (each fails within its imports)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
ENV.pop("TRITON_INTERPRET", None)
TRAIN = [sys.executable, "-m", "s1fast.train", "--preset", "tiny", "--max-tokens", "96", "--global-batch", "2",
         "--max-steps", "1", "--progress", "false"]
PREPARE = [sys.executable, "-m", "s1fast.data", "prepare", "--no-progress", "--workers", "1"]
GENERATE = [sys.executable, "-m", "s1fast.generate", "--prompt", "hi"]


def run_all(cases: dict, timeout=300) -> dict:
    """Start every case's command at once; {name: (returncode, stdout, stderr)}."""
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, (cmd, _) in cases.items()}
    out = {}
    for name, p in procs.items():
        o, e = p.communicate(timeout=timeout)
        out[name] = (p.returncode, o, e)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    row = {"question": "q", "thinking_trajectories": ["t"], "attempt": "a"}
    (d / "latin1.jsonl").write_bytes((json.dumps(row) + "\n").encode() + b'{"question": "caf\xe9"}\n')
    (d / "fake.parquet").write_text("this is not parquet\n")
    (d / "empty.jsonl").write_text("")
    (d / "a_file").write_text("x")
    (d / "broken_model").mkdir()
    (d / "broken_model" / "config.json").write_text('{"model_type": "qwen2", ')
    (d / "partial_model").mkdir()
    (d / "partial_model" / "config.json").write_text('{"model_type": "qwen2", "hidden_size": 64}')
    (d / "empty_tokenizer").mkdir()
    long_prompts = d / "prompts.jsonl"
    long_prompts.write_text(json.dumps({"question": "fine"}) + "\n")
    return d


def test_bad_inputs_give_one_error_line_and_exit_2(files, tmp_path):
    d, o = files, str(tmp_path / "run")
    cases = {
        # train
        "output_dir_is_a_file": (TRAIN + ["--output-dir", str(d / "a_file")], "--output-dir " + str(d / "a_file")
                                 + " is a file"),
        "output_dir_not_writable": (TRAIN + ["--output-dir", "/proc/s1fast-test/run"], "is not writable"),
        "lr_nan": (TRAIN + ["--output-dir", o, "--lr", "nan"], "--lr must be a finite number, got nan"),
        "lr_inf": (TRAIN + ["--output-dir", o, "--lr", "inf"], "--lr must be a finite number, got inf"),
        "max_tokens_negative": (TRAIN + ["--output-dir", o, "--max-tokens", "-5"], "--max-tokens must be positive"),
        "broken_config_json": (TRAIN + ["--output-dir", o, "--model", str(d / "broken_model")],
                               "config.json is not valid JSON"),
        "incomplete_config_json": (TRAIN + ["--output-dir", o, "--model", str(d / "partial_model")],
                                   "config.json lacks the field"),
        "empty_tokenizer_folder": (TRAIN + ["--output-dir", o, "--tokenizer", str(d / "empty_tokenizer")],
                                   "has no tokenizer.json"),
        "train_non_utf8_data": (TRAIN + ["--output-dir", str(tmp_path / "r2"), "--data", str(d / "latin1.jsonl")],
                                "latin1.jsonl, row 2: not UTF-8 (byte 0xe9"),
        # data prepare
        "prepare_fake_parquet": (PREPARE + ["--data", str(d / "fake.parquet"), "--out", str(tmp_path / "c1")],
                                 "fake.parquet: not a readable parquet file"),
        "prepare_empty_file": (PREPARE + ["--data", str(d / "empty.jsonl"), "--out", str(tmp_path / "c2")],
                               "empty.jsonl: holds no rows"),
        "prepare_out_is_a_file": (PREPARE + ["--out", str(d / "a_file")], "is a file: pass --out with a folder"),
        # generate
        "generate_missing_model": (GENERATE + ["--model", str(tmp_path / "nope")],
                                   "does not exist: pass an exported Hugging Face model folder"),
        "generate_negative_num_wait": (GENERATE + ["--model", str(d / "broken_model"), "--num-wait", "-1"],
                                       "--num-wait must be >= 0, got -1"),
        "generate_non_utf8_prompts": (GENERATE + ["--model", str(d / "broken_model"), "--prompts",
                                                  str(d / "latin1.jsonl")], "latin1.jsonl:2: not UTF-8"),
    }
    results = run_all(cases)
    for name, (_, want) in cases.items():
        rc, out, err = results[name]
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert rc == 2 and lines and lines[-1].startswith("error: ") and want in lines[-1], (name, rc, err[-3000:])
        assert "Traceback" not in err, (name, err[-3000:])
    assert not os.path.exists(os.path.join(o, "metrics.jsonl"))


def test_two_ranks_report_the_real_error_not_a_lost_connection(files, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "s1fast.train", *TRAIN[3:], "--output-dir", str(tmp_path / "r"), "--data", str(d_latin1(files))]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    errors = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "latin1.jsonl, row 2: not UTF-8" in errors[0], p.stderr[-4000:]
    # torchrun's own summary has a traceback; none comes from s1fast's code (a checkout folder may be named s1fast)
    own_code = os.path.join(ROOT, "s1fast", "")
    assert "onnection closed" not in p.stderr and own_code not in p.stderr.split("Traceback", 1)[-1], \
        p.stderr[-4000:]


def d_latin1(files):
    return files / "latin1.jsonl"


@pytest.mark.parametrize("module,runs", [("s1fast.train", "train"), ("s1fast.rl.__main__", "run")])
def test_a_full_disk_or_a_denied_folder_is_one_error_line_in_training_and_rl(tmp_path, monkeypatch, capsys, module,
                                                                             runs):
    """The trainer said so in one line (exit 2) while RL, whose main kept its own copy of the trainer's
    ending, left a traceback (exit 1): both now end through s1fast.entry. Another OSError is a bug: raised."""
    import errno
    import importlib

    import torch

    from s1fast import distributed
    mod = importlib.import_module(module)
    failure = [None]

    def fail(*_a, **_k):
        raise failure[0]
    monkeypatch.setattr(distributed, "init", lambda *_a: (torch.device("cpu"), 0, 1))
    monkeypatch.setattr(distributed, "shutdown", lambda **_k: None)
    monkeypatch.setattr(mod, runs, fail)
    args = ["--model", "tiny-qwen2", "--output-dir", str(tmp_path), "--progress", "false"]
    for code, why in ((errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")):
        failure[0] = OSError(code, why, str(tmp_path / "metrics.jsonl"))
        assert mod.main(args) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: {why} ({tmp_path / 'metrics.jsonl'}): free the space or fix the permissions, then run again "
            f"with the same --output-dir to resume from its last checkpoint"]
    failure[0] = OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError, match="Input/output"):
        mod.main(args)

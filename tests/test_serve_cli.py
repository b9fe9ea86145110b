"""``python -m s1fast.serve`` as a process: its command-line errors, and SIGTERM draining a request in flight."""
import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
import torch

from s1fast.serve.__main__ import main
from test_serve import KEY, export_tiny, free_port, wait_healthy


@pytest.mark.parametrize("argv, says", [
    (["--model", "/no/such/model"], "no such folder"),
    (["--backend", "vllm"], "vllm"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--num-wait", "-1"], "--num-wait must be >= 0"),
    (["--api-key", " "], "--api-key is empty"),
    (["--extension", " "], "--extension must be a non-blank string"),   # was: every request a 400
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, says):
    if "--backend" in argv and torch.cuda.is_available():
        pytest.skip("this checks the refusal on a machine without a GPU (and without vllm)")
    (tmp_path / "config.json").write_text("{}")    # a model folder to the checks; none of these loads it
    model = ["--model", str(tmp_path)] if "--model" not in argv else []
    assert main(model + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err



def test_a_port_in_use_is_an_error_line_before_the_model_loads(tmp_path, capsys):
    import socket
    (tmp_path / "config.json").write_text("{}")
    with socket.socket() as taken:     # was: the model loaded, then uvicorn's "address already in use", exit 3
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--model", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there"), err


@pytest.mark.slow
def test_sigterm_drains_the_request_in_flight_then_exits(tmp_path):
    model = export_tiny(str(tmp_path / "tiny"))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path), S1FAST_DISABLE_TRITON="1")
    proc = subprocess.Popen([sys.executable, "-m", "s1fast.serve", "--model", model, "--port", str(port),
                             "--max-total-tokens", "512", "--api-key", KEY, "--log-level", "warning"],
                            env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, 180, proc)
        body = {"messages": [{"role": "user", "content": "count"}], "max_thinking_tokens": 80,
                "min_thinking_tokens": 80, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
        events, started = [], threading.Event()

        def stream():
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300,
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        started.set()

        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(120), "no first event"
        proc.send_signal(signal.SIGTERM)
        t.join(300)
        assert proc.wait(120) == 0, proc.stderr.read()[-3000:]
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["thinking_tokens"] == 80 and usage["answer_tokens"] <= 4   # served in full after SIGTERM
        assert json.loads(events[-3])["choices"][0]["finish_reason"] in ("stop", "length")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

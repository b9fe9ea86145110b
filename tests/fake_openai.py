"""A scripted OpenAI-compatible chat endpoint on the loopback address, for the pipeline's fault tests.

Each question has a script: the responses its successive requests get (``ok``, ``429``, ``500``, ``401``,
``malformed`` (a 200 whose body is not JSON), ``timeout`` (no answer for ``hang`` seconds), ``empty`` (no text),
``cut`` (an unclosed ``<think>`` block, finish_reason ``length``)); past the end
of its script a question gets ``ok``. ``ok`` answers with ``reasoning_content`` and a boxed answer.
"""
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEndpoint:
    def __init__(self, scripts=None, delay=0.0, hang=3.0, answer=lambda q: "42"):
        self.scripts, self.delay, self.hang, self.answer = scripts or {}, delay, hang, answer
        self.seen = defaultdict(int)     # question -> requests received
        self.bodies = {}                 # question -> the body of its last request
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                if not self.path.endswith("/v1/chat/completions"):
                    return self._send(404, json.dumps({"error": {"message": "no such route", "type": "test"}}))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                q = body["messages"][-1]["content"]
                with outer.lock:
                    n = outer.seen[q]
                    outer.seen[q] += 1
                    outer.bodies[q] = body
                script = outer.scripts.get(q, [])
                action = script[n] if n < len(script) else "ok"
                time.sleep(outer.delay)
                if action == "timeout":
                    time.sleep(outer.hang)
                    action = "ok"
                if action in ("429", "500", "401"):
                    return self._send(int(action), json.dumps({"error": {"message": f"scripted {action}",
                                                                         "type": "test", "code": action}}))
                if action == "malformed":
                    return self._send(200, "{not json", "application/json")
                msg = {"role": "assistant", "content": f"The answer is \\boxed{{{outer.answer(q)}}}.",
                       "reasoning_content": f"Let me think about: {q}"}
                finish = "stop"
                if action == "empty":            # a 200 with no text at all
                    msg = {"role": "assistant", "content": ""}
                elif action == "cut":            # no reasoning parser, and the token limit hit inside <think>
                    msg, finish = {"role": "assistant", "content": f"<think>\nLet me think about: {q}. Maybe"}, "length"
                return self._send(200, json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}))

            def _send(self, code, text, ctype="application/json"):
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

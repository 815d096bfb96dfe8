"""A scripted, deliberately naive LLM judge speaking the OpenAI chat API, for tests and bench/.

Run as a process: ``python tests/integration/judge_server.py [--port 0] [--delay S]``; it prints
``PORT <n>`` once listening on 127.0.0.1 and serves until killed (by pid).

POST /v1/chat/completions grades like this, reading the request's user message:

- The candidate block is what lies between the first ``<<<CANDIDATE <nonce>>>`` line and the first
  ``<<<END CANDIDATE <nonce>>>`` after it (the nonce read from the opening line). This is how a naive
  reader finds a block: the first closing marker ends it, whoever wrote it.
- Injection: if the text *outside* the block says "ignore the rubric" (any case), the judge obeys it and
  gives full marks. Inside the block it is only text. So a completion raises its own score here exactly
  when it manages to close the block early, i.e. when it can forge the closing marker. This models the
  structural half of prompt-injection defence (can the answer escape its block?), not how far a real
  LLM heeds the instruction to ignore text inside the block; no test double can show that.
- Otherwise it grades: full-ish marks (4 of 5 per field, or 8 of 10) when the reference answer occurs in
  the candidate (case and whitespace ignored), else 1 of 5 (or 2 of 10). The rubric is read from the
  system message (route rubric when it mentions "direction").
- Scripts in the QUESTION (trusted test input): ``[sleep:S]`` waits S seconds before replying;
  ``[reply:KIND]`` sends a broken reply: prose, float, range, extra, missing, bool, string, repeated,
  fenced (a valid object in a ```json fence, which the client accepts), null, http500, http400, notjson.
- ``--delay S`` waits S seconds on every request (a slow judge for benchmarks).

GET /stats returns ``{"requests": n, "max_inflight": m}`` (max concurrent requests seen); POST /reset waits
for requests in flight to end, then zeroes both.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_OPEN = re.compile(r"^<<<CANDIDATE ([0-9A-Za-z]+)>>>$", re.MULTILINE)
_BROKEN = {
    "prose": "The candidate is good: direction 5, landmark 4, logic 4.",
    "float": '{"direction": 4.0, "landmark": 4, "logic": 4}',
    "range": '{"direction": 6, "landmark": 4, "logic": 4}',
    "extra": '{"direction": 4, "landmark": 4, "logic": 4, "note": 1}',
    "missing": '{"direction": 4, "landmark": 4}',
    "bool": '{"direction": true, "landmark": 4, "logic": 4}',
    "string": '{"direction": "4", "landmark": 4, "logic": 4}',
    "repeated": '{"direction": 0, "direction": 5, "landmark": 4, "logic": 4}',
    "fenced": '```json\n{"direction": 3, "landmark": 3, "logic": 3}\n```',
    "trailing": '{"direction": 4, "landmark": 4, "logic": 4} Hope this helps!',
}


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _section(user: str, title: str) -> str:
    m = re.search(rf"^{title}:\n(.*?)\n\n", user, re.DOTALL | re.MULTILINE)
    return m.group(1) if m else ""


def grade(system: str, user: str) -> str:
    """The naive judge's reply content for one request."""
    route = "direction" in system
    inside, outside = "", user
    if m := _OPEN.search(user):
        close = f"<<<END CANDIDATE {m.group(1)}>>>"
        end = user.find(close, m.end())
        end = end if end >= 0 else len(user)
        inside, outside = user[m.end():end], user[: m.start()] + user[end:]
    if "ignore the rubric" in outside.casefold():
        return json.dumps({"direction": 5, "landmark": 5, "logic": 5} if route else {"score": 10})
    good = _norm(_section(user, "REFERENCE ANSWER")) in _norm(inside)
    if route:
        n = 4 if good else 1
        return json.dumps({"direction": n, "landmark": n, "logic": n})
    return json.dumps({"score": 8 if good else 2})


class _State:
    lock = threading.Lock()
    requests = 0
    inflight = 0
    max_inflight = 0
    delay = 0.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/stats":
            return self._send(404, b"{}")
        with _State.lock:
            stats = {"requests": _State.requests, "max_inflight": _State.max_inflight}
        self._send(200, json.dumps(stats).encode())

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/reset":  # waits (up to 30 s) for requests still sleeping, so stats start clean
            deadline = time.monotonic() + 30
            while _State.inflight and time.monotonic() < deadline:
                time.sleep(0.01)
            with _State.lock:
                _State.requests = _State.max_inflight = 0
            return self._send(200, b"{}")
        if self.path != "/v1/chat/completions":
            return self._send(404, b"{}")
        with _State.lock:
            _State.requests += 1
            _State.inflight += 1
            _State.max_inflight = max(_State.max_inflight, _State.inflight)
        try:
            self._complete(json.loads(body))
        finally:
            with _State.lock:
                _State.inflight -= 1

    def _complete(self, req: dict) -> None:
        messages = {m["role"]: m["content"] for m in req["messages"]}
        system, user = messages.get("system", ""), messages.get("user", "")
        question = _section(user, "QUESTION")
        sleep = re.search(r"\[sleep:([0-9.]+)\]", question)
        time.sleep(_State.delay + (float(sleep.group(1)) if sleep else 0.0))
        script = re.search(r"\[reply:(\w+)\]", question)
        kind = script.group(1) if script else ""
        if kind.startswith("http"):
            return self._send(int(kind[4:]), b'{"error": "scripted"}')
        if kind == "notjson":
            return self._send(200, b"<html>not json</html>", "text/html")
        content = None if kind == "null" else _BROKEN.get(kind) or grade(system, user)
        reply = {"id": "chatcmpl-test", "object": "chat.completion", "model": req.get("model"),
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(reply).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: a benchmark opens many connections at once


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds every request waits")
    args = ap.parse_args()
    _State.delay = args.delay
    server = _Server(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

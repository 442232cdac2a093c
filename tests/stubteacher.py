"""A stand-in OpenAI-compatible chat endpoint for tests that need a teacher to answer, not a model: every
answer is "no" (so a pipeline's judges keep nothing) and each request is recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubTeacher:
    """A context manager serving on a free loopback port (`url`, `port`). With `login` (an Authorization
    header value) it wants that header: `logins` records whether each request carried it, and a wrong one
    gets a 401 that (unwisely) echoes the header, so a leaked credential would show."""

    def __init__(self, login: str | None = None) -> None:
        self.logins: list[bool] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                auth = self.headers.get("authorization", "")
                server.logins.append(login is None or auth == login)
                if login is None or auth == login:
                    status, body = 200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "no"},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
                else:
                    status, body = 401, {"error": {"message": f"bad login {auth}"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""The receiver under slow clients, over real sockets: `labcycle webhook serve` as its own process, a
stand-in Prefect API in this process that takes the events, and raw sockets that send their requests
slowly (slowloris). While 150 of them trickle their bodies a signed push is still accepted and /healthz
still answers; the slow ones end, 408 or closed, at the body deadline, however they trickle; a client
slow to send its headers is closed at the header deadline. The connection cap evicts the longest-waiting
client, not the newcomer (in-process uvicorn, same protocol class)."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.stack import BIN, free_port
from tests.test_webhook import SECRET, RecordingEmitter, github_push, post_github

HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 6.0
SLOW_CLIENTS = 150

BAD_SIGNATURE = "sha256=" + "0" * 64


class FakePrefectApi(BaseHTTPRequestHandler):
    """POST /api/events: 200, the events kept in `server.events`; what PrefectApiEmitter needs."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.rstrip("/").endswith("/events"):
            self.server.events.extend(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"null")

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@contextmanager
def fake_prefect_api() -> Iterator[tuple[str, list]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrefectApi)
    server.events = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api", server.events  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def wait_healthy(base: str, proc: subprocess.Popen | None, log: Path | None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the receiver exited with {proc.returncode}:\n{log.read_text()[-4000:] if log else ''}")
        assert time.monotonic() < deadline, log.read_text()[-4000:] if log else "the receiver did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory) -> Iterator[tuple[str, list, Path]]:
    """`labcycle webhook serve` with short deadlines; (base URL, events the fake Prefect API took, log)."""
    home = tmp_path_factory.mktemp("slow-receiver")
    config = home / "webhook.yaml"
    config.write_text(f"delivery_store: deliveries.sqlite\nheader_timeout_seconds: {HEADER_TIMEOUT}\n"
                      f"body_timeout_seconds: {BODY_TIMEOUT}\n")
    port = free_port()
    log = home / "receiver.log"
    with fake_prefect_api() as (api, events):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"LABCYCLE_WEBHOOK_SECRET": SECRET, "PREFECT_API_URL": api, "PREFECT_HOME": str(home / "prefect"),
                    "LABCYCLE_HOME": str(home / "labcycle"), "PYTHONUNBUFFERED": "1",
                    "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false"})  # the stand-in API has no CSRF tokens
        with log.open("w") as out:
            proc = subprocess.Popen([str(BIN / "labcycle"), "webhook", "serve", "--port", str(port),
                                     "--config", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=home, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, proc, log)
            yield base, events, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


class SlowClients:
    """Raw sockets, each sending `head` at once and then one byte of `trickle` every `every` seconds
    until the server answers (or, with `until_close`, closes). Records, per socket, when it ended and the
    status line if any."""

    def __init__(self, port: int, count: int, head: bytes, trickle: bytes, every: float, until_close: bool = False):
        self.sel = selectors.DefaultSelector()
        self.started = time.monotonic()
        self.socks: list[socket.socket] = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            if head:
                s.send(head)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ)
        self.trickle, self.every, self.until_close = trickle, every, until_close
        self.ended: dict[int, tuple[float, str]] = {}  # socket index -> (seconds after start, first line or "closed")
        self._received: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _end(self, i: int, how: str) -> None:
        if i not in self.ended:
            self.ended[i] = (time.monotonic() - self.started, how)
            try:
                self.sel.unregister(self.socks[i])
            except (KeyError, ValueError):
                pass
            self.socks[i].close()

    def _run(self) -> None:
        index = {s.fileno(): i for i, s in enumerate(self.socks)}
        sent, next_send = 0, time.monotonic() + self.every
        while not self._stop.is_set() and len(self.ended) < len(self.socks):
            for key, _ in self.sel.select(timeout=0.05):
                i = index[key.fd]
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except (ConnectionResetError, BrokenPipeError):
                    self._end(i, self._status(i) or "closed")
                    continue
                except BlockingIOError:
                    continue
                if not data:
                    self._end(i, self._status(i) or "closed")
                else:
                    self._received[i] = self._received.get(i, b"") + data
                    if b"\r\n\r\n" in self._received[i] and not self.until_close:
                        self._end(i, self._status(i))
            if time.monotonic() >= next_send and sent < len(self.trickle):
                byte = self.trickle[sent:sent + 1]
                sent += 1
                next_send += self.every
                for i, s in enumerate(self.socks):
                    if i in self.ended:
                        continue
                    try:
                        s.send(byte)
                    except (BrokenPipeError, ConnectionResetError):
                        self._end(i, self._status(i) or "closed")
                    except BlockingIOError:
                        pass

    def _status(self, i: int) -> str:
        return self._received.get(i, b"").split(b"\r\n", 1)[0].decode("latin-1")

    def open_count(self) -> int:
        return len(self.socks) - len(self.ended)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for i in range(len(self.socks)):
            if i not in self.ended:
                self.socks[i].close()


def _slow_body_head(port: int, path: str = "/github", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-GitHub-Event: push\r\n"
            f"X-GitHub-Delivery: slow\r\nX-Hub-Signature-256: {BAD_SIGNATURE}\r\n{extra}"
            "Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n").encode()


@pytest.mark.slow
def test_150_slow_bodies_do_not_lock_out_a_signed_push_or_healthz(receiver):
    base, events, log = receiver
    port = _port(base)
    slow = SlowClients(port, SLOW_CLIENTS, _slow_body_head(port), trickle=b"{" * 200, every=0.5)
    try:
        time.sleep(1.0)  # every slow request is in its body phase
        assert slow.open_count() == SLOW_CLIENTS, slow.ended
        with httpx.Client(base_url=base, timeout=10) as client:
            t0 = time.monotonic()
            health = client.get("/healthz")
            health_s = time.monotonic() - t0
            t0 = time.monotonic()
            res = post_github(client, github_push(), delivery="signed-while-slow")
            push_s = time.monotonic() - t0
        still_open = slow.open_count()
        print(f"\nwith {still_open} slow clients open: /healthz {health.status_code} in {health_s:.3f}s, "
              f"signed push {res.status_code} in {push_s:.3f}s")
        assert health.status_code == 200 and health_s < 3
        assert res.status_code == 202, res.text
        assert push_s < 3
        assert still_open == SLOW_CLIENTS  # they were all there while the push went through
        assert [e["payload"]["delivery"] for e in events] == ["signed-while-slow"]

        slow.wait(timeout=BODY_TIMEOUT + 8)
    finally:
        slow.close()
    ends = sorted(slow.ended.values())
    assert len(ends) == SLOW_CLIENTS, f"{SLOW_CLIENTS - len(ends)} slow clients still open after the deadline"
    statuses = {how for _, how in ends}
    assert statuses <= {"HTTP/1.1 408 Request Timeout", "closed"}, statuses
    first, last = ends[0][0], ends[-1][0]
    print(f"slow clients ended between {first:.2f}s and {last:.2f}s ({statuses})")
    # Counted from the request's first byte: neither before the deadline nor long after, whatever the trickle.
    assert BODY_TIMEOUT - 0.5 <= first and last <= BODY_TIMEOUT + 4, (first, last)
    text = log.read_text()
    assert text.count("-> 408 rejected") >= SLOW_CLIENTS // 2, text[-3000:]
    assert "Exception in ASGI application" not in text and "Traceback" not in text, text[-3000:]
    assert SECRET not in text


@pytest.mark.slow
def test_slow_headers_are_closed_at_the_header_deadline(receiver):
    base, _, log = receiver
    port = _port(base)
    head = _slow_body_head(port)
    # Part of the request line at once, then a byte every 0.4 s: never complete within the deadline.
    trickling = SlowClients(port, 20, head[:10], trickle=head[10:], every=0.4)
    silent = SlowClients(port, 5, b"", trickle=b"", every=1.0)  # connect and say nothing
    try:
        time.sleep(1.0)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        trickling.wait(timeout=HEADER_TIMEOUT + 6)
        silent.wait(timeout=2)
    finally:
        trickling.close()
        silent.close()
    for clients in (trickling, silent):
        ends = sorted(clients.ended.values())
        assert len(ends) == len(clients.socks), "a slow-headers client is still open after the deadline"
        assert {how for _, how in ends} <= {"HTTP/1.1 408 Request Timeout", "closed"}, ends
        first, last = ends[0][0], ends[-1][0]
        print(f"\nslow headers ended between {first:.2f}s and {last:.2f}s")
        assert HEADER_TIMEOUT - 0.5 <= first and last <= HEADER_TIMEOUT + 3, (first, last)
    assert "did not complete its request headers" in log.read_text()


@pytest.mark.slow
def test_an_early_answer_closes_the_connection_however_the_body_trickles(receiver):
    """A wrong GitLab token is answered 401 before the body: the trickle that follows cannot keep the
    connection open (uvicorn alone would keep it alive while bytes arrive)."""
    base, _, _ = receiver
    port = _port(base)
    head = (f"POST /gitlab HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Gitlab-Event: Push Hook\r\n"
            "X-Gitlab-Token: wrong\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n").encode()
    clients = SlowClients(port, 10, head, trickle=b"{" * 100, every=0.2, until_close=True)
    try:
        clients.wait(timeout=5)
    finally:
        clients.close()
    ends = sorted(clients.ended.values())
    assert len(ends) == 10 and {how for _, how in ends} == {"HTTP/1.1 401 Unauthorized"}, ends
    assert ends[-1][0] < 2, ends


@pytest.mark.slow
def test_the_connection_cap_evicts_the_longest_waiting_client_not_a_delivery(tmp_path):
    """max_connections 16, 20 slow clients: the oldest are evicted (408), a signed push is still 202."""
    import uvicorn

    from labcycle.webhook import ReceiverSettings, create_app
    from labcycle.webhook.server import protocol_class

    settings = ReceiverSettings(secret=SECRET, delivery_store=tmp_path / "deliveries.sqlite", max_connections=16,
                                header_timeout_seconds=20, body_timeout_seconds=20)
    emitter = RecordingEmitter()
    port = free_port()
    config = uvicorn.Config(create_app(settings, emitter=emitter), host="127.0.0.1", port=port, log_config=None,
                            access_log=False, http=protocol_class(settings, settings.max_connections))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    slow = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, None, None, timeout=30)
        slow = SlowClients(port, 20, _slow_body_head(port), trickle=b"{" * 100, every=0.5)
        time.sleep(1.0)
        assert slow.open_count() <= 16
        with httpx.Client(base_url=base, timeout=10) as client:
            res = post_github(client, github_push(), delivery="signed-at-the-cap")
        assert res.status_code == 202, res.text
        assert len(emitter.events) == 1
        evicted = [how for _, how in slow.ended.values()]
        assert len(evicted) >= 5 and set(evicted) <= {"HTTP/1.1 408 Request Timeout", "closed"}, evicted
        # The first connections were the longest waiting: they went first.
        assert set(slow.ended) >= {0, 1, 2, 3}, sorted(slow.ended)
    finally:
        if slow is not None:
            slow.close()
        server.should_exit = True
        thread.join(15)


def test_the_receiver_settings_take_the_deadlines(tmp_path):
    from labcycle.webhook import load_settings

    path = tmp_path / "webhook.yaml"
    path.write_text("header_timeout_seconds: 2.5\nbody_timeout_seconds: 7\nmax_connections: 300\n")
    settings = load_settings(path, environ={"LABCYCLE_WEBHOOK_SECRET": "s"})
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds, settings.max_connections) == (2.5, 7.0, 300)
    defaults = load_settings(None, environ={"LABCYCLE_WEBHOOK_SECRET": "s"})
    assert (defaults.header_timeout_seconds, defaults.body_timeout_seconds, defaults.max_connections) == (10, 10, 1000)
    path.write_text("body_timeout_seconds: 0\n")
    from labcycle.errors import LabcycleError

    with pytest.raises(LabcycleError, match="body_timeout_seconds"):
        load_settings(path, environ={"LABCYCLE_WEBHOOK_SECRET": "s"})


def test_a_trickled_body_is_408_at_the_deadline_in_process():
    """The app's own deadline (no server extension): counted once for the whole body, not per chunk."""
    import anyio

    from labcycle.webhook.app import BodyBudget, Rejected, read_body
    from starlette.requests import Request

    async def main() -> None:
        async def receive():  # a byte every 0.2 s, forever
            await anyio.sleep(0.2)
            return {"type": "http.request", "body": b"x", "more_body": True}

        scope = {"type": "http", "method": "POST", "path": "/github", "headers": [(b"content-length", b"1000")]}
        budget = BodyBudget(10_000)
        t0 = time.monotonic()
        with pytest.raises(Rejected) as info:
            await read_body(Request(scope, receive), 4096, timeout=1.0, budget=budget)
        assert info.value.status == 408
        assert 0.9 <= time.monotonic() - t0 < 2
        assert budget.used == 0

        scope["extensions"] = {"labcycle.request_started": time.monotonic() - 5}  # started long ago
        with pytest.raises(Rejected) as info:
            await read_body(Request(scope, receive), 4096, timeout=1.0)
        assert info.value.status == 408

    anyio.run(main)


def test_the_connection_cap_fits_the_open_files_limit(monkeypatch):
    import resource

    from labcycle.webhook import server

    limits = {"now": (200, 300)}

    def setrlimit(which, value):  # noqa: ANN001
        limits["now"] = value

    monkeypatch.setattr(resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert server.connection_cap(100) == 100 and limits["now"] == (200, 300)  # enough already
    assert server.connection_cap(1000) == 300 - server.FD_RESERVE  # raised to the hard limit, then capped
    assert limits["now"] == (300, 300)
    limits["now"] = (200, 5000)
    assert server.connection_cap(1000) == 1000 and limits["now"] == (1000 + server.FD_RESERVE, 5000)

"""The receiver's HTTP connections: uvicorn's h11 protocol with the bounds a public endpoint needs.

Uvicorn bounds idle keep-alive connections but not a client that is slow to send its request: one that
sends half a request line, or headers and then a byte a second, holds its connection for as long as it
likes, and uvicorn's limit_concurrency counts such connections, so a few dozen of them answer 503 to
everyone else. Here, per connection:

- headers: a request's headers must be complete `header_timeout_seconds` after its first byte (after the
  connection opened, for the first request); otherwise the connection gets a 408 and is closed;
- body: the time the app may spend reading a body ends `body_timeout_seconds` after the request's first
  byte (the app answers 408; see app.read_body), whatever the pace of the chunks;
- a response sent before the request body was read (401, 408, 413) closes the connection: the rest of
  the body is discarded for a moment, then the connection is closed, so a trickle cannot keep it open;
- at most `max_connections` connections: one more evicts the connection that has waited longest for
  its client (headers or body not yet complete); none waiting -> the newcomer gets a 503.
  Deliveries being processed (body read, event being emitted) are never evicted.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from labcycle.webhook.app import REQUEST_STARTED
from labcycle.webhook.settings import ReceiverSettings

logger = logging.getLogger("labcycle.webhook")

# After an early response, how long the rest of a request body is read and dropped before the close
# (closing with unread data makes the kernel reset the connection, and the client may lose the answer).
LINGER_SECONDS = 1.0
# At most one log line about the connection cap per this many seconds.
CAP_LOG_SECONDS = 10.0
# File descriptors kept free for everything but client connections: the delivery store, logs, the
# connections to the Prefect API.
FD_RESERVE = 64



def _raw_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


_TIMEOUT_408 = _raw_response(408, "Request Timeout", "the request took too long")
_BUSY_503 = _raw_response(503, "Service Unavailable", "the receiver is at its connection cap")


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the open-files limit cannot hold that many connections. The soft limit is
    raised towards the hard one first when it is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    cap = max(soft - FD_RESERVE, 1)
    logger.warning("max_connections lowered from %d to %d: the open-files limit is %d (ulimit -n)", wanted, cap, soft)
    return cap


class BoundedH11Protocol(H11Protocol):
    """H11Protocol with a header deadline, the request's start time for the app's body deadline, a close
    after early answers and a connection cap; see the module docstring. `protocol_class` sets the class
    attributes per receiver."""

    header_timeout: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_started = time.monotonic()
        self._discarding = False

    # -- connection count ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._request_started = time.monotonic()
        self._arm_header_timer()
        if len(self.connections) > self.max_connections:
            victim = self._longest_waiting()
            if victim is None:
                self._cap_reached("answered 503 to a new connection: every connection is busy")
                self._close_with(_BUSY_503)
            else:
                self._cap_reached("closed the connection that waited longest for its client "
                                  f"({time.monotonic() - victim._request_started:.1f}s)")
                victim._close_with(_TIMEOUT_408)

    _cap_logged_at = float("-inf")
    _cap_unlogged = 0

    def _cap_reached(self, what: str) -> None:
        # One line per CAP_LOG_SECONDS at most: under a flood of connections the log stays readable.
        cls = BoundedH11Protocol
        cls._cap_unlogged += 1
        now = time.monotonic()
        if now - cls._cap_logged_at >= CAP_LOG_SECONDS:
            logger.warning("connection cap (%d) reached %d time(s) since the last such line; last: %s",
                           self.max_connections, cls._cap_unlogged, what)
            cls._cap_logged_at, cls._cap_unlogged = now, 0

    def _waiting_for_client(self) -> bool:
        """True while this connection waits for its client: request headers or body incomplete and no
        response begun (keep-alive idle included)."""
        if self.transport is None or self.transport.is_closing():
            return False
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            return False
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self._app_busy()

    def _app_busy(self) -> bool:
        # The body is read and the app works on it (verifying, emitting): not waiting for the client.
        return self.cycle is not None and not self.cycle.more_body and not self.cycle.response_complete

    def _longest_waiting(self) -> BoundedH11Protocol | None:
        waiting = [c for c in self.connections
                   if c is not self and isinstance(c, BoundedH11Protocol) and c._waiting_for_client()]
        return min(waiting, key=lambda c: c._request_started, default=None)

    def _close_with(self, raw_response: bytes) -> None:
        """Answer with a prepared response, whatever the request's state, and close."""
        self._cancel_header_timer()
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(raw_response)
        if self.cycle is not None and not self.cycle.response_complete:
            # The app's task sees a disconnect on its next receive(); its answer, if any, is dropped.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    # -- header deadline ---------------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and self.transport is not None and not self.transport.is_closing():
            logger.info("a client did not complete its request headers within %gs: connection closed",
                        self.header_timeout)
            self._close_with(_TIMEOUT_408)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # the answer is out; the rest of the body is dropped until the close
        if self.conn.their_state is h11.IDLE and self._header_timer is None:
            # The first byte of a new request on a kept-alive connection: its clock starts now.
            self._request_started = time.monotonic()
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def handle_events(self) -> None:
        scope = self.scope
        super().handle_events()
        if self.scope is not None and self.scope is not scope:
            # A new request: its task is created but has not run yet, so the app sees this.
            extensions = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
            extensions[REQUEST_STARTED] = self._request_started

    # -- responses sent before the request body was read ----------------------------------------------

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Answered (401, 408, 413) with body still to come: no keep-alive for this connection.
            self.server_state.total_requests += 1
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
            return
        # A request already buffered behind this one (pipelining) starts its clock no earlier than now.
        self._request_started = time.monotonic()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def protocol_class(settings: ReceiverSettings, max_connections: int) -> type[BoundedH11Protocol]:
    """The protocol class for uvicorn's `http=`, bound to these settings."""
    return type("ReceiverH11Protocol", (BoundedH11Protocol,), {
        "header_timeout": settings.header_timeout_seconds,
        "max_connections": max_connections,
    })

"""The receiver's ASGI app: POST /github, POST /gitlab, GET /healthz.

A request goes: bounded body (size, time, memory) -> authentication -> event type -> payload ->
repository, branch, tag and deletion filters -> replay check -> `taxonomy.push` on the Prefect API ->
202. Answers: 401 bad or missing signature/token, 413 body over max_body_bytes, 408 body not complete
body_timeout_seconds after the request's first byte, 400 unreadable payload (or a clone URL, ref or
commit id that may not be forwarded: payloads.clone_url_problem, ref_problem), 200 with a reason for
anything deliberately ignored (ping included), 202 accepted with the event id, 503 when the Prefect API
did not take the event (the delivery is then forgotten, so its redelivery is accepted) or when too many
bodies are in memory at once.
One log line per request says provider, delivery, repository, branch and verdict; never the secret,
the signature or the token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labcycle.errors import LabcycleError
from labcycle.webhook.events import EVENT, Emitter, PrefectApiEmitter, push_event
from labcycle.webhook.payloads import PayloadError, Push, PushFilter, github_push, gitlab_push, printable
from labcycle.webhook.settings import SECRET_ENV, ReceiverSettings
from labcycle.webhook.store import DeliveryStore

logger = logging.getLogger("labcycle.webhook")

_DELIVERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# The scope extension where the server (server.BoundedH11Protocol) puts the monotonic time of the
# request's first byte; without it (another server, tests) the body clock starts when the app reads.
REQUEST_STARTED = "labcycle.request_started"
# Bodies held in memory at once, all requests together, are bounded by this many max_body_bytes.
MAX_BUFFERED_BODIES = 64


class Rejected(Exception):
    """Ends a request with an error status; `reason` goes into the response and the log line."""

    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail  # for the log line only


@dataclass
class Outcome:
    """What the request's log line reports, filled in as the request is read."""

    provider: str
    delivery: str | None
    repo: str | None = None
    branch: str | None = None


def _printable(value: str | None, limit: int = 120) -> str:
    # Values from headers and payloads end up in a log line: no control characters, bounded length.
    return printable(value, limit) if value else "-"


class BodyBudget:
    """Bytes of request bodies held in memory, all requests together (one event loop: no lock needed).
    Counted as bytes arrive, not as declared, so clients that trickle hold almost nothing of it."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.total:
            raise Rejected(503, "too many request bodies in memory at once; redeliver this delivery later")
        self.used += size

    def give_back(self, size: int) -> None:
        self.used = max(self.used - size, 0)


async def read_body(request: Request, limit: int, timeout: float | None = None,
                    budget: BodyBudget | None = None) -> bytes:
    """The body, at most `limit` bytes: a declared Content-Length over the limit is refused before
    anything is read, and a body without one (chunked) is counted as it arrives. With `timeout`, the whole
    body must be in `timeout` seconds after the request's first byte (408 otherwise), however it is paced.
    With `budget`, the bytes are taken from it as they arrive; the caller gives back len(body) when done
    with it (a refused body is given back here)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Rejected(400, "Content-Length is not a number") from None
        if size > limit:
            raise Rejected(413, f"the body is over {limit} bytes")
    chunks, size = [], 0
    remaining = float("inf")
    if timeout is not None:
        started = request.scope.get("extensions", {}).get(REQUEST_STARTED, time.monotonic())
        remaining = started + timeout - time.monotonic()
    complete = False
    try:
        with anyio.move_on_after(max(remaining, 0)) as deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, f"the body is over {limit} bytes")
                if budget is not None:
                    budget.take(len(chunk))
                chunks.append(chunk)
        if deadline.cancelled_caught:
            raise Rejected(408, f"the body was not complete within {timeout:g}s of the request's start")
        complete = True
    except ClientDisconnect:
        raise Rejected(400, "the client went away before the body was complete") from None
    finally:
        if budget is not None and not complete:
            budget.give_back(sum(map(len, chunks)))
    return b"".join(chunks)


def verify_github_signature(header: str | None, body: bytes, secret: bytes) -> None:
    """X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the secret>."""
    if not header:
        raise Rejected(401, "missing X-Hub-Signature-256 header; set the webhook's secret in GitHub")
    scheme, _, given = header.partition("=")
    if scheme != "sha256" or not given:
        raise Rejected(401, "X-Hub-Signature-256 is not of the form sha256=<hex digest>")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, given.strip().encode("latin-1")):
        raise Rejected(401, "the signature does not match the body; check the webhook's secret")


def verify_gitlab_token(header: str | None, secret: bytes) -> None:
    """X-Gitlab-Token carries the secret itself. Comparing digests keeps the time independent of the
    secret's length as well as of its content."""
    if not header:
        raise Rejected(401, "missing X-Gitlab-Token header; set the webhook's secret token in GitLab")
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes GitLab sent.
    given = hashlib.sha256(header.encode("latin-1")).digest()
    if not hmac.compare_digest(given, hashlib.sha256(secret).digest()):
        raise Rejected(401, "the token does not match; check the webhook's secret token")


def parse_body(body: bytes, content_type: str) -> Any:
    """JSON, or GitHub's form encoding (payload=<json>) when the webhook was set up that way."""
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            values = parse_qs(body.decode("utf-8")).get("payload")
            if not values:
                raise Rejected(400, "a form body without a payload field; set the webhook's content type to "
                                    "application/json")
            return json.loads(values[0])
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected(400, f"the body is not valid JSON ({exc})"[:200]) from None


class Receiver:
    def __init__(self, settings: ReceiverSettings, emitter: Emitter, store: DeliveryStore):
        self.settings = settings
        self.emitter = emitter
        self.store = store
        self.filter = PushFilter.from_settings(settings.repositories, settings.branches)
        self._secret = settings.secret.encode("utf-8")
        self.budget = BodyBudget(MAX_BUFFERED_BODIES * settings.max_body_bytes)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_seconds,
                               self.budget)

    async def github(self, request: Request) -> JSONResponse:
        headers = request.headers
        outcome = Outcome("github", headers.get("x-github-delivery"))
        body = b""
        try:
            body = await self._body(request)
            verify_github_signature(headers.get("x-hub-signature-256"), body, self._secret)
            kind = headers.get("x-github-event", "")
            if kind == "ping":
                return self._reply(outcome, 200, "ok", "ping: the webhook reaches the receiver and the secret matches")
            if kind != "push":
                return self._reply(outcome, 200, "ignored", f"ignored: {_printable(kind, 40)} events are not pushes")
            push = self._read(github_push, body, headers.get("content-type", ""))
            return await self._push(outcome, push, body)
        except Rejected as exc:
            return self._reply(outcome, exc.status, "rejected", exc.reason, detail=exc.detail)
        finally:
            self.budget.give_back(len(body))

    async def gitlab(self, request: Request) -> JSONResponse:
        headers = request.headers
        # Idempotency-Key stays the same when GitLab retries a delivery; older GitLab sends only the event UUID.
        outcome = Outcome("gitlab", headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid"))
        body = b""
        try:
            # The token is a header: a wrong one is refused before the body is read.
            verify_gitlab_token(headers.get("x-gitlab-token"), self._secret)
            body = await self._body(request)
            kind = headers.get("x-gitlab-event", "")
            if kind != "Push Hook":
                return self._reply(outcome, 200, "ignored", f"ignored: {_printable(kind, 40)} events are not pushes")
            push = self._read(gitlab_push, body, headers.get("content-type", ""))
            return await self._push(outcome, push, body)
        except Rejected as exc:
            return self._reply(outcome, exc.status, "rejected", exc.reason, detail=exc.detail)
        finally:
            self.budget.give_back(len(body))

    def _read(self, reader, body: bytes, content_type: str) -> Push:  # type: ignore[no-untyped-def]
        try:
            return reader(parse_body(body, content_type), self.settings.allow_local_repositories)
        except PayloadError as exc:
            raise Rejected(400, f"not a push payload: {exc}") from None

    async def _push(self, outcome: Outcome, push: Push, body: bytes) -> JSONResponse:
        outcome.repo, outcome.branch = push.repo_name, push.branch or push.ref
        if push.is_tag:
            return self._reply(outcome, 200, "ignored", f"ignored: tag push ({_printable(push.ref)})")
        if push.branch is None:
            return self._reply(outcome, 200, "ignored", f"ignored: {_printable(push.ref)} is not a branch")
        if not self.filter.repository_allowed(push):
            return self._reply(outcome, 200, "ignored",
                               f"ignored: repository {_printable(push.repo_name)} is not configured")
        if not self.filter.branch_allowed(push.branch):
            return self._reply(outcome, 200, "ignored", f"ignored: branch {_printable(push.branch)} is not configured")
        if push.deleted:
            return self._reply(outcome, 200, "ignored", "ignored: branch deletion")
        digest = hashlib.sha256(body).hexdigest()
        # Without a delivery id (a sender other than GitHub or a recent GitLab) the body digest stands in.
        delivery = outcome.delivery or f"sha256-{digest[:32]}"
        if not _DELIVERY_ID.match(delivery):
            raise Rejected(400, "the delivery id header is not an id (letters, digits, . _ : -, at most 128)")
        outcome.delivery = delivery
        if not await anyio.to_thread.run_sync(self.store.claim, push.provider, delivery, digest):
            return self._reply(outcome, 200, "ignored", "ignored: replay (this delivery or its body was already accepted)")
        event = push_event(push, delivery)
        try:
            with anyio.fail_after(self.settings.emit_timeout_seconds):
                await self.emitter(event)
        except Exception as exc:
            await anyio.to_thread.run_sync(self.store.release, push.provider, delivery)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise Rejected(503, "the Prefect API did not take the event; redeliver this delivery later",
                           detail=_printable(detail, 300)) from None
        return self._reply(outcome, 202, "accepted", f"{EVENT} emitted", event_id=str(event.id),
                           event=EVENT, commit=push.after, changed=len(push.changed), removed=len(push.removed))

    def _reply(self, outcome: Outcome, status: int, verdict: str, reason: str, detail: str = "",
               **extra: Any) -> JSONResponse:
        summary = reason if reason.startswith(f"{verdict}:") else f"{verdict}: {reason}"
        logger.info("%s delivery=%s repo=%s branch=%s -> %d %s%s", outcome.provider, _printable(outcome.delivery),
                    _printable(outcome.repo), _printable(outcome.branch), status, summary,
                    f" ({detail})" if detail else "")
        body = {"status": verdict, "reason": reason, **extra}
        if outcome.delivery:
            body["delivery"] = _printable(outcome.delivery)
        return JSONResponse(body, status_code=status)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(settings: ReceiverSettings, emitter: Emitter | None = None) -> Starlette:
    """The receiver as an ASGI app. `emitter` is awaited with each accepted push's Prefect Event and must
    raise when the event was not delivered; default: PrefectApiEmitter (POST to the Prefect API)."""
    if not settings.secret:
        raise LabcycleError(f"no webhook secret: set {SECRET_ENV} or name a Prefect Secret block in secret_block",
                            where=settings.source or None)
    store = DeliveryStore(settings.store_path, keep=settings.keep_deliveries, keep_days=settings.keep_days)
    receiver = Receiver(settings, emitter or PrefectApiEmitter(), store)
    app = Starlette(routes=[
        Route("/github", receiver.github, methods=["POST"]),
        Route("/gitlab", receiver.gitlab, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.receiver = receiver
    return app

"""The `taxonomy.push` event a verified push becomes, and the emitter that hands it to the Prefect API.

Why not `prefect.events.emit_event`: it queues the event for a background worker and returns at once; a
failure to deliver is only logged, later, by that worker. A webhook receiver that answered 202 then
would tell GitHub "accepted" for an event that may never arrive, and GitHub would not redeliver it.
PrefectApiEmitter POSTs the event to the API's `/events` endpoint with Prefect's own client (so
PREFECT_API_URL, PREFECT_API_KEY / auth string and TLS settings apply as everywhere else) and returns
only once the server took it; the receiver answers 503 otherwise.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from labcycle.webhook.payloads import Push

if TYPE_CHECKING:
    from prefect.events import Event

EVENT = "taxonomy.push"
RESOURCE_PREFIX = "taxonomy.repo."
# Event ids derive from (provider, delivery id): one delivery is one event id, wherever it is retried.
_EVENT_NAMESPACE = uuid.UUID("3f0c2a6e-6b8e-4f55-9a55-1d2a0d9b7c41")

Emitter = Callable[["Event"], Awaitable[Any]]


def repo_slug(full_name: str) -> str:
    """owner/name -> owner.name: lower case, one dot per path level, other characters as '-'.
    Automations match `taxonomy.repo.*` or one repository's id."""
    parts = [re.sub(r"[^a-z0-9_-]+", "-", part) for part in full_name.lower().strip("/").split("/")]
    return ".".join(p for p in parts if p)


def push_payload(push: Push, delivery: str) -> dict[str, Any]:
    return {
        "repo": push.repo_url,
        "repo_name": push.repo_name,
        "branch": push.branch,
        "commit": push.after,
        "before": push.before,
        "changed": list(push.changed),
        "removed": list(push.removed),
        # False when the payload listed only some of the pushed commits: changed/removed may then miss
        # leaves, and the flow should diff the commits itself (it does anyway, against its base ref).
        "complete": push.complete,
        "forced": push.forced,
        "provider": push.provider,
        "delivery": delivery,
        "pusher": push.pusher,
    }


def push_event(push: Push, delivery: str) -> Event:
    from prefect.events import Event

    return Event(
        id=uuid.uuid5(_EVENT_NAMESPACE, f"{push.provider}:{delivery}"),
        occurred=datetime.now(timezone.utc),
        event=EVENT,
        resource={
            "prefect.resource.id": RESOURCE_PREFIX + repo_slug(push.repo_name),
            "prefect.resource.name": push.repo_name,
            "taxonomy.provider": push.provider,
            "taxonomy.branch": push.branch or "",
        },
        payload=push_payload(push, delivery),
    )


class PrefectApiEmitter:
    """POST /events on the Prefect API that Prefect's settings name; returns once the server accepted
    the event, raises otherwise (PrefectHTTPStatusError, httpx errors)."""

    def __init__(self) -> None:
        # Import Prefect's client now, at start-up, not during the first delivery (seconds on a busy
        # machine, against GitHub's 10 s timeout).
        import importlib

        for module in ("prefect.client.orchestration", "prefect.events"):
            importlib.import_module(module)

    async def __call__(self, event: Event) -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await client.request("POST", "/events", json=[event.model_dump(mode="json")])


def prefect_api_url() -> str | None:
    """The API URL Prefect's settings (environment, profile) name; None when unset."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url

"""The git-push webhook receiver: open-source Prefect has no webhooks, so this small ASGI app verifies
GitHub and GitLab push deliveries and emits `taxonomy.push` events to the Prefect API.

    LABCYCLE_WEBHOOK_SECRET=... PREFECT_API_URL=http://PREFECT_HOST:4200/api labcycle webhook serve --config webhook.yaml

The settings file is checked against schemas/webhook.schema.json.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from labcycle.errors import LabcycleError
from labcycle.webhook.app import create_app
from labcycle.webhook.events import EVENT, prefect_api_url
from labcycle.webhook.settings import ReceiverSettings, load_settings

__all__ = ["EVENT", "ReceiverSettings", "create_app", "load_settings", "serve"]

logger = logging.getLogger("labcycle.webhook")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def serve(host: str = "127.0.0.1", port: int = 8484, settings: ReceiverSettings | None = None) -> None:
    """Run the receiver with uvicorn until interrupted. Events go to the Prefect API that Prefect's own
    settings name (PREFECT_API_URL in the environment or the active profile)."""
    import uvicorn

    settings = load_settings() if settings is None else settings
    api = prefect_api_url()
    if not api:
        # Without it Prefect's client would start a throwaway local server that no automation listens to.
        raise LabcycleError("PREFECT_API_URL is not set: point it at the Prefect server whose automations should "
                            "receive taxonomy.push (e.g. prefect config set PREFECT_API_URL=http://HOST:4200/api)")
    app = create_app(settings)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    # Slow clients are bounded per connection (header and body deadlines, a connection cap that evicts
    # the longest-waiting one) instead of uvicorn's limit_concurrency, which they could fill; memory is
    # bounded by the app's body budget. See labcycle/webhook/server.py.
    from labcycle.webhook.server import connection_cap, protocol_class

    max_connections = connection_cap(settings.max_connections)
    logger.info("labcycle webhook receiver on http://%s:%d (POST /github, POST /gitlab, GET /healthz); %s; "
                "headers within %gs, bodies within %gs of a request's start; at most %d connections; "
                "events go to %s", host, port, settings.describe(), settings.header_timeout_seconds,
                settings.body_timeout_seconds, max_connections, _without_userinfo(api))
    # access_log off: the receiver logs its own line per request, with the verdict.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, server_header=False,
                http=protocol_class(settings, max_connections), timeout_keep_alive=5)

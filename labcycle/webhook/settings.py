"""The receiver's settings: an optional webhook.yaml checked against schemas/webhook.schema.json, the
environment on top, and the shared secret from $LABCYCLE_WEBHOOK_SECRET or a Prefect Secret block.

The secret never comes from a file and never appears in a repr, a log line or a response.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from labcycle.errors import LabcycleError

SECRET_ENV = "LABCYCLE_WEBHOOK_SECRET"
REPOSITORIES_ENV = "LABCYCLE_WEBHOOK_REPOSITORIES"
BRANCHES_ENV = "LABCYCLE_WEBHOOK_BRANCHES"


@dataclass(frozen=True)
class ReceiverSettings:
    secret: str = field(default="", repr=False)
    repositories: tuple[str, ...] = ()  # full names and/or URLs; empty: every repository
    branches: tuple[str, ...] = ()  # names or fnmatch patterns; empty: every branch
    max_body_bytes: int = 1024 * 1024
    delivery_store: Path | None = None  # None: $LABCYCLE_HOME/webhook/deliveries.sqlite
    keep_deliveries: int = 10_000
    keep_days: float = 7.0
    emit_timeout_seconds: float = 8.0
    header_timeout_seconds: float = 10.0  # from a request's first byte to its complete headers
    body_timeout_seconds: float = 10.0  # from a request's first byte to its complete body
    max_connections: int = 1000  # open client connections; lowered to what the open-files limit allows
    secret_block: str | None = None
    allow_local_repositories: bool = False  # accept pushes whose clone URL is a local path or file://
    source: str = ""  # the settings file, for messages; empty: defaults and environment only

    @property
    def store_path(self) -> Path:
        if self.delivery_store is not None:
            return Path(self.delivery_store)
        from labcycle.env import state_dir

        return state_dir() / "webhook" / "deliveries.sqlite"

    def describe(self) -> str:
        """One line for the start-up log: what is accepted, never the secret."""
        repos = ", ".join(self.repositories) or "every repository"
        branches = ", ".join(self.branches) or "every branch"
        return (f"accepting pushes to {repos} on {branches}; bodies up to {self.max_body_bytes} bytes; "
                f"deliveries remembered in {self.store_path}")


def _schema_message(err: Any, key: str) -> str:
    if err.validator == "type" and key.split(".")[0] in ("repositories", "branches") and key.count(".") == 1:
        return f"{err.message}; quote the value (YAML reads on, no, yes and numbers as other types)"
    return str(err.message)


def from_mapping(data: Any, source: str = "webhook settings",
                 locate: Callable[[tuple], tuple[int, int]] | None = None,
                 base_dir: Path | None = None) -> ReceiverSettings:
    """Typed settings from parsed YAML (no secret yet); `locate` maps a key path to (line, column)."""
    from labcycle.schemas import check

    data = {} if data is None else data
    if isinstance(data, dict) and "secret" in data:
        raise LabcycleError("secret: the secret is never read from a file; set LABCYCLE_WEBHOOK_SECRET or name a "
                            "Prefect Secret block in secret_block", where=_where(source, locate, ("secret",)))
    check(data, "webhook.schema.json", source, locate, _schema_message)
    store = data.get("delivery_store")
    if store is not None and base_dir is not None:
        store = base_dir / Path(store).expanduser()
    return ReceiverSettings(
        repositories=tuple(data.get("repositories", ())),
        branches=tuple(data.get("branches", ())),
        max_body_bytes=data.get("max_body_bytes", ReceiverSettings.max_body_bytes),
        delivery_store=Path(store) if store is not None else None,
        keep_deliveries=data.get("keep_deliveries", ReceiverSettings.keep_deliveries),
        keep_days=float(data.get("keep_days", ReceiverSettings.keep_days)),
        emit_timeout_seconds=float(data.get("emit_timeout_seconds", ReceiverSettings.emit_timeout_seconds)),
        header_timeout_seconds=float(data.get("header_timeout_seconds", ReceiverSettings.header_timeout_seconds)),
        body_timeout_seconds=float(data.get("body_timeout_seconds", ReceiverSettings.body_timeout_seconds)),
        max_connections=data.get("max_connections", ReceiverSettings.max_connections),
        secret_block=data.get("secret_block"),
        allow_local_repositories=data.get("allow_local_repositories", False),
        source=source,
    )


def _where(source: str, locate: Callable[[tuple], tuple[int, int]] | None, path: tuple) -> str:
    return f"{source}:{':'.join(map(str, locate(path)))}" if locate else source


def _list_env(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  resolve_secret: bool = True) -> ReceiverSettings:
    """The settings in `path` (or the defaults), with the environment on top and the secret resolved.

    Raises LabcycleError naming the file and line of a bad key, or saying how to provide a missing secret."""
    environ = os.environ if environ is None else environ
    if path is None:
        settings = ReceiverSettings()
    else:
        from labcycle.yaml_reader import read_yaml

        path = Path(path)
        parsed = read_yaml(path) if path.is_file() else None
        if parsed is None:
            raise LabcycleError("webhook settings file not found; pass an existing YAML file to --config", where=str(path))
        bad = [p for p in parsed.problems if p.rule != "file/empty"]
        if bad:
            p = bad[0]
            message = ("the top level must be a mapping of receiver settings (repositories:, branches:, ...)"
                       if p.rule == "file/not-mapping" else p.message)
            raise LabcycleError(message, where=f"{path}:{p.line}:{p.column}")
        settings = from_mapping(parsed.data, source=str(path), locate=parsed.where, base_dir=path.resolve().parent)
    if environ.get(REPOSITORIES_ENV, "").strip():
        settings = replace(settings, repositories=_list_env(environ[REPOSITORIES_ENV]))
    if environ.get(BRANCHES_ENV, "").strip():
        settings = replace(settings, branches=_list_env(environ[BRANCHES_ENV]))
    if resolve_secret:
        settings = replace(settings, secret=_secret(settings, environ))
    return settings


def _secret(settings: ReceiverSettings, environ: Mapping[str, str]) -> str:
    if environ.get(SECRET_ENV):
        return environ[SECRET_ENV]
    if not settings.secret_block:
        raise LabcycleError(f"no webhook secret: set {SECRET_ENV} or name a Prefect Secret block in secret_block "
                            "(the same secret goes into the GitHub or GitLab webhook)", where=settings.source or None)
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(settings.secret_block).get()
    except ValueError:
        raise LabcycleError(f"Prefect Secret block {settings.secret_block!r} not found on the Prefect API; create it "
                            f"(prefect block create secret) or set {SECRET_ENV}", where=settings.source or None) from None
    if not isinstance(value, str) or not value:
        raise LabcycleError(f"Prefect Secret block {settings.secret_block!r} must hold a non-empty string",
                            where=settings.source or None)
    return value

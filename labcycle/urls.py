"""Credentials in URLs (`http://user:KEY@host/v1`): split off before a URL is shown, logged or stored.

A teacher endpoint's user:password travels apart from the URL that flows get: the environment variable
LABCYCLE_TEACHER_URL holds the whole URL (the CLI sets it from --teacher-endpoint; a worker's
environment can too), and a teacher whose URL is that one without the user:password sends them as HTTP
basic auth, to that URL only. Messages, run files and flow-run parameters hold the bare URL.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit, urlunsplit

TEACHER_URL = "LABCYCLE_TEACHER_URL"


def split_userinfo(url: str) -> tuple[str, str | None]:
    """(the URL without user:password@, the user:password or None)."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), userinfo


def redact(url: str) -> str:
    """The URL without user:password@, for messages and records."""
    return split_userinfo(url)[0]


def basic_auth(userinfo: str | None) -> tuple[str, str] | None:
    """("user", "password") from "user:password" (percent-decoded), or None."""
    if not userinfo:
        return None
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def split_endpoints(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Teacher endpoints from one URL, several separated by commas (replicas of one model), or a list."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v and v.strip()]


def teacher_userinfo(url: str) -> tuple[str, str | None]:
    """(the teacher URL to show, the user:password to send): from the URL itself, else from LABCYCLE_TEACHER_URL
    (one URL, or several separated by commas) when that holds the same URL."""
    shown, userinfo = split_userinfo(url)
    if userinfo:
        return shown, userinfo
    for held in split_endpoints(os.environ.get(TEACHER_URL, "")):
        env_shown, env_userinfo = split_userinfo(held)
        if env_userinfo and env_shown.rstrip("/") == shown.rstrip("/"):
            return shown, env_userinfo
    return shown, None


def secrets_of(userinfo: str | None) -> list[str]:
    """The strings a message must never hold: the userinfo as written and its password, raw and decoded."""
    if not userinfo:
        return []
    password = userinfo.partition(":")[2] or userinfo
    return [s for s in {userinfo, password, unquote(password)} if len(s) >= 4]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def hold_teacher_login(endpoint: str | None) -> str | None:
    """The endpoint without its user:password, which this process keeps in LABCYCLE_TEACHER_URL for the
    teacher clients it makes; flows, stage runs and their stored parameters get the bare URL."""
    if not endpoint:
        return endpoint
    urls = split_endpoints(endpoint)
    split = [split_userinfo(u) for u in urls]
    if any(userinfo for _, userinfo in split):
        os.environ[TEACHER_URL] = ",".join(urls)
    return ",".join(bare for bare, _ in split)

"""The webhook receiver's HTTP contract (Starlette's TestClient, a recording emitter), its settings and
delivery store, then the real thing: events read back from a Prefect server, and `serve()` over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from labcycle.errors import LabcycleError
from labcycle.webhook import ReceiverSettings, create_app, load_settings
from labcycle.webhook.payloads import normalize_url
from labcycle.webhook.store import DeliveryStore

SECRET = "It's a Secret to Everybody"
REPO = "octo-org/taxonomy"
BEFORE = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
AFTER = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
ZEROS = "0" * 40
LEAF_A = "knowledge/science/astronomy/constellations/qna.yaml"
LEAF_B = "compositional_skills/writing/freeform/haiku/qna.yaml"
LEAF_OLD = "compositional_skills/writing/freeform/limerick/qna.yaml"


# --- payloads, shaped as GitHub and GitLab document them (trimmed to what a receiver may read) ----------


def _commit(sha: str, message: str, added=(), modified=(), removed=()) -> dict[str, Any]:
    person = {"name": "Mona Octocat", "email": "mona@example.com", "username": "mona"}
    return {"id": sha, "tree_id": sha[::-1], "distinct": True, "message": message,
            "timestamp": "2025-03-14T10:15:00+01:00", "url": f"https://github.com/{REPO}/commit/{sha}",
            "author": person, "committer": person,
            "added": list(added), "removed": list(removed), "modified": list(modified)}


COMMITS = [
    _commit("1" * 40, "Add constellations leaf", added=[LEAF_A, "knowledge/science/astronomy/constellations/attribution.txt"],
            removed=[LEAF_OLD], modified=["README.md"]),
    _commit(AFTER, "Tune haiku seeds", modified=[LEAF_B, LEAF_A]),
]


def github_push(full_name: str = REPO, ref: str = "refs/heads/main", before: str = BEFORE, after: str = AFTER,
                commits: list | None = None, **extra: Any) -> dict[str, Any]:
    commits = COMMITS if commits is None else commits
    owner, name = full_name.split("/", 1)
    return {
        "ref": ref, "before": before, "after": after,
        "repository": {
            "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": name, "full_name": full_name,
            "private": False, "owner": {"name": owner, "login": owner, "id": 21031067, "type": "Organization"},
            "html_url": f"https://github.com/{full_name}", "url": f"https://github.com/{full_name}",
            "git_url": f"git://github.com/{full_name}.git", "ssh_url": f"git@github.com:{full_name}.git",
            "clone_url": f"https://github.com/{full_name}.git", "default_branch": "main",
            "pushed_at": 1741943700, "master_branch": "main",
        },
        "pusher": {"name": "mona", "email": "mona@example.com"},
        "sender": {"login": "mona", "id": 583231, "type": "User"},
        "created": before == ZEROS, "deleted": after == ZEROS, "forced": False, "base_ref": None,
        "compare": f"https://github.com/{full_name}/compare/{before[:12]}...{after[:12]}",
        "commits": commits, "head_commit": commits[-1] if commits else None,
        **extra,
    }


def gitlab_push(path: str = "ml-team/taxonomy", ref: str = "refs/heads/main", after: str = AFTER,
                commits: list | None = None, total: int | None = None) -> dict[str, Any]:
    commits = COMMITS if commits is None else commits
    web = f"https://gitlab.example.com/{path}"
    return {
        "object_kind": "push", "event_name": "push", "before": BEFORE, "after": after, "ref": ref,
        "ref_protected": True, "checkout_sha": after, "user_id": 4, "user_name": "John Smith",
        "user_username": "jsmith", "user_email": "", "user_avatar": None, "project_id": 15,
        "project": {"id": 15, "name": path.rsplit("/", 1)[-1], "description": "", "web_url": web,
                    "git_ssh_url": f"git@gitlab.example.com:{path}.git", "git_http_url": f"{web}.git",
                    "namespace": path.split("/")[0], "visibility_level": 0, "path_with_namespace": path,
                    "default_branch": "main", "homepage": web, "url": f"git@gitlab.example.com:{path}.git",
                    "ssh_url": f"git@gitlab.example.com:{path}.git", "http_url": f"{web}.git"},
        "commits": commits, "total_commits_count": len(commits) if total is None else total,
        "repository": {"name": path.rsplit("/", 1)[-1], "url": f"git@gitlab.example.com:{path}.git",
                       "homepage": web, "git_http_url": f"{web}.git",
                       "git_ssh_url": f"git@gitlab.example.com:{path}.git", "visibility_level": 0},
    }


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def post_github(client, payload: Any, *, event: str = "push", delivery: str | None = None,
                signature: str | None = "sign", content_type: str = "application/json", **kw: Any):
    body = encode(payload)
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": content_type, "User-Agent": "GitHub-Hookshot/044aadd"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = sign(body) if signature == "sign" else signature
    return client.post("/github", content=body, headers=headers, **kw)


def post_gitlab(client, payload: Any, *, token: str | None = SECRET, event: str = "Push Hook",
                idempotency_key: str | None = None):
    headers = {"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": str(uuid.uuid4()),
               "X-Gitlab-Webhook-UUID": "2b4c3fd3-3a0d-4b1c-9f63-8fa1c7f2f0f1",
               "Idempotency-Key": idempotency_key or str(uuid.uuid4()),
               "Content-Type": "application/json", "User-Agent": "GitLab/17.9.0"}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return client.post("/gitlab", content=encode(payload), headers=headers)


class RecordingEmitter:
    def __init__(self, fail: bool = False):
        self.events: list = []
        self.fail = fail

    async def __call__(self, event) -> None:
        if self.fail:
            raise ConnectionError("Prefect API unreachable")
        self.events.append(event)


@pytest.fixture()
def make_client(tmp_path: Path):
    """make_client(emitter=None, **settings) -> (TestClient, emitter); every client of a test shares one store."""
    from starlette.testclient import TestClient

    def make(emitter: RecordingEmitter | None = None, **overrides: Any):
        settings = ReceiverSettings(secret=SECRET, delivery_store=tmp_path / "deliveries.sqlite", **overrides)
        emitter = emitter or RecordingEmitter()
        return TestClient(create_app(settings, emitter=emitter)), emitter

    return make


def expected_payload(delivery: str, provider: str = "github") -> dict[str, Any]:
    repo, name, pusher = ((f"https://github.com/{REPO}.git", REPO, "mona") if provider == "github" else
                          ("https://gitlab.example.com/ml-team/taxonomy.git", "ml-team/taxonomy", "jsmith"))
    return {"repo": repo, "repo_name": name, "branch": "main", "commit": AFTER, "before": BEFORE,
            "changed": [LEAF_B, LEAF_A], "removed": [LEAF_OLD], "complete": True, "forced": False,
            "provider": provider, "delivery": delivery, "pusher": pusher}


# --- GitHub ---------------------------------------------------------------------------------------------


def test_a_signed_github_push_is_accepted_and_emits_one_event(make_client):
    client, emitter = make_client()
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    res = post_github(client, github_push(), delivery=delivery)
    assert res.status_code == 202, res.text
    body = res.json()
    assert body["status"] == "accepted" and body["commit"] == AFTER and body["delivery"] == delivery
    [event] = emitter.events
    assert str(event.id) == body["event_id"]
    assert event.event == "taxonomy.push"
    assert event.resource.id == "taxonomy.repo.octo-org.taxonomy"
    assert event.resource["prefect.resource.name"] == REPO
    assert event.resource["taxonomy.branch"] == "main"
    # Only qna.yaml paths, sorted and deduplicated over the commits; the older leaf was removed.
    assert event.payload == expected_payload(delivery)


def test_github_form_encoded_deliveries_are_read_too(make_client):
    client, emitter = make_client()
    body = urlencode({"payload": json.dumps(github_push())}).encode()
    res = post_github(client, body, content_type="application/x-www-form-urlencoded")
    assert res.status_code == 202, res.text
    assert emitter.events[0].payload["changed"] == [LEAF_B, LEAF_A]


@pytest.mark.parametrize("signature, why", [
    (None, "missing X-Hub-Signature-256"),
    ("", "missing X-Hub-Signature-256"),
    ("sign-other-secret", "does not match"),
    ("sign-other-body", "does not match"),
    ("sha1=" + "0" * 40, "not of the form"),
    ("sha256=", "not of the form"),
    ("sha256=" + "é" * 64, "does not match"),
])
def test_a_bad_or_missing_github_signature_is_401(make_client, signature, why):
    client, emitter = make_client()
    payload = github_push()
    if signature == "sign-other-secret":
        signature = sign(encode(payload), "not the secret")
    elif signature == "sign-other-body":
        signature = sign(encode(github_push(after="f" * 40)))
    headers_sig = signature
    if signature and "é" in signature:  # non-ASCII header bytes: compared as bytes, never crash
        res = client.post("/github", content=encode(payload), headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": "d1", "X-Hub-Signature-256": signature.encode("latin-1")})
    else:
        res = post_github(client, payload, signature=headers_sig)
    assert res.status_code == 401 and why in res.json()["reason"], res.text
    assert emitter.events == []


def test_a_replayed_delivery_emits_nothing_even_after_a_restart(make_client, tmp_path):
    client, emitter = make_client()
    payload = github_push()
    assert post_github(client, payload, delivery="d-1").status_code == 202
    again = post_github(client, payload, delivery="d-1")
    assert again.status_code == 200 and again.json()["reason"].startswith("ignored: replay")
    # The same signed body under a new delivery id (neither provider signs the id) is a replay too.
    assert post_github(client, payload, delivery="d-forged").json()["reason"].startswith("ignored: replay")
    # A new app on the same store: the receiver restarted.
    restarted, emitter2 = make_client()
    assert post_github(restarted, payload, delivery="d-1").json()["reason"].startswith("ignored: replay")
    assert len(emitter.events) == 1 and emitter2.events == []
    # A real next push is accepted.
    assert post_github(restarted, github_push(before=AFTER, after="a" * 40), delivery="d-2").status_code == 202
    assert len(emitter2.events) == 1
    assert (tmp_path / "deliveries.sqlite").is_file()


FILTERS = {"repositories": ("octo-org/taxonomy", "git@gitlab.example.com:ml-team/taxonomy.git"),
           "branches": ("main", "release/*")}


@pytest.mark.parametrize("event, payload, reason", [
    ("push", github_push(full_name="someone/else"), "ignored: repository someone/else is not configured"),
    ("push", github_push(ref="refs/heads/feature/x"), "ignored: branch feature/x is not configured"),
    ("push", github_push(ref="refs/tags/v1.0"), "ignored: tag push (refs/tags/v1.0)"),
    ("push", github_push(after=ZEROS, commits=[]), "ignored: branch deletion"),
    ("push", github_push(ref="refs/pull/12/merge"), "ignored: refs/pull/12/merge is not a branch"),
    ("issues", {"action": "opened", "issue": {"number": 1}}, "ignored: issues events are not pushes"),
    ("pull_request", github_push(), "ignored: pull_request events are not pushes"),
])
def test_pushes_outside_the_configuration_and_other_events_are_ignored(make_client, event, payload, reason):
    client, emitter = make_client(**FILTERS)
    res = post_github(client, payload, event=event)
    assert res.status_code == 200, res.text
    assert res.json() == {**res.json(), "status": "ignored", "reason": reason}
    assert emitter.events == []


@pytest.mark.parametrize("full_name, ref", [
    ("octo-org/taxonomy", "refs/heads/main"),
    ("Octo-Org/Taxonomy", "refs/heads/main"),  # GitHub names are case-insensitive
    ("octo-org/taxonomy", "refs/heads/release/2025.03"),
])
def test_configured_repositories_and_branches_are_accepted(make_client, full_name, ref):
    client, emitter = make_client(**FILTERS)
    assert post_github(client, github_push(full_name=full_name, ref=ref)).status_code == 202
    assert emitter.events[0].payload["branch"] == ref.removeprefix("refs/heads/")


def test_a_repository_may_be_configured_by_url(make_client):
    client, emitter = make_client(repositories=("https://github.com/octo-org/taxonomy",))
    assert post_github(client, github_push()).status_code == 202
    assert post_github(client, github_push(full_name="octo-org/other")).json()["status"] == "ignored"


def test_with_nothing_configured_every_push_is_accepted(make_client):
    client, emitter = make_client()
    for name, ref in (("a/b", "refs/heads/x"), ("c/d", "refs/heads/main")):
        assert post_github(client, github_push(full_name=name, ref=ref)).status_code == 202
    assert [e.resource.id for e in emitter.events] == ["taxonomy.repo.a.b", "taxonomy.repo.c.d"]


def test_ping_is_answered_without_an_event(make_client):
    client, emitter = make_client()
    ping = {"zen": "Keep it logically awesome.", "hook_id": 30, "hook": {"type": "Repository", "events": ["push"]}}
    res = post_github(client, ping, event="ping")
    assert res.status_code == 200 and res.json()["status"] == "ok" and "ping" in res.json()["reason"]
    assert emitter.events == []
    assert post_github(client, ping, event="ping", signature=None).status_code == 401


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size, status", [(5000, 413), (200, 202)], ids=["over", "under"])
def test_the_body_is_bounded_with_and_without_content_length(make_client, chunked, size, status):
    client, emitter = make_client(max_body_bytes=4096)
    commits = [_commit(AFTER, "x" * size, modified=[LEAF_A])]
    body = encode(github_push(commits=commits))
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sign(body)}
    if chunked:
        def chunks():  # no Content-Length: httpx sends it chunked
            for i in range(0, len(body), 512):
                yield body[i:i + 512]
        res = client.post("/github", content=chunks(), headers=headers)
    else:
        res = client.post("/github", content=body, headers=headers)
    assert res.status_code == status, res.text
    assert len(emitter.events) == (status == 202)


def test_a_lying_content_length_is_refused_before_reading(make_client):
    client, emitter = make_client(max_body_bytes=2048)
    res = client.post("/github", content=b"{}", headers={"Content-Length": "10000000", "X-GitHub-Event": "push"})
    assert res.status_code == 413


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "the payload is not a JSON object"),
    (encode({"ref": "refs/heads/main"}), "repository is missing"),
    (encode(github_push(after="HEAD")), "after is not a commit id"),
    (encode(github_push(commits=[{"added": "knowledge/qna.yaml"}])), "commits[0].added is not a list of paths"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_malformed_payloads_are_400(make_client, body, reason):
    client, emitter = make_client(max_body_bytes=1 << 20)
    res = post_github(client, body)
    assert res.status_code == 400 and reason in res.json()["reason"], res.text
    assert emitter.events == []


def test_a_failed_emit_is_503_and_the_delivery_can_be_redelivered(make_client):
    failing = RecordingEmitter(fail=True)
    client, _ = make_client(emitter=failing)
    payload = github_push()
    res = post_github(client, payload, delivery="d-retry")
    assert res.status_code == 503 and "redeliver" in res.json()["reason"]
    client2, emitter = make_client()
    assert post_github(client2, payload, delivery="d-retry").status_code == 202
    assert len(emitter.events) == 1


def test_a_slow_prefect_api_is_503_within_the_timeout(make_client):
    import anyio

    class Slow(RecordingEmitter):
        async def __call__(self, event) -> None:
            await anyio.sleep(30)

    client, _ = make_client(emitter=Slow(), emit_timeout_seconds=0.2)
    started = time.monotonic()
    assert post_github(client, github_push()).status_code == 503
    assert time.monotonic() - started < 5


# --- GitLab ---------------------------------------------------------------------------------------------


def test_a_gitlab_push_with_the_right_token_is_accepted(make_client):
    client, emitter = make_client(**FILTERS)
    res = post_gitlab(client, gitlab_push(), idempotency_key="gl-1")
    assert res.status_code == 202, res.text
    [event] = emitter.events
    assert event.resource.id == "taxonomy.repo.ml-team.taxonomy"
    assert event.payload == expected_payload("gl-1", provider="gitlab")
    # GitLab retries with the same Idempotency-Key: a replay.
    assert post_gitlab(client, gitlab_push(), idempotency_key="gl-1").json()["reason"].startswith("ignored: replay")
    assert len(emitter.events) == 1


@pytest.mark.parametrize("token", [None, "", "wrong", SECRET + " ", SECRET[:-1]])
def test_a_gitlab_push_with_a_wrong_or_missing_token_is_401(make_client, token):
    client, emitter = make_client()
    res = post_gitlab(client, gitlab_push(), token=token)
    assert res.status_code == 401, res.text
    assert emitter.events == []


@pytest.mark.parametrize("event, payload, status, reason", [
    ("Tag Push Hook", gitlab_push(ref="refs/tags/v1"), 200, "ignored: Tag Push Hook events are not pushes"),
    ("Merge Request Hook", {"object_kind": "merge_request"}, 200, "ignored: Merge Request Hook events are not pushes"),
    ("Push Hook", gitlab_push(ref="refs/heads/dev"), 200, "ignored: branch dev is not configured"),
    ("Push Hook", gitlab_push(path="other/taxonomy"), 200, "ignored: repository other/taxonomy is not configured"),
    ("Push Hook", b"<html>", 400, "not valid JSON"),
    ("Push Hook", {"object_kind": "push", "ref": "refs/heads/main"}, 400, "project is missing"),
])
def test_gitlab_deliveries_that_are_not_accepted_pushes(make_client, event, payload, status, reason):
    client, emitter = make_client(**FILTERS)
    res = post_gitlab(client, payload, event=event)
    assert res.status_code == status and reason in res.json()["reason"], res.text
    assert emitter.events == []


def test_delivery_ids_without_idempotency_key_or_delivery_header(make_client):
    client, emitter = make_client()
    # Older GitLab sends no Idempotency-Key: the event UUID is the delivery id.
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": "gl-event-1"}
    assert client.post("/gitlab", content=encode(gitlab_push()), headers=headers).json()["delivery"] == "gl-event-1"
    # No delivery header at all: the body digest stands in, so a resend is still a replay.
    body = encode(github_push())
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)}
    first = client.post("/github", content=body, headers=headers).json()
    assert first["status"] == "accepted" and first["delivery"] == "sha256-" + hashlib.sha256(body).hexdigest()[:32]
    assert client.post("/github", content=body, headers=headers).json()["reason"].startswith("ignored: replay")
    assert [e.payload["delivery"] for e in emitter.events] == ["gl-event-1", first["delivery"]]
    bad = post_github(client, github_push(after="b" * 40), delivery="no spaces allowed")
    assert bad.status_code == 400 and "delivery id" in bad.json()["reason"]


def test_a_gitlab_push_listing_only_some_commits_is_marked_incomplete(make_client):
    client, emitter = make_client()
    assert post_gitlab(client, gitlab_push(total=57)).status_code == 202
    assert emitter.events[0].payload["complete"] is False


# --- the rest of the app --------------------------------------------------------------------------------


def test_healthz_and_methods(make_client):
    client, _ = make_client()
    res = client.get("/healthz")
    assert res.status_code == 200 and res.json() == {"status": "ok"}
    assert client.get("/github").status_code == 405
    assert client.post("/nowhere").status_code == 404


def test_the_log_has_one_line_per_request_and_never_the_secret(make_client, caplog):
    client, _ = make_client()
    payload = github_push()
    signature = sign(encode(payload))
    with caplog.at_level(logging.INFO, logger="labcycle.webhook"):
        post_github(client, payload, delivery="d-log")
        post_github(client, payload, delivery="d-log")
        post_github(client, payload, signature=sign(encode(payload), "wrong"))
        post_gitlab(client, gitlab_push(), token="a-wrong-token")
        post_gitlab(client, gitlab_push())
    lines = [r.getMessage() for r in caplog.records if r.name == "labcycle.webhook"]
    assert len(lines) == 5
    assert lines[0].startswith("github delivery=d-log repo=octo-org/taxonomy branch=main -> 202 accepted")
    assert "-> 200 ignored: replay" in lines[1] and "-> 401 rejected" in lines[2]
    text = caplog.text
    for secret in (SECRET, signature, signature.removeprefix("sha256="), "a-wrong-token"):
        assert secret not in text


def test_an_app_needs_a_secret(tmp_path):
    with pytest.raises(LabcycleError, match="LABCYCLE_WEBHOOK_SECRET"):
        create_app(ReceiverSettings(delivery_store=tmp_path / "d.sqlite"))


# --- settings and the delivery store --------------------------------------------------------------------


def test_settings_from_yaml_and_environment(tmp_path):
    path = tmp_path / "webhook.yaml"
    path.write_text("repositories: [octo-org/taxonomy]\nbranches: [main, 'on']\nmax_body_bytes: 65536\n"
                    "delivery_store: state/deliveries.sqlite\nkeep_days: 2\n")
    settings = load_settings(path, environ={"LABCYCLE_WEBHOOK_SECRET": "s3"})
    assert settings.repositories == ("octo-org/taxonomy",) and settings.branches == ("main", "on")
    assert settings.max_body_bytes == 65536 and settings.keep_days == 2.0 and settings.secret == "s3"
    assert settings.store_path == tmp_path / "state" / "deliveries.sqlite"
    assert "s3" not in repr(settings) and "s3" not in settings.describe()
    env = {"LABCYCLE_WEBHOOK_SECRET": "s3", "LABCYCLE_WEBHOOK_REPOSITORIES": "a/b, https://x.example/c/d.git",
           "LABCYCLE_WEBHOOK_BRANCHES": "dev"}
    settings = load_settings(path, environ=env)
    assert settings.repositories == ("a/b", "https://x.example/c/d.git") and settings.branches == ("dev",)
    defaults = load_settings(None, environ={"LABCYCLE_WEBHOOK_SECRET": "s3"})
    assert defaults.repositories == () and defaults.store_path.name == "deliveries.sqlite"


@pytest.mark.parametrize("text, message", [
    ("repositories: [a/b]\nbranchs: [main]\n", r"webhook.yaml:2:1: branchs: Additional properties"),
    ("branches: [main, on]\n", r"webhook.yaml:1:18: branches.1: True is not of type 'string'; quote the value"),
    ("max_body_bytes: 10\n", r"webhook.yaml:1:1: max_body_bytes: 10 is less than the minimum of 1024"),
    ("secret: hunter2\n", r"webhook.yaml:1:1: secret: the secret is never read from a file"),
    ("- main\n", r"webhook.yaml:1:1: the top level must be a mapping"),
])
def test_settings_mistakes_say_where_and_what_to_do(tmp_path, text, message):
    path = tmp_path / "webhook.yaml"
    path.write_text(text)
    with pytest.raises(LabcycleError, match=message) as info:
        load_settings(path, environ={"LABCYCLE_WEBHOOK_SECRET": "s3"})
    assert "hunter2" not in str(info.value)


def test_settings_without_a_secret_say_how_to_give_one(tmp_path):
    with pytest.raises(LabcycleError, match="set LABCYCLE_WEBHOOK_SECRET or name a Prefect Secret block"):
        load_settings(None, environ={})
    with pytest.raises(LabcycleError, match="not found"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_the_delivery_store_is_bounded(tmp_path):
    store = DeliveryStore(tmp_path / "d.sqlite", keep=3, keep_days=1)
    for i in range(5):
        assert store.claim("github", f"d{i}", f"body{i}", now=1000.0 + i)
    assert len(store) == 3 and ("github", "d4") in store and ("github", "d1") not in store
    assert not store.claim("github", "d4", "other")  # same id
    assert not store.claim("gitlab", "new", "body3")  # same body
    assert store.claim("github", "d9", "body9", now=1000.0 + 2 * 86400)  # a day later: the rest expired
    assert len(store) == 1
    store.release("github", "d9")
    assert len(store) == 0


def test_a_corrupt_store_says_what_to_do(tmp_path):
    path = tmp_path / "d.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LabcycleError, match="delivery_store"):
        DeliveryStore(path)


@pytest.mark.parametrize("url, normalized", [
    ("https://github.com/Octo-Org/Taxonomy.git", "github.com/octo-org/taxonomy"),
    ("https://user@github.com:443/octo-org/taxonomy/", "github.com/octo-org/taxonomy"),
    ("git@github.com:octo-org/taxonomy.git", "github.com/octo-org/taxonomy"),
    ("ssh://git@gitlab.example.com:2222/ml/sub/taxonomy.git", "gitlab.example.com/ml/sub/taxonomy"),
    ("octo-org/taxonomy", None),
])
def test_repository_urls_are_compared_normalized(url, normalized):
    assert normalize_url(url) == normalized


# --- against a real Prefect server ----------------------------------------------------------------------


def _stored_events(resource_id: str, timeout: float = 60) -> list:
    """The taxonomy.push events about resource_id, once at least one is stored."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            # limit: the client's default (100) is over what this server accepts (50).
            page = client.read_events(EventFilter(event=EventNameFilter(name=["taxonomy.push"]),
                                                  resource=EventResourceFilter(id=[resource_id])), limit=50)
            if page.events:
                return page.events
            time.sleep(0.3)
    raise AssertionError(f"the server did not store an event about {resource_id} in time")


@pytest.mark.slow
def test_a_signed_push_reaches_a_real_prefect_server_once(prefect_harness, tmp_path):
    from prefect.blocks.system import Secret
    from starlette.testclient import TestClient

    # The secret from a Prefect Secret block, as a deployment would keep it.
    block = f"webhook-secret-{uuid.uuid4().hex[:8]}"
    Secret(value=SECRET).save(block)
    config = tmp_path / "webhook.yaml"
    config.write_text(f"secret_block: {block}\ndelivery_store: deliveries.sqlite\n")
    settings = load_settings(config, environ={})
    assert settings.secret == SECRET

    owner = f"org-{uuid.uuid4().hex[:8]}"
    client = TestClient(create_app(settings))  # the default emitter: the Prefect API of the harness
    started = time.monotonic()
    res = post_github(client, github_push(full_name=f"{owner}/taxonomy"), delivery="real-1")
    accepted_in = time.monotonic() - started
    assert res.status_code == 202, res.text
    assert post_github(client, github_push(full_name=f"{owner}/taxonomy"), delivery="real-1").json()["status"] == "ignored"
    # A later push about another repository: once it is stored, so is everything sent before it.
    assert post_github(client, github_push(full_name=f"{owner}/sentinel"), delivery="real-2").status_code == 202
    _stored_events(f"taxonomy.repo.{owner}.sentinel")
    stored_in = time.monotonic() - started
    [event] = _stored_events(f"taxonomy.repo.{owner}.taxonomy")
    assert str(event.id) == res.json()["event_id"]
    assert event.resource["prefect.resource.name"] == f"{owner}/taxonomy"
    assert event.payload == {**expected_payload("real-1"), "repo": f"https://github.com/{owner}/taxonomy.git",
                             "repo_name": f"{owner}/taxonomy"}
    print(f"push -> 202 in {accepted_in:.2f}s; stored and readable within {stored_in:.2f}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_over_http(tmp_path):
    """`serve()` in its own process: health, a chunked oversized body, a push while the Prefect API is down
    (503, forgotten, so the redelivery is not a replay), and a log without the secret."""
    import httpx

    port, dead = _free_port(), _free_port()
    config = tmp_path / "webhook.yaml"
    config.write_text("max_body_bytes: 4096\ndelivery_store: deliveries.sqlite\n")
    env = {**os.environ, "LABCYCLE_WEBHOOK_SECRET": SECRET, "PREFECT_API_URL": f"http://127.0.0.1:{dead}/api"}
    code = ("from labcycle.webhook import load_settings, serve\n"
            f"serve('127.0.0.1', {port}, load_settings({str(config)!r}))\n")
    log = tmp_path / "receiver.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as client:
            big = b"x" * 10_000
            res = client.post("/github", content=iter([big[:5000], big[5000:]]), headers={"X-GitHub-Event": "push"})
            assert res.status_code == 413
            for _ in range(2):  # not remembered after the 503: the second is not a replay either
                res = post_github(client, github_push(), delivery="d-down")
                assert res.status_code == 503, res.text
            assert post_github(client, github_push(), signature=sign(b"x")).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "labcycle webhook receiver on http://127.0.0.1" in text
    lines = [line for line in text.splitlines() if " labcycle.webhook: github " in line]
    assert len(lines) == 4, text
    assert sum("-> 503 rejected" in line for line in lines) == 2
    assert SECRET not in text and sign(encode(github_push())) not in text

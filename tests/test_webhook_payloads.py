"""A verified push forwards only what a worker may safely clone and check out: hostile clone URLs, refs and
commit ids are refused with a 400 whose one-line reason names the field (through the real ASGI app)."""

from __future__ import annotations

import pytest

from labcycle.webhook.payloads import clone_url_problem, ref_problem
from tests.test_webhook import ZEROS, github_push, gitlab_push, make_client, post_github, post_gitlab  # noqa: F401

HOSTILE_URLS = [
    ("ext::sh -c touch% /tmp/pwned", "ext:: remote helper"),
    ("fd::17", "fd:: remote helper"),
    ("file:///etc/passwd", "local path or file:// URL"),
    ("/srv/taxonomy", "local path or file:// URL"),
    ("../taxonomy", "local path or file:// URL"),
    ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
    ("ssh://-oProxyCommand=touch%20x/y", "read as an option"),
    ("-oProxyCommand=x:owner/repo", "starts with '-'"),
    ("https://github.com/a/b.git\nevil", "control character"),
    ("http://github.com/a/b.git", "http:// transport"),
    ("git://github.com/a/b.git", "git:// transport"),
    (" https://github.com/a/b.git", "white space"),
    ("https://github.com/" + "a" * 3000, "over 2048 characters"),
]


def _reason(res) -> str:
    reason = res.json()["reason"]
    assert "\n" not in reason and "\r" not in reason and "Traceback" not in reason
    assert all(c.isprintable() for c in reason), reason
    return reason


@pytest.mark.parametrize("url, why", HOSTILE_URLS, ids=[u[:30] for u, _ in HOSTILE_URLS])
def test_a_github_push_with_a_hostile_clone_url_is_400(make_client, url, why):
    client, emitter = make_client()
    payload = github_push()
    payload["repository"]["clone_url"] = url
    res = post_github(client, payload)
    assert res.status_code == 400, res.text
    reason = _reason(res)
    assert reason.startswith("not a push payload: repository.clone_url ") and why in reason, reason
    assert emitter.events == []


@pytest.mark.parametrize("url, why", HOSTILE_URLS[:9], ids=[u[:30] for u, _ in HOSTILE_URLS[:9]])
def test_a_gitlab_push_with_a_hostile_clone_url_is_400(make_client, url, why):
    client, emitter = make_client()
    payload = gitlab_push()
    payload["project"]["git_http_url"] = url
    res = post_gitlab(client, payload)
    assert res.status_code == 400, res.text
    reason = _reason(res)
    assert reason.startswith("not a push payload: project.git_http_url ") and why in reason, reason
    assert emitter.events == []


def test_a_hostile_clone_url_is_refused_on_a_tag_push_too(make_client):
    client, emitter = make_client()
    payload = github_push(ref="refs/tags/v1")
    payload["repository"]["clone_url"] = "ext::sh -c id"
    assert post_github(client, payload).status_code == 400


@pytest.mark.parametrize("url", ["/srv/taxonomy", "file:///srv/taxonomy", "./taxonomy"])
def test_local_repositories_are_accepted_when_the_receiver_allows_them(make_client, url):
    client, emitter = make_client(allow_local_repositories=True)
    payload = github_push()
    payload["repository"]["clone_url"] = url
    res = post_github(client, payload)
    assert res.status_code == 202, res.text
    assert emitter.events[0].payload["repo"] == url
    # Allowing local repositories does not let the hostile ones through.
    for hostile in ("ext::sh -c id", "fd::3", "--upload-pack=x", "ssh://-oProxyCommand=x/y"):
        payload["repository"]["clone_url"] = hostile
        assert post_github(client, payload).status_code == 400, hostile


@pytest.mark.parametrize("url", [
    "https://github.com/octo-org/taxonomy.git",
    "https://github.com/octo-org/taxonomy",
    "ssh://git@github.com/octo-org/taxonomy.git",
    "ssh://git@gitlab.example.com:2222/ml/taxonomy.git",
    "git@github.com:octo-org/taxonomy.git",
    "https://user@gitlab.example.com/group/sub/taxonomy.git",
])
def test_ordinary_clone_urls_are_accepted(make_client, url):
    client, emitter = make_client()
    payload = github_push()
    payload["repository"]["clone_url"] = url
    assert post_github(client, payload).status_code == 202
    payload = gitlab_push()
    payload["project"]["git_http_url"] = url
    assert post_gitlab(client, payload).status_code == 202
    assert [e.payload["repo"] for e in emitter.events] == [url, url]


HOSTILE_REFS = [
    ("refs/heads/a..b", "'..'"),
    ("refs/heads/main@{1}", "'@{'"),
    ("refs/heads/main~1", "'~'"),
    ("refs/heads/main^", "'^'"),
    ("refs/heads/a:b", "':'"),
    ("refs/heads/a?b", "'?'"),
    ("refs/heads/a*", "'*'"),
    ("refs/heads/a[b", "'['"),
    ("refs/heads/a\\b", "'\\'"),
    ("refs/heads/main.lock", "ends with '.lock'"),
    ("refs/heads/x.lock/y", "ends with '.lock'"),
    ("refs/heads/-main", "starts with '-'"),
    ("refs/heads/--upload-pack=x", "starts with '-'"),
    ("refs/heads/.hidden", "starts with '.'"),
    ("refs/heads/my branch", "a space"),
    ("refs/heads/ma\x01in", "control character"),
    ("refs/heads/main\n", "control character"),
    ("refs/heads/ma\x7fin", "control character"),
    ("refs/heads/a\u202eb", "unprintable"),
    ("refs/heads/main/", "ends with '/'"),
    ("refs/heads/main.", "ends with '.'"),
    ("refs/heads//main", "'//'"),
    ("main", "does not start with refs/"),
    ("-main", "does not start with refs/"),
    ("refs/heads/" + "a" * 2000, "over 1024 characters"),
]


@pytest.mark.parametrize("ref, why", HOSTILE_REFS, ids=[r[:25].encode("unicode_escape").decode() for r, _ in HOSTILE_REFS])
def test_a_push_with_a_bad_ref_is_400(make_client, ref, why):
    client, emitter = make_client()
    for res in (post_github(client, github_push(ref=ref)), post_gitlab(client, gitlab_push(ref=ref))):
        assert res.status_code == 400, res.text
        reason = _reason(res)
        assert reason.startswith("not a push payload: ref is not a valid git ref: it ") and why in reason, reason
    assert emitter.events == []


@pytest.mark.parametrize("ref", ["refs/heads/main", "refs/heads/release/2025.03", "refs/heads/feature/x-y_z",
                                 "refs/heads/user@host", "refs/heads/ünïcode", "refs/heads/v1.0-rc.1"])
def test_ordinary_branch_refs_are_accepted(make_client, ref):
    client, emitter = make_client()
    assert post_github(client, github_push(ref=ref)).status_code == 202
    assert post_gitlab(client, gitlab_push(ref=ref)).status_code == 202
    assert [e.payload["branch"] for e in emitter.events] == [ref.removeprefix("refs/heads/")] * 2


def test_well_formed_tag_and_other_refs_are_still_ignored_not_refused(make_client):
    client, emitter = make_client()
    assert post_github(client, github_push(ref="refs/tags/v1.0")).json()["status"] == "ignored"
    assert post_github(client, github_push(ref="refs/pull/12/merge")).json()["status"] == "ignored"


@pytest.mark.parametrize("field, value, why", [
    ("before", "HEAD", "before is not a commit id"),
    ("after", "abc123", "after is not a commit id"),
    ("after", "A" * 40, "after is not a commit id"),
    ("after", "g" * 40, "after is not a commit id"),
    ("before", "0" * 39, "before is not a commit id"),
    ("after", "--upload-pack=x", "after is not a commit id"),
    ("after", "a" * 40 + "\n", "after is not a commit id"),
])
def test_commit_ids_must_be_hex_object_names(make_client, field, value, why):
    client, emitter = make_client()
    res = post_github(client, github_push(**{field: value}))
    assert res.status_code == 400 and why in _reason(res), res.text
    assert emitter.events == []


@pytest.mark.parametrize("before, after", [(ZEROS, "a" * 40), ("b" * 64, "c" * 64), ("0" * 64, "d" * 64)])
def test_sha1_sha256_and_zero_commit_ids_are_accepted(make_client, before, after):
    client, emitter = make_client()
    assert post_github(client, github_push(before=before, after=after)).status_code == 202


def test_the_checks_without_the_app():
    assert clone_url_problem("https://github.com/a/b.git") is None
    assert clone_url_problem("/srv/taxonomy") is not None
    assert clone_url_problem("/srv/taxonomy", allow_local=True) is None
    assert clone_url_problem("C:/taxonomy", allow_local=False) is not None
    assert ref_problem("refs/heads/main") is None
    assert ref_problem("refs/heads/a..b") == "contains '..'"


def test_allow_local_repositories_is_read_from_webhook_yaml(tmp_path):
    from labcycle.errors import LabcycleError
    from labcycle.webhook import load_settings

    env = {"LABCYCLE_WEBHOOK_SECRET": "s"}
    path = tmp_path / "webhook.yaml"
    assert load_settings(None, environ=env).allow_local_repositories is False
    path.write_text("allow_local_repositories: true\n")
    assert load_settings(path, environ=env).allow_local_repositories is True
    path.write_text("allow_local_repositories: 'maybe'\n")
    with pytest.raises(LabcycleError, match="allow_local_repositories"):
        load_settings(path, environ=env)

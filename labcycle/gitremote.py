"""What labcycle lets git fetch from, how long a git command may run, and which failures are worth a retry.

A repository named in a qna.yaml (document.repo) or in a run (taxonomy_repo) comes from whoever wrote it.
git reads more than URLs there: `ext::<command>` runs a command, `fd::17` talks over a file descriptor and
waits on it forever, and a name that starts with `-` is read as an option. A taxonomy needs none of that:
https and ssh for hosted repositories, and local paths (or file://) for work on one machine. Anything else
is refused before git runs, and git itself is told to allow only those (GIT_ALLOW_PROTOCOL), so a remote
helper or a submodule cannot bring the others back.

A failure is retried only when trying again can help (the network or the server had a bad moment); a
missing repository, a refused login or a local path that is not there fail at once.
"""

from __future__ import annotations

import os
import re

ALLOWED_SCHEMES = ("https", "ssh", "git+ssh", "ssh+git", "file")
# Local commands (init, rev-parse, checkout) take seconds; a fetch of a big repository over a slow link
# takes minutes. A stalled https transfer is cut sooner by the low-speed limit below.
GIT_TIMEOUT_S = 600
_LOW_SPEED = {"GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "60"}  # < 1 kB/s for 60 s: give up

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")  # git's <transport>::<address> remote-helper syntax
_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?([^/:]+):")  # [user@]host:path, when the colon comes before any slash
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:/docs is a Windows path, not the host C

# git's words for a failure another try may fix. Everything else (not found, authentication, permission,
# a local path) is the user's to fix, and a retry only delays the message.
_TRANSIENT = re.compile(
    r"could not resolve host|temporary failure in name resolution|connection (timed out|reset|refused|closed)"
    r"|operation timed out|failed to connect|couldn't connect|network is unreachable|early eof"
    r"|the remote end hung up unexpectedly|rpc failed|unexpected disconnect|http/2 stream"
    r"|the requested url returned error: (408|429|5\d\d)|\b50[234]\b|gnutls|ssl_read|took longer than",
    re.IGNORECASE,
)
_PERMANENT = re.compile(
    r"does not appear to be a git repository|repository not found|not found|authentication failed"
    r"|permission denied|could not read username|terminal prompts disabled|host key verification failed"
    r"|returned error: 40[134]|not allowed|unsupported protocol",
    re.IGNORECASE,
)


def remote_problem(repo: str) -> str | None:
    """Why `repo` may not be fetched from, or None when it is an https/ssh URL, an scp-like ssh address
    (user@host:path) or a local path (file:// included)."""
    repo = repo.strip()
    if not repo:
        return "is empty; give an https or ssh URL, or a local path"
    if any(ord(c) < 32 or c == "\x7f" for c in repo):
        return "contains a control character; give an https or ssh URL, or a local path"
    if repo.startswith("-"):
        return f"{repo!r} starts with '-', which git would read as an option; give an https or ssh URL, or a local path"
    if (m := _SCHEME.match(repo)) is not None:
        scheme = m.group(1).lower()
        if scheme not in ALLOWED_SCHEMES:
            better = " (use https://)" if scheme in ("http", "git") else ""
            return (f"uses the {scheme}:// transport{better}; labcycle fetches only over https, ssh, or from a "
                    "local path (file://)")
        host = repo[m.end():].split("/", 1)[0].rsplit("@", 1)[-1]
        if host.startswith("-"):
            return f"names the host {host!r}, which ssh would read as an option"
        return None
    if (m := _HELPER.match(repo)) is not None:
        return (f"uses git's {m.group(1)}:: remote helper, which can run commands or wait forever; labcycle "
                "fetches only over https, ssh, or from a local path")
    if (m := _SCP_LIKE.match(repo)) is not None and _DRIVE.match(repo) is None:
        if m.group(1).startswith("-"):
            return f"names the host {m.group(1)!r}, which ssh would read as an option"
    return None


def is_local(repo: str) -> bool:
    """A path on this machine (or a file:// URL): nothing a retry can change."""
    repo = repo.strip()
    if (m := _SCHEME.match(repo)) is not None:
        return m.group(1).lower() == "file"
    m = _SCP_LIKE.match(repo)
    return m is None or _DRIVE.match(repo) is not None


def is_transient(repo: str, message: str) -> bool:
    """Whether a failed git command on `repo`, which said `message`, is worth trying again."""
    if is_local(repo) or _PERMANENT.search(message) and not _TRANSIENT.search(message):
        return False
    return bool(_TRANSIENT.search(message))


def git_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a git command that may touch a remote: no prompts, only the allowed transports,
    and a stalled transfer given up."""
    env = dict(os.environ if base is None else base)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL="https:ssh:file")
    for key, value in _LOW_SPEED.items():
        env.setdefault(key, value)
    # ssh would otherwise ask for a passphrase or a host-key confirmation, or wait on a silent host.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=30")
    return env

"""Small conventions (issue 16): the user's Hugging Face setup is respected, `labcycle --version`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, os
from labcycle.env import apply_defaults
apply_defaults()
import huggingface_hub
from huggingface_hub import constants
print(json.dumps({"HF_HOME": os.environ.get("HF_HOME"), "home": constants.HF_HOME,
                  "token": huggingface_hub.get_token(), "offline": os.environ.get("HF_HUB_OFFLINE")}))
"""


def _probe(tmp_path: Path, **env: str) -> dict:
    import json

    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "LABCYCLE_HOME"}
    clean.update(HOME=str(tmp_path / "home"), LABCYCLE_HOME=str(tmp_path / "state"), **env)
    res = subprocess.run([sys.executable, "-c", _PROBE], env=clean, cwd=tmp_path, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_users_hugging_face_home_and_token_are_found(tmp_path):
    """No HF_HOME: labcycle leaves it unset, so `hf auth login`'s token and the model cache in
    ~/.cache/huggingface are the ones Hugging Face libraries use, not a folder under .labcycle/."""
    default = tmp_path / "home" / ".cache" / "huggingface"
    default.mkdir(parents=True)
    (default / "token").write_text("hf_user_token")
    seen = _probe(tmp_path)
    assert seen["HF_HOME"] is None
    assert Path(seen["home"]) == default and seen["token"] == "hf_user_token"
    assert seen["offline"] == "1"  # still offline by default


def test_an_hf_home_the_user_set_is_kept(tmp_path):
    mine = tmp_path / "my-hf"
    mine.mkdir()
    (mine / "token").write_text("hf_mine")
    seen = _probe(tmp_path, HF_HOME=str(mine), HF_HUB_OFFLINE="0")
    assert seen["HF_HOME"] == str(mine) and Path(seen["home"]) == mine and seen["token"] == "hf_mine"
    assert seen["offline"] == "0"


def test_version():
    from importlib.metadata import version

    res = subprocess.run([sys.executable, "-m", "labcycle.cli", "--version"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"labcycle {version('labcycle')}\n"

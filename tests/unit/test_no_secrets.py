"""No secret is committed: no private key, no password hash, no .env file, no password file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a Mosquitto password hash": re.compile(r"\$[67]\$\d+\$[A-Za-z0-9+/=]{16,}\$"),
    "a Twilio auth token assignment": re.compile(r"(?i)auth_token\s*[=:]\s*['\"][0-9a-f]{32}['\"]"),
}
# These files talk about secrets (patterns, tests); they hold none.
EXEMPT = {"tests/unit/test_no_secrets.py"}


def _tracked() -> list[str]:
    try:
        result = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in result.stdout.split("\0") if name]


def test_no_secret_file_is_tracked() -> None:
    names = _tracked()
    suspicious = [
        name
        for name in names
        if Path(name).name in (".env", "passwords", "web-secret-key") or Path(name).suffix in (".pem", ".key")
    ]
    assert suspicious == []


@pytest.mark.parametrize("kind", SECRETS)
def test_no_tracked_file_contains_a_secret(kind: str) -> None:
    found = []
    for name in _tracked():
        path = ROOT / name
        if name in EXEMPT or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if SECRETS[kind].search(text):
            found.append(name)
    assert found == [], f"{kind} in {found}"

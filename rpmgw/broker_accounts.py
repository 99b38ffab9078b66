"""Mosquitto accounts: salted password hashes in the broker's password file (devices and the gateway).

Mosquitto 2.0 reads `user:$7$<iterations>$<salt>$<hash>` lines (PBKDF2-SHA512) and re-reads the file on
SIGHUP, so a new account works without restarting the broker. `mosquitto_passwd` writes the file when
it is installed; otherwise the same format is written here (the gateway image has no Mosquitto).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rpmgw.errors import BrokerAccountError

GATEWAY_USERNAME = "rpmgw-gateway"
# Shipped in mosquitto.acl with write access to every device topic; it exists only where a password
# is created for it (the simulator, the demo and the tests), never in a clinic's password file.
PUBLISHER_USERNAME = "rpmgw-sim"
_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
_SALT_BYTES = 12
# Mosquitto's ACL patterns refuse usernames with wildcards or separators; ':' would break the file.
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Credentials(BaseModel):
    """A broker account: username and clear-text password (kept in memory or shown once)."""

    model_config = ConfigDict(frozen=True)

    username: str
    password: str


def generate_password() -> str:
    """A random password with about 192 bits of entropy, safe to print and to put in an env file."""
    return secrets.token_urlsafe(24)


def check_username(username: str) -> str:
    """The username, or BrokerAccountError when the ACL could not match it to its topics."""
    if not _USERNAME.match(username):
        raise BrokerAccountError(
            f"invalid broker username {username!r}: use 1-128 letters, digits, '.', '_' or '-'"
        )
    return username


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """The `$7$...` PBKDF2-SHA512 hash Mosquitto 2.0 verifies."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def set_password(password_file: Path, username: str, password: str, *, use_binary: bool = True) -> None:
    """Create or replace `username`'s entry in `password_file` (created 0600 when missing)."""
    check_username(username)
    if not password:
        raise BrokerAccountError("an empty broker password is not allowed")
    password_file.parent.mkdir(parents=True, exist_ok=True)
    if not password_file.exists():
        password_file.touch(mode=0o600)
    binary = shutil.which("mosquitto_passwd") if use_binary else None
    if binary is not None:
        _set_with_binary(binary, password_file, username, password)
    else:
        _write_entry(password_file, username, hash_password(password))


def remove_account(password_file: Path, username: str) -> bool:
    """Delete `username`'s entry; returns whether there was one."""
    lines = _read_lines(password_file)
    kept = [line for line in lines if line.split(":", 1)[0] != username]
    if len(kept) == len(lines):
        return False
    _replace_file(password_file, kept)
    return True


def usernames(password_file: Path) -> list[str]:
    """The accounts in the password file, in file order."""
    return [line.split(":", 1)[0] for line in _read_lines(password_file) if ":" in line]


def _set_with_binary(binary: str, password_file: Path, username: str, password: str) -> None:
    # -b takes the password as an argument: visible in ps for a moment, acceptable for a local admin tool.
    result = subprocess.run(
        [binary, "-b", str(password_file), username, password],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerAccountError(
            f"mosquitto_passwd could not update {password_file}: {(result.stderr or result.stdout).strip()}"
        )


def _write_entry(password_file: Path, username: str, hashed: str) -> None:
    lines = [line for line in _read_lines(password_file) if line.split(":", 1)[0] != username]
    _replace_file(password_file, [*lines, f"{username}:{hashed}"])


def _read_lines(password_file: Path) -> list[str]:
    try:
        text = password_file.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BrokerAccountError(f"cannot read {password_file}: {exc}") from exc
    return [line for line in text.splitlines() if line.strip()]


def _replace_file(password_file: Path, lines: list[str]) -> None:
    # Write then rename: the broker never reads a half-written file on SIGHUP.
    mode = password_file.stat().st_mode & 0o777 if password_file.exists() else 0o600
    try:
        fd, tmp = tempfile.mkstemp(dir=password_file.parent, prefix=".passwords-")
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
        os.chmod(tmp, mode)
        os.replace(tmp, password_file)
    except OSError as exc:
        raise BrokerAccountError(f"cannot write {password_file}: {exc}") from exc

"""Broker accounts of the simulated devices: username = device id, a password each.

The passwords are kept in a credentials file of our own (`device_id password` lines, mode 600) so
that later runs log in again; the broker's password file gets their salted hashes through the same
code as `rpmgw device credentials`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from device_sim.errors import SimConfigError
from rpmgw.broker_accounts import generate_password, set_password


def load_device_passwords(path: Path) -> dict[str, str]:
    """device id -> password from a credentials file (missing file: none)."""
    if not path.exists():
        return {}
    passwords: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        device_id, _, password = line.strip().partition(" ")
        if not password:
            raise SimConfigError(f"{path}:{number}: expected `device_id password`")
        passwords[device_id] = password.strip()
    return passwords


def ensure_device_accounts(device_ids: Iterable[str], credentials: Path, password_file: Path) -> list[str]:
    """Create an account for every device without one in `credentials`; returns the new device ids.

    The broker must re-read its password file afterwards (SIGHUP).
    """
    known = load_device_passwords(credentials)
    created = [device_id for device_id in device_ids if device_id not in known]
    if not created:
        return []
    credentials.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        for device_id in created:
            password = generate_password()
            set_password(password_file, device_id, password)
            out.write(f"{device_id} {password}\n")
    return created

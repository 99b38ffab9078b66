"""Run the project's own Mosquitto from the project's `mosquitto.conf` (demo and tests).

Only the `listener`, `persistence_location`, `log_dest`, `password_file` and `acl_file` lines are
replaced, so what is tested is what docker-compose ships: no anonymous access, the shipped ACL. Each run
gets its own password file with a gateway account and a publisher account (random passwords), and,
when asked, a TLS listener.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel, ConfigDict

from rpmgw.broker_accounts import (
    GATEWAY_USERNAME,
    PUBLISHER_USERNAME,
    Credentials,
    generate_password,
    set_password,
)
from rpmgw.errors import ServerStartError
from rpmgw.servers import die_with_parent as _die_with_parent
from rpmgw.servers import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_CONF = PROJECT_ROOT / "mosquitto.conf"
PROJECT_ACL = PROJECT_ROOT / "mosquitto.acl"
_REPLACED = re.compile(
    r"^\s*(listener|persistence_location|log_dest|user|password_file|acl_file"
    r"|cafile|certfile|keyfile|tls_version|require_certificate|use_identity_as_username)\b.*$",
    re.MULTILINE,
)
# Brokers started by this process, by port, so that test helpers given only (host, port) find the accounts.
_RUNNING: dict[int, MosquittoServer] = {}


class TlsFiles(BaseModel):
    """A TLS listener's server certificate and key (PEM files)."""

    model_config = ConfigDict(frozen=True)

    certfile: Path
    keyfile: Path
    port: int | None = None  # a free port when None


def render_config(
    template: str,
    *,
    port: int,
    data_dir: Path,
    log_path: Path,
    password_file: Path,
    acl_file: Path = PROJECT_ACL,
    tls: TlsFiles | None = None,
    tls_port: int | None = None,
    extra: str = "",
) -> str:
    """The project's config with this run's port, data directory, log file, accounts and TLS listener."""
    body = _REPLACED.sub("", template)
    lines = [
        f"listener {port} 127.0.0.1",
        f"persistence_location {data_dir}/",
        f"log_dest file {log_path}",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
    ]
    if os.geteuid() == 0:
        # As root Mosquitto would switch to user `mosquitto`, which cannot write our directories.
        lines.append("user root")
    tail = ""
    if tls is not None:
        if tls_port is None:
            raise ServerStartError("a TLS listener needs a port")
        # Last in the file: certfile/keyfile belong to the listener above them.
        tail = "\n".join(
            [
                f"listener {tls_port} 127.0.0.1",
                f"certfile {tls.certfile}",
                f"keyfile {tls.keyfile}",
                "tls_version tlsv1.2",
            ]
        )
    return "\n".join(lines) + "\n" + body + "\n" + extra + "\n" + tail + "\n"


def find_running(port: int) -> MosquittoServer | None:
    """The MosquittoServer of this process listening on `port` (plain or TLS), if any."""
    return _RUNNING.get(port)


def _find_mosquitto() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise ServerStartError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
    return found


class MosquittoServer:
    """A Mosquitto process of our own on 127.0.0.1:port with its data in base_dir."""

    def __init__(
        self,
        base_dir: Path,
        port: int,
        process: subprocess.Popen[bytes],
        conf_path: Path,
        *,
        gateway_credentials: Credentials,
        publisher_credentials: Credentials,
        password_file: Path,
        tls_port: int | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.host = "127.0.0.1"
        self.port = port
        self.process = process
        self.conf_path = conf_path
        self.log_path = base_dir / "mosquitto.log"
        # The gateway's account (reads readings/status) and a publisher that may write any device topic.
        self.gateway_credentials = gateway_credentials
        self.publisher_credentials = publisher_credentials
        self.password_file = password_file
        self.tls_port = tls_port

    def client_env(self, credentials: Credentials | None = None) -> dict[str, str]:
        """RPMGW_MQTT__* variables for an rpmgw process (default: the gateway's account)."""
        account = credentials or self.gateway_credentials
        return {
            "RPMGW_MQTT__HOST": self.host,
            "RPMGW_MQTT__PORT": str(self.port),
            "RPMGW_MQTT__USERNAME": account.username,
            "RPMGW_MQTT__PASSWORD": account.password,
        }

    def add_account(self, username: str, password: str | None = None) -> Credentials:
        """Create an account (e.g. a device's) and make the running broker re-read the file (SIGHUP)."""
        account = Credentials(username=username, password=password or generate_password())
        set_password(self.password_file, account.username, account.password)
        if self.running:
            self.reload()
        return account

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: re-read the password and ACL files; returns once the broker logged the reload,
        so that an account added before works from then on (the signal alone is asynchronous)."""
        before = self._reload_count()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._reload_count() == before:
            if time.monotonic() > deadline or not self.running:
                raise ServerStartError(f"mosquitto did not reload within {timeout} s: {self._log_tail()}")
            time.sleep(0.02)

    def _reload_count(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("Reloading config.")

    @classmethod
    def start(
        cls,
        base_dir: Path,
        port: int | None = None,
        *,
        template: Path = PROJECT_CONF,
        acl_file: Path = PROJECT_ACL,
        extra_config: str = "",
        tls: TlsFiles | None = None,
        timeout: float = 15.0,
        die_with_parent: bool = False,
    ) -> MosquittoServer:
        """Start the broker and wait until it accepts connections (and is still our process).

        A fresh password file in base_dir holds this run's gateway and publisher accounts.
        """
        base_dir.mkdir(parents=True, exist_ok=True)
        data_dir = base_dir / "data"
        data_dir.mkdir(exist_ok=True)
        port = port or free_port()
        tls_port = (tls.port or free_port()) if tls is not None else None
        password_file = base_dir / "passwords"
        password_file.unlink(missing_ok=True)
        gateway = Credentials(username=GATEWAY_USERNAME, password=generate_password())
        publisher = Credentials(username=PUBLISHER_USERNAME, password=generate_password())
        for account in (gateway, publisher):
            set_password(password_file, account.username, account.password)
        conf_path = base_dir / "mosquitto.conf"
        log_path = base_dir / "mosquitto.log"
        conf_path.write_text(
            render_config(
                template.read_text(),
                port=port,
                data_dir=data_dir,
                log_path=log_path,
                password_file=password_file,
                acl_file=acl_file,
                tls=tls,
                tls_port=tls_port,
                extra=extra_config,
            )
        )
        stderr = (base_dir / "mosquitto.stderr").open("ab")
        process = subprocess.Popen(
            [_find_mosquitto(), "-c", str(conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        stderr.close()
        server = cls(
            base_dir,
            port,
            process,
            conf_path,
            gateway_credentials=gateway,
            publisher_credentials=publisher,
            password_file=password_file,
            tls_port=tls_port,
        )
        server._wait_ready(timeout)
        server._register()
        return server

    def _register(self) -> None:
        # Kept after stop/kill: fault tests publish to a broker that is down or restarting.
        for port in (self.port, self.tls_port):
            if port is not None:
                _RUNNING[port] = self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"mosquitto exited with code {self.process.returncode} on port {self.port}: {self._log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"mosquitto did not listen on port {self.port} within {timeout} s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        texts = []
        for path in (self.log_path, self.base_dir / "mosquitto.stderr"):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-2000:])
        return " | ".join(t.strip() for t in texts if t.strip()) or "(no log)"

    @property
    def running(self) -> bool:
        """Whether our broker process is alive."""
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence file), then SIGKILL after the deadline."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: what was not autosaved is lost (fault tests)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        stderr = (self.base_dir / "mosquitto.stderr").open("ab")
        self.process = subprocess.Popen(
            [_find_mosquitto(), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        stderr.close()
        self._wait_ready(timeout)
        self._register()

    def __enter__(self) -> MosquittoServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

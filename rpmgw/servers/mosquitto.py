"""Run the project's own Mosquitto from the project's `mosquitto.conf` (demo and tests).

Only the `listener`, `persistence_location` and `log_dest` lines are replaced, so what is tested is
what docker-compose ships.
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

from rpmgw.errors import ServerStartError
from rpmgw.servers import free_port

PROJECT_CONF = Path(__file__).resolve().parents[2] / "mosquitto.conf"
_REPLACED = re.compile(r"^\s*(listener|persistence_location|log_dest|user)\b.*$", re.MULTILINE)


def render_config(template: str, *, port: int, data_dir: Path, log_path: Path, extra: str = "") -> str:
    """The project's config with this run's port, data directory and log file."""
    body = _REPLACED.sub("", template)
    lines = [
        f"listener {port} 127.0.0.1",
        f"persistence_location {data_dir}/",
        f"log_dest file {log_path}",
    ]
    if os.geteuid() == 0:
        # As root Mosquitto would switch to user `mosquitto`, which cannot write our directories.
        lines.append("user root")
    return "\n".join(lines) + "\n" + body + "\n" + extra


def _find_mosquitto() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise ServerStartError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
    return found


class MosquittoServer:
    """A Mosquitto process of our own on 127.0.0.1:port with its data in base_dir."""

    def __init__(self, base_dir: Path, port: int, process: subprocess.Popen[bytes], conf_path: Path) -> None:
        self.base_dir = base_dir
        self.host = "127.0.0.1"
        self.port = port
        self.process = process
        self.conf_path = conf_path
        self.log_path = base_dir / "mosquitto.log"

    @classmethod
    def start(
        cls,
        base_dir: Path,
        port: int | None = None,
        *,
        template: Path = PROJECT_CONF,
        extra_config: str = "",
        timeout: float = 15.0,
    ) -> MosquittoServer:
        """Start the broker and wait until it accepts connections (and is still our process)."""
        base_dir.mkdir(parents=True, exist_ok=True)
        data_dir = base_dir / "data"
        data_dir.mkdir(exist_ok=True)
        port = port or free_port()
        conf_path = base_dir / "mosquitto.conf"
        log_path = base_dir / "mosquitto.log"
        conf_path.write_text(
            render_config(
                template.read_text(), port=port, data_dir=data_dir, log_path=log_path, extra=extra_config
            )
        )
        stderr = (base_dir / "mosquitto.stderr").open("ab")
        process = subprocess.Popen(
            [_find_mosquitto(), "-c", str(conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        stderr.close()
        server = cls(base_dir, port, process, conf_path)
        server._wait_ready(timeout)
        return server

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

    def __enter__(self) -> MosquittoServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

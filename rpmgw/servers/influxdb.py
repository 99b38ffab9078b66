"""A private InfluxDB 1.x server (Debian's `influxd`) in a directory of its own, for the demo and the tests.

Everything it writes (config, meta, data, WAL, log) stays under `base_dir`; it listens on 127.0.0.1 only,
on free ports unless told otherwise, and reports nothing home.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import requests

from rpmgw.errors import ServerStartError
from rpmgw.servers import die_with_parent as _die_with_parent
from rpmgw.servers import free_port

DEFAULT_INFLUXD = "/usr/bin/influxd"
LOG_TAIL_LINES = 30


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes for quotes, backslashes, control chars).
    return json.dumps(value)


def render_config(base_dir: Path, http_port: int, rpc_port: int) -> str:
    """The influxd configuration for one private instance rooted at `base_dir`."""
    return f"""\
reporting-disabled = true
bind-address = {_toml_string(f"127.0.0.1:{rpc_port}")}

[logging]
  format = "logfmt"
  level = "info"
  suppress-logo = true

[meta]
  dir = {_toml_string(str(base_dir / "meta"))}
  logging-enabled = false

[data]
  dir = {_toml_string(str(base_dir / "data"))}
  wal-dir = {_toml_string(str(base_dir / "wal"))}
  query-log-enabled = false
  # 1.x refuses points that bring a tag key past 100,000 values by default ("partial write:
  # max-values-per-tag limit exceeded"): the 100,001st device or patient would never be stored.
  max-values-per-tag = 0

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = {_toml_string(f"127.0.0.1:{http_port}")}
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false
  max-row-limit = 0
"""


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class InfluxServer:
    """One running `influxd` process; stop it with `stop()` or use it as a context manager."""

    def __init__(
        self, process: subprocess.Popen[bytes], base_dir: Path, http_port: int, rpc_port: int, log_path: Path
    ) -> None:
        self.process = process
        self.base_dir = base_dir
        self.http_port = http_port
        self.rpc_port = rpc_port
        self.log_path = log_path

    @property
    def url(self) -> str:
        """The HTTP API base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.http_port}"

    @classmethod
    def start(
        cls,
        base_dir: Path,
        http_port: int | None = None,
        rpc_port: int | None = None,
        influxd: str = DEFAULT_INFLUXD,
        *,
        startup_timeout: float = 30.0,
        die_with_parent: bool = False,
    ) -> InfluxServer:
        """Start influxd under `base_dir` and wait until it answers /ping; raises ServerStartError."""
        if not Path(influxd).is_file():
            raise ServerStartError(
                f"influxd not found at {influxd} (Debian/Ubuntu: apt-get install influxdb)"
            )
        base_dir = base_dir.resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        http_port = http_port if http_port is not None else free_port()
        rpc_port = rpc_port if rpc_port is not None else free_port()
        while rpc_port == http_port:
            rpc_port = free_port()
        config_path = base_dir / "influxdb.conf"
        config_path.write_text(render_config(base_dir, http_port, rpc_port), encoding="utf-8")
        log_path = base_dir / "influxd.log"
        log_start = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [influxd, "run", "-config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Empty environment: INFLUXDB_* variables would silently override the generated config.
                env={},
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        server = cls(process, base_dir, http_port, rpc_port, log_path)
        server._wait_ready(startup_timeout, log_start)
        return server

    def _listening_logged(self, log_start: int) -> bool:
        # Only this run's part of the log: a restart on the same directory appends to it.
        with self.log_path.open("rb") as log:
            log.seek(log_start)
            text = log.read().decode("utf-8", errors="replace")
        return any(
            'msg="Listening on HTTP"' in line and f"addr=127.0.0.1:{self.http_port} " in line
            for line in text.splitlines()
        )

    def _wait_ready(self, timeout: float, log_start: int) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self._fail(f"influxd exited with code {code} before it was ready")
            try:
                response = requests.get(f"{self.url}/ping", timeout=1.0)
            except requests.RequestException as exc:
                last_error = str(exc)
            else:
                # Another server may answer on this port while ours is still starting (and about to fail
                # to bind): the answer is ours only once our own log says it listens there.
                ours = self._listening_logged(log_start) and self.process.poll() is None
                if response.status_code == 204 and ours:
                    return
                last_error = f"/ping answered {response.status_code}"
            time.sleep(0.05)
        self._fail(f"influxd did not answer {self.url}/ping within {timeout:g} s ({last_error})")

    def _fail(self, reason: str) -> None:
        self.stop()
        raise ServerStartError(f"{reason}; last lines of {self.log_path}:\n{_log_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after `timeout` seconds; safe to call twice."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def __enter__(self) -> InfluxServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

"""`rpmgw demo`, the README's first command once installed, as a newcomer runs it: it starts the broker,
InfluxDB, the gateway, the web application, the worker and simulated patients; prints the URL and a
login that works; readings flow; Ctrl-C stops everything and leaves nothing behind."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from rpmgw.servers import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def test_the_demo_runs_shows_its_login_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    mqtt_port, influx_port, web_port = _free_ports(3)
    out_path = tmp_path / "demo.out"
    base = tmp_path / "demo"
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rpmgw",
                "demo",
                "--dir",
                str(base),
                "--mqtt-port",
                str(mqtt_port),
                "--influx-port",
                str(influx_port),
                "--web-port",
                str(web_port),
                "--patients",
                "5",
                "--duration",
                "600",  # a bound should the test fail before its Ctrl-C
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def output() -> str:
        return out_path.read_text(encoding="utf-8", errors="replace")

    def running() -> bool:
        assert demo.poll() is None, f"the demo exited with {demo.returncode}:\n{output()[-3000:]}"
        return "rpm-gateway demo is running" in output()

    try:
        wait_until(running, 180, "the demo's banner")
        banner = re.search(r"(http://127\.0\.0\.1:\d+/)\s+login: (\S+) / (.+?)  \(admin", output())
        assert banner is not None, output()
        url, username, password = banner.groups()
        assert url == f"http://127.0.0.1:{web_port}/"

        web = requests.Session()
        page = web.get(url + "login", timeout=10)
        assert page.status_code == 200
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        login = web.post(
            url + "login",
            data={"username": username, "password": password, "csrf_token": token.group(1)},
            timeout=10,
        )
        assert login.status_code == 200 and "/login" not in login.url, login.text[:2000]

        def readings_stored() -> bool:
            running()
            match = re.findall(r"readings stored: blood_pressure (\d+)", output())
            return bool(match) and int(match[-1]) > 0

        wait_until(readings_stored, 120, "the demo's status line to count stored readings")
        patients = web.get(url + "patients", timeout=10)
        assert patients.status_code == 200
        assert len(set(re.findall(r"P-\d{6}", patients.text))) == 5, patients.text[:3000]
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = demo.wait(90)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert code == 0, output()[-3000:]
    assert "demo stopped" in output()
    assert list((base / "pids").glob("*.pid")) == []  # every process it started is gone
    for port in (mqtt_port, influx_port, web_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

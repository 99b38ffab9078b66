"""The shipped mosquitto.conf and mosquitto.acl on a real broker: who may connect, publish and read."""

from __future__ import annotations

import re
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from rpmgw.broker_accounts import Credentials, remove_account, set_password
from rpmgw.cli import _register, cli
from rpmgw.servers.mosquitto import MosquittoServer, TlsFiles
from tests.helpers import publish_all, readings_topic, wait_until

DEADLINE = 15.0


class Client:
    """A paho client that records its CONNACK, SUBACKs and messages, for assertions."""

    def __init__(self, credentials: Credentials | None, *, tls_ca: Path | None = None) -> None:
        self.connack: ReasonCode | None = None
        self.suback: list[ReasonCode] | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sec-{uuid.uuid4().hex[:8]}")
        if credentials is not None:
            self.client.username_pw_set(credentials.username, credentials.password)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.reconnect_delay_set(60, 60)  # one attempt per test: no silent retries
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason

    def _on_subscribe(self, _c: paho.Client, _u: Any, _m: int, reasons: list[ReasonCode], _p: Any) -> None:
        self.suback = reasons

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def connect(self, port: int) -> ReasonCode:
        """Connect and return the broker's CONNACK reason."""
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, DEADLINE, "a CONNACK")
        assert self.connack is not None
        return self.connack

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        """Subscribe at QoS 1 and return the SUBACK reasons."""
        self.suback = None
        self.client.subscribe([(topic, 1) for topic in topics])
        wait_until(lambda: self.suback is not None, DEADLINE, "a SUBACK")
        assert self.suback is not None
        return self.suback

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the PUBACK (also an ordering barrier for deliveries to us)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(DEADLINE)
        assert info.is_published(), f"no PUBACK for {topic}"

    def received(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def _client(made: list[Client], credentials: Credentials | None, **kwargs: Any) -> Client:
    client = Client(credentials, **kwargs)
    made.append(client)
    return client


def _device(broker: MosquittoServer, made: list[Client], device_id: str) -> Client:
    """A connected device: its account is added and the broker reloaded by SIGHUP."""
    return _connect(broker, made, broker.add_account(device_id))


def _connect(broker: MosquittoServer, made: list[Client], account: Credentials) -> Client:
    client = _client(made, account)
    reason = client.connect(broker.port)
    assert not reason.is_failure, f"{account.username} refused: {reason}"
    return client


def _gateway(broker: MosquittoServer, made: list[Client]) -> Client:
    gateway = _client(made, broker.gateway_credentials)
    assert not gateway.connect(broker.port).is_failure
    assert [r.value for r in gateway.subscribe("rpm/devices/+/readings", "rpm/devices/+/status")] == [1, 1]
    return gateway


def test_the_shipped_config_refuses_anonymous_clients() -> None:
    conf = (Path(__file__).resolve().parents[2] / "mosquitto.conf").read_text()
    assert re.search(r"^allow_anonymous false$", conf, re.MULTILINE)
    assert not re.search(r"^allow_anonymous true", conf, re.MULTILINE)


@pytest.mark.parametrize(
    "who",
    ["anonymous", "wrong password", "unknown user", "gateway name, device password"],
)
def test_clients_without_valid_credentials_are_refused(
    mosquitto_broker: MosquittoServer, clients: list[Client], who: str
) -> None:
    gateway = mosquitto_broker.gateway_credentials
    credentials = {
        "anonymous": None,
        "wrong password": Credentials(username=gateway.username, password=gateway.password + "x"),
        "unknown user": Credentials(username="BP-NOBODY", password="whatever"),
        "gateway name, device password": Credentials(
            username=gateway.username, password=mosquitto_broker.publisher_credentials.password
        ),
    }[who]
    reason = _client(clients, credentials).connect(mosquitto_broker.port)
    assert reason.is_failure
    assert reason.value in (4, 5, 134, 135)  # bad username or password / not authorised


def test_the_gateway_account_reads_what_devices_publish(
    mosquitto_broker: MosquittoServer, clients: list[Client]
) -> None:
    gateway = _gateway(mosquitto_broker, clients)
    device = _device(mosquitto_broker, clients, "BP-SEC-0001")

    device.publish(readings_topic("BP-SEC-0001"), b"reading")
    device.publish("rpm/devices/BP-SEC-0001/status", b"online")

    wait_until(lambda: len(gateway.received()) == 2, DEADLINE, "the gateway got both messages")
    assert gateway.received() == [
        ("rpm/devices/BP-SEC-0001/readings", b"reading"),
        ("rpm/devices/BP-SEC-0001/status", b"online"),
    ]


@pytest.mark.parametrize(
    "topic",
    [
        "rpm/devices/BP-SEC-VICTIM/readings",  # another device's readings
        "rpm/devices/BP-SEC-VICTIM/status",
        "rpm/devices/BP-SEC-ATTACK/other",  # its own id, a topic not in the contract
        "rpm/devices/BP-SEC-ATTACK",
        "$SYS/broker/publish/messages/dropped",
    ],
)
def test_a_device_cannot_publish_as_another_device(
    mosquitto_broker: MosquittoServer, clients: list[Client], topic: str
) -> None:
    gateway = _gateway(mosquitto_broker, clients)
    gateway.subscribe("rpm/devices/#")  # wider than the ACL: the broker must still filter
    account = mosquitto_broker.add_account("BP-SEC-ATTACK")
    attacker = _connect(mosquitto_broker, clients, account)

    # MQTT 3.1.1 cannot refuse a publish: Mosquitto 2.0 acknowledges it, drops it and closes the connection.
    forged = attacker.client.publish(topic, b"forged", qos=1)
    wait_until(
        lambda: forged.is_published() or not attacker.client.is_connected(), DEADLINE, "PUBACK or close"
    )
    _connect(mosquitto_broker, clients, account).publish(readings_topic("BP-SEC-ATTACK"), b"marker")

    # The broker routes each message when it receives it: once the later marker is here, the forgery
    # would have been here before it.
    wait_until(lambda: (readings_topic("BP-SEC-ATTACK"), b"marker") in gateway.received(), DEADLINE, "marker")
    assert [payload for _, payload in gateway.received()] == [b"marker"]


@pytest.mark.parametrize(
    "topics",
    [
        ("rpm/devices/+/readings",),
        ("rpm/devices/BP-SEC-VICTIM/readings",),
        ("rpm/devices/BP-SEC-SNOOP/readings",),  # not even its own
        ("#",),
        ("$share/thieves/rpm/devices/+/readings",),
    ],
)
def test_a_device_cannot_read_other_devices_readings(
    mosquitto_broker: MosquittoServer, clients: list[Client], topics: tuple[str, ...]
) -> None:
    gateway = _gateway(mosquitto_broker, clients)
    snoop = _device(mosquitto_broker, clients, "BP-SEC-SNOOP")
    victim = _device(mosquitto_broker, clients, "BP-SEC-VICTIM")

    reasons = snoop.subscribe(*topics)
    victim.publish(readings_topic("BP-SEC-VICTIM"), b"secret")
    snoop.publish(readings_topic("BP-SEC-SNOOP"), b"own")
    wait_until(lambda: len(gateway.received()) == 2, DEADLINE, "the gateway got both readings")
    # The snoop's PUBACK is sent after anything the broker queued for it before: a barrier.
    snoop.publish(readings_topic("BP-SEC-SNOOP"), b"barrier")

    # Mosquitto 2.0.11 grants the SUBACK (later versions refuse with 0x80/0x87) and checks read
    # access on every delivery: either way nothing reaches the device.
    assert all(r.value in (1, 0x80, 0x87) for r in reasons)
    assert snoop.received() == []


def test_shared_subscriptions_of_the_gateway_account_receive(
    mosquitto_broker: MosquittoServer, clients: list[Client]
) -> None:
    members = []
    for _ in range(2):
        member = _client(clients, mosquitto_broker.gateway_credentials)
        assert not member.connect(mosquitto_broker.port).is_failure
        member.subscribe("$share/rpmgw/rpm/devices/+/readings")
        members.append(member)

    publish_all(
        mosquitto_broker.host,
        mosquitto_broker.port,
        [(readings_topic(f"BP-SH-{i:03d}"), b"r") for i in range(20)],
    )

    wait_until(lambda: sum(len(m.received()) for m in members) == 20, DEADLINE, "20 readings shared")


def test_the_gateway_account_cannot_publish(mosquitto_broker: MosquittoServer, clients: list[Client]) -> None:
    watcher = _client(clients, mosquitto_broker.gateway_credentials)
    assert not watcher.connect(mosquitto_broker.port).is_failure
    watcher.subscribe("rpm/devices/+/readings")
    gateway = _client(clients, mosquitto_broker.gateway_credentials)
    assert not gateway.connect(mosquitto_broker.port).is_failure

    forged = gateway.client.publish(readings_topic("BP-SEC-0002"), b"forged", qos=1)
    wait_until(
        lambda: forged.is_published() or not gateway.client.is_connected(), DEADLINE, "PUBACK or close"
    )
    publish_all(mosquitto_broker.host, mosquitto_broker.port, [(readings_topic("BP-SEC-0002"), b"marker")])

    wait_until(lambda: (readings_topic("BP-SEC-0002"), b"marker") in watcher.received(), DEADLINE, "marker")
    assert (readings_topic("BP-SEC-0002"), b"forged") not in watcher.received()


def test_device_credentials_from_the_cli_let_the_device_in(
    mosquitto_broker: MosquittoServer, clients: list[Client], tmp_path: Path
) -> None:
    _register()
    result = CliRunner().invoke(
        cli,
        ["device", "credentials", "BP-CLI-0001", "--password-file", str(mosquitto_broker.password_file)],
        env={"RPMGW_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    password = re.search(r"password \(shown once.*\): (\S+)", result.output)
    assert password is not None, result.output
    assert password.group(1) not in mosquitto_broker.password_file.read_text()  # only a salted hash

    mosquitto_broker.reload()
    device = _connect(
        mosquitto_broker, clients, Credentials(username="BP-CLI-0001", password=password.group(1))
    )
    device.publish(readings_topic("BP-CLI-0001"), b"ok")


def test_hashes_written_without_mosquitto_passwd_are_accepted(
    mosquitto_broker: MosquittoServer, clients: list[Client]
) -> None:
    account = Credentials(username="BP-PY-0001", password="written by python")
    set_password(mosquitto_broker.password_file, account.username, account.password, use_binary=False)
    mosquitto_broker.reload()
    device = _connect(mosquitto_broker, clients, account)
    device.publish(readings_topic("BP-PY-0001"), b"ok")


def test_the_cli_refuses_reserved_and_invalid_device_ids(tmp_path: Path) -> None:
    _register()
    for device_id in ("rpmgw-gateway", "rpmgw-sim", "a/b", "+", "x"):
        result = CliRunner().invoke(
            cli, ["device", "credentials", device_id, "--password-file", str(tmp_path / "p")]
        )
        assert result.exit_code != 0, device_id
    assert not (tmp_path / "p").exists() or (tmp_path / "p").read_text() == ""


# --- TLS -------------------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return key, cert


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[MosquittoServer, Path, Path]]:
    """A broker with a TLS listener whose certificate a throw-away CA signed; also an unrelated CA."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca_key, ca_cert = _make_ca(certs, "throwaway-ca")
    _other_key, other_ca = _make_ca(certs, "unrelated-ca")
    server_key, server_csr, server_cert = certs / "server.key", certs / "server.csr", certs / "server.crt"
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(server_key),
        "-out",
        str(server_csr),
    )
    ext = certs / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(server_csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(ext),
        "-out",
        str(server_cert),
    )
    server = MosquittoServer.start(
        tmp_path / "mosquitto", tls=TlsFiles(certfile=server_cert, keyfile=server_key)
    )
    try:
        yield server, ca_cert, other_ca
    finally:
        server.stop()


def test_a_client_verifying_the_ca_connects_and_publishes_over_tls(
    tls_broker: tuple[MosquittoServer, Path, Path], clients: list[Client]
) -> None:
    broker, ca_cert, _ = tls_broker
    assert broker.tls_port is not None
    watcher = _client(clients, broker.gateway_credentials)
    assert not watcher.connect(broker.port).is_failure
    watcher.subscribe("rpm/devices/+/readings")

    device = _client(clients, broker.publisher_credentials, tls_ca=ca_cert)
    assert not device.connect(broker.tls_port).is_failure
    device.publish(readings_topic("BP-TLS-0001"), b"over tls")

    wait_until(
        lambda: watcher.received() == [(readings_topic("BP-TLS-0001"), b"over tls")], DEADLINE, "relay"
    )


def test_the_tls_listener_still_wants_credentials(
    tls_broker: tuple[MosquittoServer, Path, Path], clients: list[Client]
) -> None:
    broker, ca_cert, _ = tls_broker
    assert broker.tls_port is not None
    assert _client(clients, None, tls_ca=ca_cert).connect(broker.tls_port).is_failure


def test_plain_tcp_to_the_tls_port_fails(tls_broker: tuple[MosquittoServer, Path, Path]) -> None:
    broker, _, _ = tls_broker
    assert broker.tls_port is not None
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="plain-to-tls")
    client.username_pw_set(broker.publisher_credentials.username, broker.publisher_credentials.password)
    client.connect("127.0.0.1", broker.tls_port)
    # The broker waits for a TLS ClientHello and closes the connection on an MQTT CONNECT instead.
    outcome = client.loop(timeout=1.0)
    deadline_loops = 0
    while outcome == paho.MQTT_ERR_SUCCESS and deadline_loops < 50 and not client.is_connected():
        outcome = client.loop(timeout=0.2)
        deadline_loops += 1
    assert not client.is_connected()
    assert outcome != paho.MQTT_ERR_SUCCESS
    client.disconnect()


def test_a_client_trusting_another_ca_refuses_the_broker(
    tls_broker: tuple[MosquittoServer, Path, Path],
) -> None:
    broker, _, other_ca = tls_broker
    assert broker.tls_port is not None
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="wrong-ca")
    client.tls_set(ca_certs=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect("127.0.0.1", broker.tls_port)


def test_publish_all_fails_at_once_when_its_login_is_refused(mosquitto_broker: MosquittoServer) -> None:
    wrong = Credentials(username="rpmgw-sim", password="not the password")
    with pytest.raises(AssertionError, match="refused the login of rpmgw-sim"):
        publish_all(
            mosquitto_broker.host,
            mosquitto_broker.port,
            [(readings_topic("BP-X-1"), b"r")],
            5,
            credentials=wrong,
        )


def test_the_gateway_account_reads_the_dropped_messages_counter_and_nothing_else_of_sys(
    tmp_path: Path, clients: list[Client]
) -> None:
    with MosquittoServer.start(tmp_path / "mosquitto", extra_config="sys_interval 1\n") as broker:
        gateway = _client(clients, broker.gateway_credentials)
        assert not gateway.connect(broker.port).is_failure
        # $SYS values are retained and sent on SUBACK in filter order: the broad filter's would come first.
        gateway.subscribe("$SYS/#", "$SYS/broker/publish/messages/dropped")

        wait_until(lambda: bool(gateway.received()), DEADLINE, "the dropped-messages counter")
        assert gateway.received()[0] == ("$SYS/broker/publish/messages/dropped", b"0")
        assert {topic for topic, _ in gateway.received()} == {"$SYS/broker/publish/messages/dropped"}


def test_a_removed_device_is_disconnected_by_the_reload_and_cannot_come_back(
    mosquitto_broker: MosquittoServer, clients: list[Client]
) -> None:
    lost = mosquitto_broker.add_account("BP-LOST-0001")
    device = _connect(mosquitto_broker, clients, lost)
    stays = _device(mosquitto_broker, clients, "BP-KEPT-0001")

    assert remove_account(mosquitto_broker.password_file, "BP-LOST-0001")
    mosquitto_broker.reload()

    wait_until(lambda: not device.client.is_connected(), DEADLINE, "the lost device disconnected")
    assert _client(clients, lost).connect(mosquitto_broker.port).is_failure
    stays.publish(readings_topic("BP-KEPT-0001"), b"still here")

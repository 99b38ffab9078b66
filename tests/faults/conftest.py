"""The fault suite's deployment, its measurements, and the report it writes (docs/RELIABILITY.md).

Every fault test records one row through the `fault_report` fixture: what was injected, how much load
was in flight, and what was lost or doubled. At the end of the session the rows are printed as a
table; when every fault of `CATALOGUE` ran, the table is also written to docs/RELIABILITY.md (the text
around it is fixed, so the file changes only where the measured numbers change).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alerts.notify.tables import OutboxMessage
from alerts.staff import add_care_team, add_member, add_staff, assign_patient
from alerts.tables import Alert, AlertEvent
from gateway.quarantine import Quarantine
from gateway.timeseries.influx_v1 import InfluxV1Store
from rpmgw.admin import add_patient, enrol_device
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import InfluxSettings
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import RpmgwProcess, bp_payload, encode, publish_all, readings_topic, wait_until

REPORT_PATH = Path(__file__).resolve().parents[2] / "docs" / "RELIABILITY.md"
PROBE_DEVICE = "probe-faults"
DOCTOR_PHONE = "+79990009001"

# (key, fault, what is promised): the order of the report.
CATALOGUE: tuple[tuple[str, str, str], ...] = (
    ("gateway_sigkill", "Gateway SIGKILLed under QoS 1 load, restarted", "nothing lost or doubled"),
    (
        "influx_down",
        "InfluxDB down while readings keep coming",
        "nothing lost; memory bounded; a critical reading alerted meanwhile",
    ),
    ("broker_restart", "Broker restarted (SIGTERM) under load", "nothing lost or doubled"),
    ("broker_sigkill", "Broker SIGKILLed, restarted", "measured: see residual risk"),
    (
        "fleet_reconnect",
        "Broker restarted under 1,000 connected devices",
        "reconnect spread by jitter; nothing lost",
    ),
    ("db_down", "PostgreSQL unreachable (TCP cut) under load", "alerts deferred, not skipped"),
    ("sms_failures", "SMS provider: timeout, 429, 500, invalid number", "no SMS twice; failure visible"),
    ("gateway_sigterm", "Gateway SIGTERM under load, restarted", "batch flushed; nothing lost"),
    ("device_flood", "One device floods; others keep publishing", "others unharmed; excess quarantined"),
    ("broker_drops", "Broker drops from a full queue", "gateway logs an ERROR"),
    ("bad_input", "Replayed msg_ids, a reading from the future, a 3-day-old one", "once; refused; late"),
)


@dataclass(frozen=True)
class FaultResult:
    """One row of the reliability table."""

    key: str
    load: str
    lost: int | None
    doubled: int | None
    alerts_doubled: int | None
    sms_doubled: int | None
    recovery_seconds: float | None
    note: str = ""


@dataclass
class _Results:
    rows: dict[str, FaultResult] = field(default_factory=dict)


RESULTS = _Results()


@pytest.fixture
def fault_report() -> Callable[[FaultResult], None]:
    """Record a fault test's measured row (recorded before its assertions, so failures show too)."""

    def record(result: FaultResult) -> None:
        RESULTS.rows[result.key] = result

    return record


def _cell(value: int | float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f} s"
    return str(value)


def render_table() -> str:
    """The measured rows as a Markdown table, in catalogue order."""
    lines = [
        "| fault | load in flight | promise | readings lost | readings doubled | alerts doubled "
        "| SMS doubled | time to recover | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, title, promise in CATALOGUE:
        row = RESULTS.rows.get(key)
        if row is None:
            lines.append(f"| {title} | not run | {promise} | | | | | | |")
            continue
        lines.append(
            f"| {title} | {row.load} | {promise} | {_cell(row.lost)} | {_cell(row.doubled)} "
            f"| {_cell(row.alerts_doubled)} | {_cell(row.sms_doubled)} | {_cell(row.recovery_seconds)} "
            f"| {row.note} |"
        )
    return "\n".join(lines) + "\n"


REPORT_HEAD = """# Reliability: the fault suite's measurements

Written by `tests/faults/` at the end of every test run that ran all of its faults (`scripts/test`,
which CI runs). Each row is one automated test with real processes (Mosquitto, InfluxDB 1.x,
PostgreSQL or SQLite, `rpmgw gateway`, `rpmgw worker`, a fake Twilio API). "Lost" counts valid
readings published (PUBACKed) that are not in InfluxDB; "doubled" counts extra copies of a msg_id
in InfluxDB; "alerts doubled" counts open alerts beyond one per patient and rule family plus
repeated alert events of one reading; "SMS doubled" counts texts the provider accepted beyond one
per outbox row (every text has its own row, keyed by an idempotency key). "n/a": the fault does not
involve that part. The numbers below come from the last run; only the measured numbers change from
run to run.

"""

REPORT_TAIL = """
## Behaviour and residual risk

- **Gateway crash (SIGKILL).** Readings are acknowledged to the broker only after InfluxDB accepted
  them and alerts were evaluated; a crash leaves them unacknowledged in the gateway's persistent
  session and the broker redelivers them. InfluxDB points are keyed by the reading (a redelivery
  overwrites the same point), alert events are unique per (alert, kind, msg_id), texts have an
  idempotency key in the outbox.
- **InfluxDB down.** The gateway keeps retrying the batch in hand with backoff and acknowledges
  nothing; the broker keeps the rest (the gateway's Receive Maximum bounds what it holds in memory).
  `/readyz` answers 503 (its InfluxDB check fails) and `Gateway.stats.degraded_reason` holds the
  last error. When InfluxDB returns the backlog drains. A critical reading (severe blood pressure,
  level 2 hypoglycaemia, severe hyperglycaemia) is alerted during the outage all the same: its alert
  is committed while its write fails, and if its patient's history cannot be read either (a gateway
  restarted during the outage has none cached) it is decided from its value, applying only the
  critical rule's breach (metric `rpmgw_critical_decided_without_history`); one queued behind the
  failed batch is looked at between its attempts. The rest of its decisions wait for InfluxDB with
  the batch. There is no on-disk spool in the gateway: the broker's persistent session is the buffer.
- **Relational database down.** Readings of devices whose enrolment is cached keep being written to
  InfluxDB (idempotently) on every retry, but the batch is not acknowledged until the registry,
  the alert engine and the quarantine could write: alert evaluation is deferred and caught up,
  never skipped.
- **Broker restart (SIGTERM).** Mosquitto saves its persistence file on a clean stop: queued
  readings and sessions survive; the gateway reconnects (paho backoff) and resumes its session.
- **Broker crash (SIGKILL).** Mosquitto keeps its state in memory and writes it to disk only at
  `autosave_interval` or on a clean stop. What was PUBACKed to devices but neither delivered to the
  gateway nor saved is lost: the measured loss is in the table. The test is the worst case (a burst
  of thousands of readings, the broker killed right after the last PUBACK, the gateway still busy
  with the backlog). The shipped `mosquitto.conf` saves every 5 s (`autosave_interval 5`;
  `autosave_on_changes true` did not narrow the window in our measurements with Mosquitto 2.0.11,
  and saving every second rewrites a large backlog to disk every second). The loss depends on where
  the kill falls in the save cycle: while choosing the setting we measured, for the same burst of
  5,000 readings, 1,336 lost with `autosave_interval 10`, 625 and 3,066 with `autosave_on_changes`
  at 100 and 1, 1,631 and 224 with a 1 s interval; the table shows this run's loss with the shipped
  5 s. Residual risk: a broker crash loses the readings PUBACKed in the last few seconds that the
  gateway had not received yet; at a clinic's ~1 reading/s that is a handful. Run the broker under a
  supervisor that restarts it; readings the gateway had already received are stored anyway (it
  holds them until written).
- **Silent broker drops.** When a subscriber's queue limit is hit Mosquitto drops QoS 1 messages
  and still PUBACKs the publisher. The shipped limits (`max_queued_messages 0`, a byte cap) make
  that unlikely; the gateway subscribes to `$SYS/broker/publish/messages/dropped` and logs an ERROR
  on every increase (`gateway.brokerwatch`).
- **Flooding device.** A per-device token bucket (`RPMGW_GATEWAY__RATE_LIMIT_PER_SECOND`,
  `..._BURST`; an LRU of `..._DEVICES` devices bounds memory) sends readings over the limit to the
  quarantine with reason `rate_limited`: never silently dropped, and other devices' readings pass.
- **SMS provider failures.** Timeouts, 429 and 5xx are retried with backoff; a provider that may
  have received an unanswered request is asked before resending; an invalid number is a permanent
  failure shown to staff, and the alert stays in the inbox.

## Not covered yet

- A thousand simulated devices reconnecting after a broker restart (reconnect storm, jitter):
  the broker-restart test uses the gateway and one publisher.
- Permanent SMS failures are visible as `failed` outbox rows with the provider's code; the test
  does not drive the web page that shows them to staff.
- The relational-database fault is a cut TCP connection to PostgreSQL; SQLite locked or read-only
  is not injected.
"""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write docs/RELIABILITY.md when every fault of the catalogue was measured in this run."""
    if not RESULTS.rows:
        return
    if all(key in RESULTS.rows for key, _, _ in CATALOGUE):
        REPORT_PATH.write_text(REPORT_HEAD + render_table() + REPORT_TAIL, encoding="utf-8")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the table of this run's faults."""
    if RESULTS.rows:
        terminalreporter.section("fault suite: injected, lost, doubled")
        terminalreporter.write(render_table())


# ------------------------------------------------------------------------------------- deployment


@dataclass
class FaultDeployment:
    """A broker of its own, an InfluxDB database, a relational database, a fake Twilio, and the env."""

    broker: MosquittoServer
    influx: InfluxServer
    db_url: str
    database: str
    twilio: FakeTwilio
    tmp: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.broker.client_env(),  # the gateway's broker account (the broker refuses anonymous clients)
            "RPMGW_MQTT__CLIENT_ID": f"gw-{self.database}",
            "RPMGW_MQTT__RECONNECT_MIN_DELAY": "0.5",
            "RPMGW_MQTT__RECONNECT_MAX_DELAY": "2",
            "RPMGW_INFLUX__URL": self.influx.url,
            "RPMGW_INFLUX__DATABASE": self.database,
            "RPMGW_DATABASE__URL": self.db_url,
            "RPMGW_DATA_DIR": str(self.tmp),
            "RPMGW_GATEWAY__BATCH_MAX_WAIT": "0.05",
            "RPMGW_GATEWAY__STORAGE_RETRY_MAX_DELAY": "1",
            "RPMGW_ALERTS__WORKER_INTERVAL_SECONDS": "0.2",
            "RPMGW_ALERTS__DELIVERY_INTERVAL_SECONDS": "0.2",
            "RPMGW_SMS__RETRY_BASE_SECONDS": "0.2",
            **self.twilio.env(),
            **self.extra_env,
        }

    def sessions(self) -> sessionmaker[Session]:
        return session_factory(make_engine(self.db_url))

    def start(self, command: str, name: str, **env: str) -> RpmgwProcess:
        return RpmgwProcess([command], {**self.env, **env}, self.tmp / f"{name}.log")

    def stored_counts(self) -> Counter[str]:
        with InfluxV1Store(InfluxSettings(url=self.influx.url, version="1", database=self.database)) as store:
            counts: Counter[str] = Counter()
            for kind in ("blood_pressure", "glucose"):
                counts.update(store.msg_id_counts(kind))
            return counts

    def quarantined_by_reason(self) -> dict[str, int]:
        return Quarantine(self.sessions()).counts_by_reason()

    def enrol_patients(self, count: int, prefix: str, *, phone_base: int = 79990001000) -> list[str]:
        """`count` patients with one BP monitor each (device ids returned), in the care of one doctor."""
        sessions = self.sessions()
        now = datetime.now(UTC)
        devices = []
        with sessions.begin() as session:
            add_staff(
                session, username=f"dr-{prefix}", display_name="Dr Test", phone=DOCTOR_PHONE, role="doctor"
            )
            add_care_team(session, f"team-{prefix}")
            add_member(session, f"team-{prefix}", f"dr-{prefix}", responsible=True)
        for i in range(count):
            patient, device = f"P-{prefix}-{i:03d}", f"bp-{prefix}-{i:03d}"
            with sessions.begin() as session:
                add_patient(
                    session, patient_id=patient, display_name=f"Patient {i}", phone=f"+{phone_base + i}"
                )
                enrol_device(
                    session,
                    device_id=device,
                    patient_id=patient,
                    valid_from=now - timedelta(days=30),
                    kind="blood_pressure",
                )
                assign_patient(session, patient, f"team-{prefix}")
            devices.append(device)
        return devices

    def publish(self, payloads: list[dict[str, object]], timeout: float = 120) -> int:
        return publish_all(
            self.broker.host,
            self.broker.port,
            [(readings_topic(str(p["device_id"])), encode(p)) for p in payloads],
            timeout,
        )

    def wait_live(self, gateway: RpmgwProcess) -> None:
        """Probe from an unenrolled device until one is quarantined: the gateway's pipeline is live."""
        before = self.quarantined_by_reason().get("unenrolled", 0)

        def probe_arrived() -> bool:
            assert gateway.alive, f"gateway died:\n{gateway.log()[-3000:]}"
            self.publish([bp_payload(PROBE_DEVICE)])
            return self.quarantined_by_reason().get("unenrolled", 0) > before

        wait_until(probe_arrived, 60, "the gateway to quarantine a probe", interval=0.5)

    def alerts_doubled(self) -> int:
        """Open alerts beyond one per (patient, family), plus repeated events of one reading on an alert."""
        with self.sessions()() as session:
            open_per_family = session.execute(
                select(func.count())
                .select_from(Alert)
                .where(Alert.closed_at.is_(None))
                .group_by(Alert.patient_id, Alert.family)
            ).scalars()
            extra_alerts = sum(n - 1 for n in open_per_family)
            events = session.execute(
                select(func.count())
                .select_from(AlertEvent)
                .where(AlertEvent.msg_id.is_not(None))
                .group_by(AlertEvent.alert_id, AlertEvent.kind, AlertEvent.msg_id)
            ).scalars()
            return extra_alerts + sum(n - 1 for n in events)

    def alerts_by_patient(self, family: str | None = None) -> Counter[str]:
        """Alerts per patient, of one rule family (e.g. "bp_high") or all."""
        query = select(Alert.patient_id)
        if family is not None:
            query = query.where(Alert.family == family)
        with self.sessions()() as session:
            return Counter(session.scalars(query).all())

    def texts_about(self, patient_id: str) -> list[str]:
        """Purposes of the alert texts (to patient or staff) about a patient's readings: not reminders."""
        query = select(OutboxMessage.purpose).where(
            OutboxMessage.patient_id == patient_id, OutboxMessage.alert_id.is_not(None)
        )
        with self.sessions()() as session:
            return list(session.scalars(query).all())

    def outbox_statuses(self) -> Counter[str]:
        with self.sessions()() as session:
            return Counter(session.scalars(select(OutboxMessage.status)).all())

    def sms_doubled(self) -> int:
        """Texts the provider accepted beyond one per outbox row marked sent (a row sent twice)."""
        sent = self.outbox_statuses().get("sent", 0)
        return max(0, len(self.twilio.messages) - sent)


def measure_loss(published: set[str], counts: Counter[str]) -> tuple[int, int]:
    """(readings lost, extra copies stored) of the published msg_ids."""
    lost = len(published - set(counts))
    doubled = sum(n - 1 for msg_id, n in counts.items() if msg_id in published and n > 1)
    return lost, doubled


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def fault_env(
    influx_server: InfluxServer, fake_twilio: FakeTwilio, tmp_path: Path
) -> Iterator[FaultDeployment]:
    """Own broker (from the shipped mosquitto.conf, $SYS every second), SQLite database, fake Twilio."""
    broker = MosquittoServer.start(tmp_path / "mosquitto", extra_config="sys_interval 1\n")
    db_url = f"sqlite:///{tmp_path / 'rpmgw.sqlite3'}"
    upgrade(db_url)
    try:
        yield FaultDeployment(
            broker, influx_server, db_url, f"faults_{uuid.uuid4().hex[:12]}", fake_twilio, tmp_path
        )
    finally:
        broker.stop()

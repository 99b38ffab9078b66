"""Web response times: the alert inbox, the population overview and a patient page with a year of readings.

A real `rpmgw web` process (waitress) on the bench's database and InfluxDB; a doctor logs in through
the form and each page is fetched `requests_per_page` times.

The inbox holds open alerts the lifecycle (alerts/lifecycle.py, alerts/timerules.py) could have
produced: one per (patient, family), every family, so about `alerts` / 9 patients of the doctor's care
team; a realistic mix of rules (so severities), acknowledged-but-active, cleared-but-unacknowledged and
waiting alerts opened over the last four weeks, critical ones escalated as far as their age allows.
Each patient also has a few closed episodes (acknowledged and cleared) from the weeks before, so the
"closed" filter has data. Events and acknowledgements are written as the lifecycle writes them.
"""

from __future__ import annotations

import math
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import requests
from sqlalchemy import insert
from sqlalchemy.orm import Session

from alerts import staff as staff_admin
from alerts.model import RULES, Family, RuleId, Severity
from alerts.tables import REASON_CODES, Acknowledgement, Alert, AlertEvent
from alerts.thresholds import Thresholds
from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import Rejection, parse
from rpmgw.bench.errors import BenchError
from rpmgw.bench.harness import BenchEnv, bp_payload, device_id, patient_id, wait_for
from rpmgw.bench.latency import percentiles
from rpmgw.servers import free_port
from rpmgw.settings import AlertsSettings, InfluxSettings
from web import accounts

USERNAME = "bench.doctor"
PASSWORD = "bench-password-0123456789"
TEAM = "bench-team"

# How often each rule opens its family's alert (default 1): the milder rule of a family is the commoner.
_RULE_WEIGHTS: Final[Mapping[RuleId, int]] = {
    RuleId.SEVERE_BP: 1,
    RuleId.HIGH_BP: 4,
    RuleId.PULSE_EXTREME: 1,
    RuleId.PULSE_ABNORMAL: 3,
    RuleId.HYPO_L2: 1,
    RuleId.HYPO_L1: 3,
    RuleId.HYPER_SEVERE: 1,
    RuleId.HYPER_MARKED: 5,
}
_OPEN_SPREAD: Final = timedelta(days=28)  # open alerts were opened within the last four weeks
_CLOSED_PER_PATIENT: Final = 2  # closed episodes per patient, 5 to 9 weeks ago
_INSERT_CHUNK: Final = 2_000


@dataclass(frozen=True, slots=True)
class SeededAlerts:
    """What `_seed_staff_and_alerts` wrote."""

    open: int
    acknowledged: int  # of the open ones: acknowledged, condition still active
    closed: int
    patients: int  # in the doctor's care team


@dataclass(slots=True)
class _Episode:
    """One alert row with its events and acknowledgement, before the alert has an id."""

    row: dict[str, Any]
    events: list[tuple[datetime, str, str | None, str]] = field(default_factory=list)
    ack: tuple[datetime, str, str] | None = None  # at, reason code, note


def web_response_times(env: BenchEnv, *, alerts: int, requests_per_page: int) -> dict[str, object]:
    """p50/p95 of the inbox, of the population overview and of a patient page with 365 days x 4 readings."""
    database = f"bench_web_{uuid.uuid4().hex[:8]}"
    seeded = _seed_staff_and_alerts(env, alerts)
    readings = _seed_year(env, database, patient_index=0)
    port = free_port()
    web_env = env.gateway_env(database=database, client_id="unused")
    web_env |= {"RPMGW_WEB__HOST": "127.0.0.1", "RPMGW_WEB__PORT": str(port)}
    web = env.start_rpmgw(["web"], web_env, "web")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        web.check_alive()
        try:
            return requests.get(f"{base}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, 60, "the web process")
    client = _login(base)
    alerts_note = (
        f"{seeded.open:,} open alerts ({seeded.acknowledged:,} acknowledged) of {seeded.patients:,} "
        f"patients; {seeded.closed:,} closed"
    )
    pages = {
        "inbox": ("/alerts", alerts_note),
        "population_page": ("/patients", f"{seeded.patients:,} patients; {seeded.open:,} open alerts"),
        "patient_page": (f"/patients/{patient_id(0)}", f"{readings:,} readings (365 days x 4)"),
    }
    results: dict[str, object] = {}
    try:
        for name, (path, note) in pages.items():
            timings = []
            for _ in range(requests_per_page):
                started = time.perf_counter()
                response = client.get(base + path, timeout=60)
                timings.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise BenchError(f"{path} answered {response.status_code}")
            figures: dict[str, object] = dict(percentiles(timings))
            figures["path"] = path
            figures["note"] = note
            results[name] = figures
    finally:
        web.stop()
    return results


def _seed_staff_and_alerts(env: BenchEnv, count: int) -> SeededAlerts:
    """The bench doctor, their care team, and `count` open alerts (plus closed history) of its patients."""
    families = list(Family)
    needed = math.ceil(count / len(families))
    if needed > env.devices:
        env.enrol_range(env.devices, needed)  # the patients the alerts need beyond the enrolled devices
    team_size = max(env.devices, needed)
    sessions = env.db
    now = datetime.now(UTC)
    with sessions.begin() as session:
        member = staff_admin.add_staff(
            session, username=USERNAME, display_name="Bench Doctor", phone="+79990000999", role="doctor"
        )
        accounts.set_password(session, member, PASSWORD, now=now - timedelta(days=1))
        staff_admin.add_care_team(session, TEAM)
        staff_admin.add_member(session, TEAM, USERNAME, responsible=True)
        for index in range(team_size):
            staff_admin.assign_patient(session, patient_id(index), TEAM)
        staff_id = member.id
    rng = random.Random(7)
    seeder = _Seeder(rng, now, Thresholds(), AlertsSettings())
    episodes: list[_Episode] = []
    for n in range(count):
        episodes.append(seeder.open_episode(n // len(families), families[n % len(families)]))
    for index in range(needed):
        for family in rng.sample(families, _CLOSED_PER_PATIENT):
            episodes.append(seeder.closed_episode(index, family))
    with sessions.begin() as session:
        _insert_episodes(session, episodes, staff_id)
    return SeededAlerts(
        open=count,
        acknowledged=sum(1 for e in episodes if e.ack is not None and e.row["closed_at"] is None),
        closed=len(episodes) - count,
        patients=team_size,
    )


def _insert_episodes(session: Session, episodes: Sequence[_Episode], staff_id: int) -> None:
    """Bulk inserts: the alerts (their ids come back in order), then their events and acknowledgements."""
    for start in range(0, len(episodes), _INSERT_CHUNK):
        chunk = episodes[start : start + _INSERT_CHUNK]
        ids = session.scalars(
            insert(Alert).returning(Alert.id, sort_by_parameter_order=True), [e.row for e in chunk]
        ).all()
        events: list[dict[str, Any]] = []
        acks: list[dict[str, Any]] = []
        for alert_id, episode in zip(ids, chunk, strict=True):
            events.extend(
                {"alert_id": alert_id, "at": at, "kind": kind, "msg_id": msg_id, "detail": detail}
                for at, kind, msg_id, detail in episode.events
            )
            if episode.ack is not None:
                at, reason, note = episode.ack
                acks.append(
                    {
                        "alert_id": alert_id,
                        "staff_id": staff_id,
                        "at": at,
                        "reason_code": reason,
                        "note": note,
                        "time_to_ack_seconds": max(0, int((at - episode.row["opened_at"]).total_seconds())),
                    }
                )
        session.execute(insert(AlertEvent), events)
        if acks:
            session.execute(insert(Acknowledgement), acks)


class _Seeder:
    """Alert episodes as the lifecycle would have left them (default clinic thresholds)."""

    def __init__(self, rng: random.Random, now: datetime, t: Thresholds, settings: AlertsSettings) -> None:
        self.rng = rng
        self.now = now
        self.t = t
        self.settings = settings
        self.msg_ids = 0

    def open_episode(self, index: int, family: Family) -> _Episode:
        """An open alert: a third acknowledged (still active), a fifth cleared but unacknowledged."""
        rng = self.rng
        # Skewed towards recent: half opened within the last week.
        opened = self.now - _OPEN_SPREAD * rng.random() ** 2 - timedelta(seconds=30)
        episode = self._raise(index, family, opened, self.now)
        roll = rng.random()
        if roll < 1 / 3:
            self._acknowledge(episode, self._between(opened, self.now))
        elif roll < 1 / 3 + 1 / 5:
            self._clear(episode, self._between(episode.row["last_measured_at"] or opened, self.now))
        self._escalate(episode)
        return episode

    def closed_episode(self, index: int, family: Family) -> _Episode:
        """A closed alert 5 to 9 weeks old: acknowledged and cleared, closed by the later of the two."""
        rng = self.rng
        opened = self.now - timedelta(days=35 + 28 * rng.random())
        until = opened + timedelta(hours=1 + 96 * rng.random())
        episode = self._raise(index, family, opened, until)
        acknowledged = self._between(opened, until)
        cleared = self._between(episode.row["last_measured_at"] or opened, until)
        if cleared < acknowledged:
            self._clear(episode, cleared)
            self._acknowledge(episode, acknowledged)
        else:
            self._acknowledge(episode, acknowledged)
            self._clear(episode, cleared)
        self._escalate(episode)
        return episode

    def _between(self, earliest: datetime, latest: datetime) -> datetime:
        return earliest + (latest - earliest) * self.rng.random()

    def _rule(self, family: Family) -> RuleId:
        rules = [rule for rule in RuleId if RULES[rule].family is family]
        return self.rng.choices(rules, [_RULE_WEIGHTS.get(rule, 1) for rule in rules])[0]

    def _raise(self, index: int, family: Family, opened: datetime, until: datetime) -> _Episode:
        """The alert as `_open` (readings) or `_open_time_alert` (time rules) writes it, readings attached."""
        rule = self._rule(family)
        row: dict[str, Any] = {
            "patient_id": patient_id(index),
            "family": family.value,
            "rule": rule.value,
            "severity": RULES[rule].severity.value,
            "opened_at": opened,
            "first_measured_at": None,
            "last_measured_at": None,
            "reading_count": 0,
            "worst_value_text": "",
            "worst_key": None,
            "last_value_text": "",
            "confirmation": None,
            "confirmation_since": None,
            "late": False,
            "threshold_version": "clinic",
            "subject": None,
            "cleared_at": None,
            "acknowledged_at": None,
            "acknowledged_by": None,
            "closed_at": None,
            "escalation_level": 0,
            "next_escalation_at": None,
        }
        episode = _Episode(row)
        if family in (Family.NO_DATA, Family.DEVICE_SILENT):
            if family is Family.NO_DATA:
                subject = "blood_pressure"  # the bench's devices are blood-pressure monitors
                since = opened - timedelta(days=2 * self.t.no_data_days_bp)
                text = f"no blood pressure reading since {since.isoformat()}"
            else:
                subject = device_id(index)
                since = opened - timedelta(days=self.t.device_silent_days)
                text = f"device {subject} silent since {since.isoformat()}"
            row |= {"subject": subject, "worst_value_text": text, "last_value_text": text}
            episode.events.append((opened, "raised", None, text))
            return episode
        # The reading that opened it was measured a little before; more may have been attached since.
        measured = opened - timedelta(seconds=5 + 115 * self.rng.random())
        times = [measured]
        for _ in range(self.rng.choices((0, 1, 2, 3), (5, 3, 1, 1))[0]):
            times.append(self._between(times[-1], min(until, times[-1] + timedelta(days=2))))
        values = [self._value(rule) for _ in times]
        worst_text, worst_key = max(values, key=lambda v: v[1])
        row |= {
            "first_measured_at": times[0],
            "last_measured_at": times[-1],
            "reading_count": len(times),
            "worst_value_text": worst_text,
            "worst_key": worst_key,
            "last_value_text": values[-1][0],
        }
        episode.events.append(
            (opened, "raised", self._msg_id(), f"{rule.value} {values[0][0]}; thresholds clinic")
        )
        for at, (text, _) in zip(times[1:], values[1:], strict=True):
            episode.events.append(
                (max(at, opened), "reading_attached", self._msg_id(), f"{rule.value} {text}")
            )
        if rule is RuleId.SEVERE_BP:
            self._confirmation(episode, times)
        return episode

    def _confirmation(self, episode: _Episode, times: Sequence[datetime]) -> None:
        """Severe BP: confirmed by a repeat, else pending within the window, else no repeat or refuted."""
        row = episode.row
        if len(times) > 1:
            confirmation = "confirmed"
            episode.events.append((times[1], "confirmed", None, row["worst_value_text"]))
        elif self.now - times[0] < timedelta(minutes=self.t.confirm_window_max_minutes):
            confirmation = "pending"
        else:
            confirmation = self.rng.choice(("no_repeat", "no_repeat", "not_confirmed"))
            kind = "no_repeat" if confirmation == "no_repeat" else "not_confirmed"
            at = times[0] + timedelta(minutes=self.t.confirm_window_max_minutes)
            episode.events.append((at, kind, None, "no repeat reading" if kind == "no_repeat" else "repeat"))
        row |= {"confirmation": confirmation, "confirmation_since": times[0]}

    def _value(self, rule: RuleId) -> tuple[str, float]:
        """A value text and worst key (alerts/rules.py) of a reading that breaches `rule`."""
        rng, t = self.rng, self.t
        if rule in (RuleId.SEVERE_BP, RuleId.HIGH_BP, RuleId.LOW_BP):
            if rule is RuleId.SEVERE_BP:
                systolic, diastolic = rng.randint(t.severe_sbp, t.severe_sbp + 40), rng.randint(95, 125)
            elif rule is RuleId.HIGH_BP:
                systolic = rng.randint(t.high_sbp, t.severe_sbp - 1)
                diastolic = rng.randint(85, t.severe_dbp - 1)
            else:
                systolic, diastolic = rng.randint(t.low_sbp - 20, t.low_sbp - 1), rng.randint(45, 65)
            text = f"{systolic}/{diastolic} mmHg"
            if rule is RuleId.LOW_BP:
                return text, -100 * min(systolic / t.low_sbp, diastolic / t.low_dbp)
            return text, 100 * max(systolic / t.severe_sbp, diastolic / t.severe_dbp)
        if rule is RuleId.UNCONTROLLED_BP:
            systolic = rng.randint(t.uncontrolled_sbp, t.high_sbp - 5)
            diastolic = rng.randint(78, t.high_dbp - 5)
            count = rng.randint(t.uncontrolled_min_readings, 28)
            key = 100 * max(systolic / t.uncontrolled_sbp, diastolic / t.uncontrolled_dbp)
            return f"mean {systolic}/{diastolic} mmHg over {count} readings", key
        if rule in (RuleId.PULSE_EXTREME, RuleId.PULSE_ABNORMAL):
            if rule is RuleId.PULSE_EXTREME:
                pulse = rng.choice(
                    (rng.randint(30, t.pulse_urgent_low - 1), rng.randint(t.pulse_urgent_high + 1, 150))
                )
            else:
                pulse = rng.choice(
                    (
                        rng.randint(t.pulse_urgent_low, t.pulse_routine_low - 1),
                        rng.randint(t.pulse_routine_high + 1, t.pulse_urgent_high),
                    )
                )
            key = 100 * max(
                (t.pulse_routine_low - pulse) / t.pulse_routine_low,
                (pulse - t.pulse_routine_high) / t.pulse_routine_high,
            )
            return f"{rng.randint(112, 138)}/{rng.randint(68, 86)} mmHg, pulse {pulse}", key
        if rule is RuleId.REPEATED_HYPO:
            count = rng.randint(t.repeated_hypo_count, t.repeated_hypo_count + 3)
            return f"{count} readings < {t.hypo_l1_mmol:g} mmol/L in {t.repeated_hypo_days} days", float(
                count
            )
        return self._glucose(rule)

    def _glucose(self, rule: RuleId) -> tuple[str, float]:
        rng, t = self.rng, self.t
        if rule is RuleId.HYPO_L2:
            if rng.random() < 0.05:
                return "LO", 0.0
            value = rng.randint(20, round(t.hypo_l2_mmol * 10) - 1) / 10
            return f"{value:.1f} mmol/L", -value
        if rule is RuleId.HYPO_L1:
            value = rng.randint(round(t.hypo_l2_mmol * 10), round(t.hypo_l1_mmol * 10) - 1) / 10
            return f"{value:.1f} mmol/L", -value
        if rule is RuleId.HYPER_SEVERE:
            if rng.random() < 0.1:
                return "HI", 1000.0
            value = rng.randint(round(t.hyper_severe_mmol * 10), 360) / 10
            return f"{value:.1f} mmol/L", value
        if rule is RuleId.HYPER_MARKED:
            value = rng.randint(round(t.hyper_marked_mmol * 10) + 1, round(t.hyper_severe_mmol * 10) - 1) / 10
            return f"{value:.1f} mmol/L", value
        raise ValueError(f"no reading value for rule {rule.value!r}")

    def _msg_id(self) -> str:
        self.msg_ids += 1
        return f"bench-web-{self.msg_ids:08d}"

    def _acknowledge(self, episode: _Episode, at: datetime) -> None:
        row = episode.row
        reason = self.rng.choice(REASON_CODES)
        note = "Called the patient; advice given."
        row |= {"acknowledged_at": at, "acknowledged_by": USERNAME}
        episode.ack = (at, reason, note)
        episode.events.append((at, "acknowledged", None, f"{USERNAME}: {reason}: {note}"))
        if row["cleared_at"] is not None:
            self._close(episode, at)

    def _clear(self, episode: _Episode, at: datetime) -> None:
        row = episode.row
        row["cleared_at"] = at
        why = "nothing missing any more" if row["subject"] is not None else f"{row['rule']} back in range"
        episode.events.append((at, "cleared", None, why))
        if row["acknowledged_at"] is not None:
            self._close(episode, at)

    def _close(self, episode: _Episode, at: datetime) -> None:
        episode.row["closed_at"] = at
        episode.events.append((at, "closed", None, "cleared and acknowledged"))

    def _escalate(self, episode: _Episode) -> None:
        """Critical alerts escalate until acknowledged (level 1 after 15 min, 2 after 30 by default)."""
        row = episode.row
        if row["severity"] != Severity.CRITICAL.value or row["late"]:
            return
        opened: datetime = row["opened_at"]
        first = opened + timedelta(minutes=self.settings.escalate_responsible_after_minutes)
        second = opened + timedelta(minutes=self.settings.escalate_oncall_after_minutes)
        stopped: datetime = row["acknowledged_at"] or self.now
        level = 0 if stopped < first else 1 if stopped < second else 2
        for step, at in ((1, first), (2, second))[:level]:
            detail = f"level {step}: {USERNAME}" if step == 1 else f"level {step}: no on-call doctor"
            episode.events.append((at, "escalated", None, detail))
        row["escalation_level"] = level
        if row["acknowledged_at"] is None and row["closed_at"] is None and level < 2:
            row["next_escalation_at"] = (first, second)[level]


def _seed_year(env: BenchEnv, database: str, patient_index: int) -> int:
    now = datetime.now(UTC)
    device = device_id(patient_index)
    readings: list[StoredReading] = []
    for n in range(365 * 4):
        outcome = parse(
            f"rpm/devices/{device}/readings", bp_payload(device, now - timedelta(hours=6 * n + 1)), now=now
        )
        if not isinstance(outcome, Rejection):
            readings.append(StoredReading(patient_id(patient_index), outcome))
    with InfluxV1Store(InfluxSettings(url=env.influx.url, database=database)) as store:
        store.ensure_ready()
        store.write(readings)
    return len(readings)


def _login(base: str) -> requests.Session:
    client = requests.Session()
    form = client.get(f"{base}/login", timeout=10).text
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    if found is None:
        raise BenchError("no CSRF token on the login page")
    answer = client.post(
        f"{base}/login",
        data={"username": USERNAME, "password": PASSWORD, "csrf_token": found.group(1)},
        timeout=30,
    )
    if "/login" in answer.url:
        raise BenchError("the bench doctor could not log in")
    return client

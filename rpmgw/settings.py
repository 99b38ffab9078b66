"""One `Settings` object for every rpmgw process, read from the environment and validated at start-up.

Every variable starts with ``RPMGW_``; nested sections use ``__``, e.g. ``RPMGW_MQTT__HOST``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rpmgw.errors import SettingsError
from rpmgw.validation import check_zone


class MqttSettings(BaseModel):
    """Connection to the MQTT broker the devices publish to."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    # Stable by default: the broker keeps the gateway's persistent session (and its queued readings)
    # under this id across restarts.
    client_id: str = Field(default="rpmgw-gateway", min_length=1, max_length=128)
    keepalive: int = Field(default=30, ge=5, le=3600)
    # How many unacknowledged readings the broker may send before waiting for our acks
    # (MQTT v5 Receive Maximum). It bounds the gateway's in-memory queue.
    receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    # How long the broker keeps the gateway's session (subscription and queued readings) while it is
    # away. A broker that hands a dead member's share to the others (EMQX) makes a short value useful.
    session_expiry_seconds: int = Field(default=30 * 24 * 3600, ge=0, le=0xFFFFFFFF)
    # Topic filter; a `$share/<group>/...` filter lets several gateways split the load.
    topic: str = "rpm/devices/+/readings"
    reconnect_min_delay: float = Field(default=0.5, gt=0)
    reconnect_max_delay: float = Field(default=30.0, gt=0)
    # TLS to the broker (any hop outside localhost): the CA that signed the broker's certificate, and
    # optionally a client certificate and key (PEM files).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _credentials_together(self) -> MqttSettings:
        if self.password is not None and self.username is None:
            raise ValueError("RPMGW_MQTT__PASSWORD is set but RPMGW_MQTT__USERNAME is not")
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ValueError("RPMGW_MQTT__RECONNECT_MAX_DELAY must be >= RPMGW_MQTT__RECONNECT_MIN_DELAY")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("RPMGW_MQTT__TLS_CERT and RPMGW_MQTT__TLS_KEY go together")
        if (self.tls_cert is not None) and self.tls_ca is None:
            raise ValueError("a client certificate needs RPMGW_MQTT__TLS_CA too")
        for name, path in (("TLS_CA", self.tls_ca), ("TLS_CERT", self.tls_cert), ("TLS_KEY", self.tls_key)):
            if path is not None and not path.is_file():
                raise ValueError(f"RPMGW_MQTT__{name}: no such file {path}")
        return self


class InfluxSettings(BaseModel):
    """Where readings are stored: InfluxDB 1.x (v1 HTTP API) or 2.x (influxdb-client)."""

    url: str = "http://127.0.0.1:8086"
    # auto: ask the server (X-Influxdb-Version header of /ping).
    version: Literal["auto", "1", "2"] = "auto"
    database: str = Field(default="rpm", min_length=1)  # 1.x
    retention_policy: str = "autogen"  # 1.x
    username: str | None = None  # 1.x
    password: str | None = None  # 1.x
    bucket: str = Field(default="rpm", min_length=1)  # 2.x
    org: str = "rpm"  # 2.x
    token: str | None = None  # 2.x
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"RPMGW_INFLUX__URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class DatabaseSettings(BaseModel):
    """The relational database (patients, devices, enrolments, quarantine, alerts...)."""

    # SQLAlchemy URL; empty means a SQLite file under RPMGW_DATA_DIR.
    url: str = ""


class GatewaySettings(BaseModel):
    """How the gateway batches and validates readings."""

    @model_validator(mode="after")
    def _pulse_pressure_order(self) -> GatewaySettings:
        if self.pulse_pressure_min > self.pulse_pressure_max:
            raise ValueError(
                "RPMGW_GATEWAY__PULSE_PRESSURE_MIN must not exceed RPMGW_GATEWAY__PULSE_PRESSURE_MAX"
            )
        return self

    batch_size: int = Field(default=5_000, ge=1, le=65_535)
    batch_max_wait: float = Field(default=0.2, gt=0, le=60)
    # Clock skew tolerated for readings "from the future" (heuristic, DOMAIN.md).
    max_future_skew_seconds: int = Field(default=300, ge=0)
    # Physiologically possible but suspicious pulse pressure (SBP - DBP), mmHg (heuristic).
    pulse_pressure_min: int = Field(default=10, ge=0)
    pulse_pressure_max: int = Field(default=150, ge=1)
    registry_cache_size: int = Field(default=100_000, ge=0)
    registry_cache_ttl: float = Field(default=30.0, ge=0)
    storage_retry_max_delay: float = Field(default=30.0, gt=0)
    # A member of a shared subscription ($share/..., $queue/...) decides the newest reading it stored of
    # each patient again this many seconds later, with the history reloaded: it then sees what the
    # other gateways stored meanwhile (gateway.ingest.IngestPipeline.recheck). 0: never.
    peer_recheck_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Per-device token bucket (readings per second, burst); over it: quarantined as "rate_limited".
    # The burst covers a monitor emptying its offline buffer after days without a connection.
    # Defaults let a load test or a clinic-wide backfill through one device id; tighten per deployment.
    rate_limit_per_second: float = Field(default=20.0, ge=0)  # 0: no rate limit
    rate_limit_burst: int = Field(default=25_000, ge=1)
    rate_limit_devices: int = Field(default=200_000, ge=1)  # LRU of devices tracked (bounded memory)
    # /healthz, /readyz and /metrics of the gateway process on 0.0.0.0:port (0: none).
    health_port: int = Field(default=0, ge=0, le=65535)
    health_host: str = "0.0.0.0"


class AlertsSettings(BaseModel):
    """Rule engine and alert lifecycle (clinical numbers live in alerts.thresholds.Thresholds)."""

    # JSON file of clinic-wide threshold overrides (keys of alerts.thresholds.Thresholds).
    thresholds_file: Path | None = None
    # A reading evaluated this long after it was measured is "late": no act-now texts, no paging.
    late_after_minutes: int = Field(default=60, ge=1)
    # How far back the rules look (the 7-day mean needs 7 days).
    history_days: int = Field(default=8, ge=1, le=90)
    # Patients whose recent readings are kept in memory by the gateway (bounded LRU).
    history_cache_patients: int = Field(default=20_000, ge=0)
    # Escalation of unacknowledged critical alerts (heuristic, DOMAIN.md).
    escalate_responsible_after_minutes: int = Field(default=15, ge=1)
    escalate_oncall_after_minutes: int = Field(default=30, ge=1)
    # The worker's time rules (no data, missed escalations) run every this many seconds: each run looks
    # at every patient, so this is not the delivery's pace.
    worker_interval_seconds: float = Field(default=5.0, gt=0)
    # The worker looks for texts to send every this many seconds (one indexed query when there are none):
    # what a critical text waits at most after the gateway queued it.
    delivery_interval_seconds: float = Field(default=0.5, gt=0)
    # /healthz, /readyz and /metrics of the worker process on 0.0.0.0:port (0: none).
    worker_health_port: int = Field(default=0, ge=0, le=65535)

    @model_validator(mode="after")
    def _escalation_order(self) -> AlertsSettings:
        if self.escalate_oncall_after_minutes <= self.escalate_responsible_after_minutes:
            raise ValueError(
                "RPMGW_ALERTS__ESCALATE_ONCALL_AFTER_MINUTES must be greater than "
                "RPMGW_ALERTS__ESCALATE_RESPONSIBLE_AFTER_MINUTES"
            )
        return self


class SmsSettings(BaseModel):
    """Texts to patients and staff."""

    backend: Literal["twilio", "outbox"] = "outbox"
    quiet_hours_start: int = Field(default=22, ge=0, le=23)  # local hour, patient's time zone
    quiet_hours_end: int = Field(default=8, ge=0, le=23)
    max_per_hour: int = Field(default=3, ge=1)  # per patient (heuristic)
    max_per_day: int = Field(default=10, ge=1)  # per patient; critical texts are exempt
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)
    # A text claimed longer ago than this was left by a worker that died mid-send: it is looked up at
    # the provider (reconciled) before any resend. Must exceed the provider's request timeout.
    in_flight_timeout_seconds: float = Field(default=120.0, gt=0)


class TwilioSettings(BaseModel):
    """Twilio account (used when RPMGW_SMS__BACKEND=twilio)."""

    account_sid: str | None = None
    auth_token: str | None = None
    from_: str | None = Field(default=None, alias="from")
    messaging_service_sid: str | None = None
    # Empty: Twilio's own API. Set for a regional edge or a local test server (client.api.base_url).
    base_url: str = ""
    timeout: float = Field(default=10.0, gt=0)

    model_config = ConfigDict(populate_by_name=True)


class WebSettings(BaseModel):
    """The doctors' web application (served by waitress; put a TLS-terminating proxy in front)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Signs session cookies and CSRF tokens. Unset: a random key kept in RPMGW_DATA_DIR/web-secret-key
    # (fine for one machine; set it when several web processes serve the same clinic).
    secret_key: SecretStr | None = None
    # Automatic logoff after this many minutes without a click (HIPAA 164.312(a)(2)(iii)).
    session_timeout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Send the session cookie over HTTPS only: set it behind the TLS-terminating proxy.
    cookie_secure: bool = False
    # How many proxies in front of us set X-Forwarded-For/-Proto (0: trust no such header).
    trusted_proxies: int = Field(default=0, ge=0, le=5)
    # Login throttling: this many failed logins of one username (or 4x that from one address)
    # within the window lock further attempts until the window has passed.
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_window_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # How often the alert inbox asks for news (seconds).
    poll_seconds: int = Field(default=15, ge=2, le=600)

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "RPMGW_WEB__SECRET_KEY must have at least 32 characters (e.g. `openssl rand -hex 32`)"
            )
        return value


class Settings(BaseSettings):
    """All settings of all rpmgw processes."""

    model_config = SettingsConfigDict(
        env_prefix="RPMGW_",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    data_dir: Path = Path("./data")
    timezone: str = "Asia/Yekaterinburg"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one JSON object per line (for log shippers); text: for people.
    log_format: Literal["text", "json"] = "text"
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    database: DatabaseSettings = DatabaseSettings()
    gateway: GatewaySettings = GatewaySettings()
    web: WebSettings = WebSettings()
    alerts: AlertsSettings = AlertsSettings()
    sms: SmsSettings = SmsSettings()
    twilio: TwilioSettings = TwilioSettings()
    # Where Twilio reaches our webhooks (status callbacks, inbound replies), e.g. https://rpm.example.ru
    public_url: str = ""

    @model_validator(mode="after")
    def _in_flight_outlasts_requests(self) -> Settings:
        if self.sms.in_flight_timeout_seconds <= self.twilio.timeout:
            raise ValueError(
                "RPMGW_SMS__IN_FLIGHT_TIMEOUT_SECONDS must be greater than RPMGW_TWILIO__TIMEOUT"
            )
        return self

    @model_validator(mode="after")
    def _twilio_complete(self) -> Settings:
        if self.sms.backend == "twilio":
            missing = [
                name
                for name, value in (
                    ("RPMGW_TWILIO__ACCOUNT_SID", self.twilio.account_sid),
                    ("RPMGW_TWILIO__AUTH_TOKEN", self.twilio.auth_token),
                )
                if not value
            ]
            if not (self.twilio.from_ or self.twilio.messaging_service_sid):
                missing.append("RPMGW_TWILIO__FROM or RPMGW_TWILIO__MESSAGING_SERVICE_SID")
            if missing:
                raise ValueError(f"RPMGW_SMS__BACKEND=twilio needs {', '.join(missing)}")
        return self

    _known_zone = field_validator("timezone")(check_zone)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, defaulting to a SQLite file under the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'rpmgw.sqlite3').resolve()}"


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "RPMGW_" + "__".join(str(part).upper() for part in loc)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; a bad value raises `SettingsError` naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_env_name(err['loc'])}: {message}" if err["loc"] else message)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from exc

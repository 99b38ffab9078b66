"""Where readings are stored: InfluxDB 1.x or 2.x behind one `ReadingStore` interface.

`open_store(settings.influx)` picks the back end; both write the same line protocol (`lineprotocol`).
"""

from __future__ import annotations

import re
from typing import Literal

import requests

from gateway.errors import StorageError, StorageUnavailable
from gateway.timeseries.base import ReadingStore, ReadingType, StoredReading, StoreSummary
from gateway.timeseries.influx_v1 import InfluxV1Store
from rpmgw.settings import InfluxSettings

ApiVersion = Literal["1", "2"]
_VERSION_RE = re.compile(r"^\s*(?:oss\s*)?v?(\d+)\.", re.IGNORECASE)


class UnknownInfluxVersion(StorageError):
    """The server's /ping did not say it is InfluxDB 1.x or 2.x; set RPMGW_INFLUX__VERSION explicitly."""


def parse_version_header(value: str | None) -> ApiVersion | None:
    """The API generation in an X-Influxdb-Version header: "1.6.7~rc0" -> "1", "v2.7.4"/"OSS v2.1" -> "2"."""
    match = _VERSION_RE.match(value or "")
    if match is None:
        return None
    major = match.group(1)
    if major == "1":
        return "1"
    if major == "2":
        return "2"
    return None


def detect_version(url: str, timeout: float, session: requests.Session | None = None) -> ApiVersion:
    """Ask the server (GET /ping, header X-Influxdb-Version) which API it speaks."""
    getter = session if session is not None else requests
    try:
        response = getter.get(f"{url}/ping", timeout=timeout)
    except requests.RequestException as exc:
        raise StorageUnavailable(f"InfluxDB at {url} did not answer /ping: {exc}") from exc
    if response.status_code >= 500:
        raise StorageUnavailable(f"InfluxDB at {url} answered {response.status_code} to /ping")
    header = response.headers.get("X-Influxdb-Version")
    version = parse_version_header(header)
    if version is None:
        raise UnknownInfluxVersion(
            f"{url}/ping answered {response.status_code} with X-Influxdb-Version {header!r}: not InfluxDB "
            "1.x or 2.x; set RPMGW_INFLUX__VERSION to 1 or 2 if it is"
        )
    return version


def open_store(settings: InfluxSettings) -> ReadingStore:
    """The store for `settings.version` ("auto": ask the server). Call `ensure_ready()` on it before use."""
    version: ApiVersion = (
        detect_version(settings.url, settings.timeout) if settings.version == "auto" else settings.version
    )
    if version == "1":
        return InfluxV1Store(settings)
    # Imported here: influxdb-client is slow to import and only the 2.x back end needs it.
    from gateway.timeseries.influx_v2 import InfluxV2Store

    return InfluxV2Store(settings)


__all__ = [
    "ApiVersion",
    "InfluxV1Store",
    "ReadingStore",
    "ReadingType",
    "StoreSummary",
    "StoredReading",
    "UnknownInfluxVersion",
    "detect_version",
    "open_store",
    "parse_version_header",
]

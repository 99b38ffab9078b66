"""Errors of the ingest path: MQTT, storage and enrolment lookup."""

from rpmgw.errors import RpmgwError


class GatewayError(RpmgwError):
    """Base of the gateway's errors."""


class BrokerError(GatewayError):
    """The MQTT broker refused us or could not be reached (paho return codes become this)."""


class StorageError(GatewayError):
    """Writing to or reading from the time-series store failed."""


class StorageUnavailable(StorageError):
    """The store could not be reached or answered 5xx: retry later, acknowledge nothing meanwhile."""


class StorageRejected(StorageError):
    """The store refused the request itself (4xx): retrying the same data will not help."""

"""Errors shared by every rpmgw process."""


class RpmgwError(Exception):
    """Base of every error this project raises on purpose."""


class SettingsError(RpmgwError):
    """A setting is missing or invalid; the message names the environment variable."""


class ServerStartError(RpmgwError):
    """A helper server (Mosquitto, InfluxDB) could not be started; the message says why and where its log is."""


class BrokerAccountError(RpmgwError):
    """A Mosquitto account could not be written to the password file; the message names the file."""

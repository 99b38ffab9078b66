"""Errors of the device simulator (`rpmgw sim`)."""

from rpmgw.errors import RpmgwError


class SimError(RpmgwError):
    """Base of the simulator's errors."""


class SimConfigError(SimError):
    """A simulator option is invalid; the message names the option and the accepted values."""


class FaultSpecError(SimConfigError):
    """A `--faults` specification could not be parsed (e.g. an unknown fault or a probability > 1)."""


class MixSpecError(SimConfigError):
    """A `--mix` specification could not be parsed (e.g. an unknown condition or a negative weight)."""


class BrokerUnreachable(SimError):
    """No simulated device could connect to the MQTT broker before the start-up deadline."""


class EnrolmentError(SimError):
    """Creating the simulated patients or enrolling their devices in the database failed."""

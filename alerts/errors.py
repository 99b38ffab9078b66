"""Errors of the alert lifecycle, staff administration and threshold store; messages are for a person."""

from __future__ import annotations

from rpmgw.errors import RpmgwError


class AlertsError(RpmgwError):
    """Base of the alert package's errors."""


class InvalidInput(AlertsError):
    """A value is malformed: username, phone, role, language, reason code, empty note or reason, time."""


class UnknownStaff(AlertsError):
    """No staff member has this username (or the member is no longer active)."""


class DuplicateStaff(AlertsError):
    """A staff member with this username already exists."""


class UnknownCareTeam(AlertsError):
    """No care team has this name."""


class DuplicateCareTeam(AlertsError):
    """A care team with this name already exists."""


class UnknownPatient(AlertsError):
    """No patient has this id."""


class UnknownAlert(AlertsError):
    """No alert has this id."""


class AlreadyAcknowledged(AlertsError):
    """The alert was acknowledged already (by someone, at some time: the message says)."""


class ConcurrentChange(AlertsError):
    """Someone else changed the same thing at the same moment: try again."""

"""Errors of the web application; messages are meant for the person who sees them (or the operator)."""

from __future__ import annotations

from rpmgw.errors import RpmgwError


class WebError(RpmgwError):
    """Base of the web application's errors."""


class InvalidCredentials(WebError):
    """Unknown username, wrong password, no password set, or a deactivated account (never said which)."""


class LoginThrottled(WebError):
    """Too many failed logins for this username or from this address: wait for the window to pass."""


class WeakPassword(WebError):
    """The new password is too short or otherwise refused."""


class AccessDenied(WebError):
    """The staff member's role or care teams do not give access to this page or object."""


class UnknownUser(WebError):
    """No staff member has this username (for `rpmgw user passwd`)."""

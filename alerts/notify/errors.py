"""Errors of the notifications package."""

from __future__ import annotations

from rpmgw.errors import RpmgwError


class NotifyError(RpmgwError):
    """Base of the notifications package's errors."""


class TemplateError(NotifyError):
    """A text template is unknown, or a parameter it needs was not given; the message names both."""


class NotifierError(NotifyError):
    """A provider did not accept a text.

    `retryable`: trying again later may succeed (rate limited, provider or network trouble); a permanent
    error (invalid number, recipient unsubscribed) never will. `code` is the provider's error code
    (Twilio's "21211") or a short word for network trouble ("timeout", "connection").
    `uncertain`: the request may have reached the provider and created the message although no answer
    came back (read timeout, 5xx): the next attempt must look the message up before sending again.
    """

    def __init__(
        self, message: str, retryable: bool, code: str | None = None, *, uncertain: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code
        self.uncertain = uncertain

    def __repr__(self) -> str:
        return (
            f"NotifierError({self.message!r}, retryable={self.retryable!r}, code={self.code!r}, "
            f"uncertain={self.uncertain!r})"
        )

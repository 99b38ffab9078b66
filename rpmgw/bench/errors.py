"""Errors of the benchmark."""

from __future__ import annotations

from rpmgw.errors import RpmgwError


class BenchError(RpmgwError):
    """A bench step failed or timed out (the message says which)."""

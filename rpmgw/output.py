"""How the CLI prints: JSON documents, aligned tables, times in UTC or the clinic's zone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click


def echo_json(value: object) -> None:
    """Print `value` as indented JSON, non-ASCII (Cyrillic names) kept readable."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows under headers in aligned columns."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def local_time(value: datetime, zone: ZoneInfo) -> str:
    """A time in `zone`, to the second, with its offset."""
    return value.astimezone(zone).isoformat(timespec="seconds")


def iso_utc(value: datetime | None) -> str | None:
    """A time in UTC for JSON output (None stays None)."""
    return None if value is None else value.astimezone(UTC).isoformat()

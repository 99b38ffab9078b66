"""Pages of a long list (the inbox, the population overview): the page asked for and its arithmetic."""

from __future__ import annotations

from collections.abc import Sized


def page_number(value: str | None) -> int:
    """A page number from the query string: 1 unless a positive integer is given."""
    if value is None or not value.isdigit():
        return 1
    return max(1, min(int(value), 1_000_000))


def last_page(total: int, per_page: int) -> int:
    """How many pages `total` rows fill (at least one)."""
    return max(1, -(-total // per_page))


class Paged:
    """Page arithmetic for a dataclass with `rows` (one page), `total` (all rows), `page` and `per_page`."""

    __slots__ = ()

    rows: Sized
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        """How many pages the rows fill (at least one)."""
        return last_page(self.total, self.per_page)

    @property
    def first(self) -> int:
        """The position (1-based) of the page's first row among all rows."""
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The position (1-based) of the page's last row."""
        return self.first + len(self.rows) - 1

    @property
    def next_page(self) -> int | None:
        """The following page, if there is one."""
        return self.page + 1 if self.page < self.pages else None

    @property
    def previous_page(self) -> int | None:
        """The page before, if there is one."""
        return self.page - 1 if self.page > 1 else None

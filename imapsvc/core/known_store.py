"""What the store holds for each folder, as far as this folder knows it.

The cursor and the last HIGHESTMODSEQ of a folder are read at a sync pass and
written by it. A server restart drops every session at once, and reading
both for each folder again then puts thousands of queries on the database. A
folder's own writes are fenced by its replica's lease, so after a lost
session it can trust what it last read or wrote. After an operator's
reconnect it cannot, because the operator may have changed the store.
"""

from __future__ import annotations

from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class KnownStore(Generic[T]):
    """Per folder name: the value the store holds (read or written by this
    folder), and whether the next pass may use it without a read."""

    def __init__(self) -> None:
        self._values: dict[str, T] = {}
        self._trusted: set[str] = set()

    def remember(self, name: str, value: T) -> None:
        """The store holds ``value`` (just read, or written and committed)."""
        self._values[name] = value

    def forget(self, name: str) -> Optional[T]:
        """Unsure of the store from now on (a write in flight, a failure);
        returns what was known."""
        return self._values.pop(name, None)

    def value(self, name: str) -> Optional[T]:
        return self._values.get(name)

    def session_lost(self) -> None:
        """Every value known now may be used once without a read."""
        self._trusted = set(self._values)

    def reload(self) -> None:
        """The next passes read the store (an operator's reconnect)."""
        self._trusted = set()

    def take_trusted(self, name: str) -> bool:
        """Whether this pass may use the known value of ``name`` instead
        of a read; a trust is used once."""
        trusted = name in self._trusted
        self._trusted.discard(name)
        return trusted and name in self._values

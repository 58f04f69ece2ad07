"""Count what an IMAP client reads and writes, for tests that must prove
which bytes crossed the connection (e.g. "no attachment byte was
downloaded").

:class:`CountingIMAPClient` is a
:class:`~imapsvc.imap.protocol.FolderIMAPClient` that adds every byte it
receives from its transport to a shared :class:`ByteCounter` and records
every write. It counts at the IMAP level, i.e. the cleartext above TLS: that
is exactly what the protocol parses and buffers, and it is independent of
TLS record overhead.

Use :func:`counting_protocol_factory` as a ``FolderService``
``protocol_factory``; one counter accumulates over reconnections.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from zope.interface import directlyProvides, providedBy

from imapsvc.imap.protocol import FolderIMAPClient

_SECTION = re.compile(rb"BODY\.PEEK\[([0-9A-Z.]*)\](<[0-9.]+>)?")


class ByteCounter:
    """Totals shared by every connection built with it.

    :ivar read: bytes received from the server (cleartext).
    :ivar written: bytes sent to the server (cleartext).
    :ivar writes: every chunk written, in order (commands, ``DONE``, ...).
    :ivar connections: how many connections were made.
    """

    def __init__(self) -> None:
        self.read = 0
        self.written = 0
        self.writes: list[bytes] = []
        self.connections = 0

    def commands(self) -> list[bytes]:
        """The written chunks as one byte string per line (tags included)."""
        return [line for chunk in self.writes for line in chunk.split(b"\r\n") if line]

    def fetch_items(self) -> list[tuple[bytes, bytes]]:
        """``(uid_set, items)`` of every ``UID FETCH`` command sent."""
        out = []
        for line in self.commands():
            match = re.match(rb"^\S+ UID FETCH (\S+) (.*)$", line)
            if match:
                out.append((match.group(1), match.group(2)))
        return out

    def body_sections_requested(self) -> set[bytes]:
        """Every ``BODY.PEEK[...]`` section named by a ``UID FETCH``
        (``b""`` for the whole message, ``b"HEADER"``, ``b"1.2"``, ...)."""
        found: set[bytes] = set()
        for _uids, items in self.fetch_items():
            for match in _SECTION.finditer(items):
                found.add(match.group(1))
        return found


class _CountingTransport:
    """Forwards everything to the real transport, counting writes. It
    provides the same interfaces, so ``ISSLTransport.providedBy`` and
    ``ITLSTransport(...)`` still see a TLS transport."""

    def __init__(self, transport: Any, counter: ByteCounter) -> None:
        self._transport = transport
        self._counter = counter
        directlyProvides(self, *providedBy(transport))

    def write(self, data: bytes) -> None:
        self._counter.written += len(data)
        self._counter.writes.append(bytes(data))
        self._transport.write(data)

    def writeSequence(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CountingIMAPClient(FolderIMAPClient):
    """A :class:`FolderIMAPClient` that reports its traffic to ``counter``."""

    def __init__(self, counter: ByteCounter, *args: Any, **kwargs: Any) -> None:
        FolderIMAPClient.__init__(self, *args, **kwargs)
        self.counter = counter
        self._depth = 0

    def makeConnection(self, transport: Any) -> None:
        self.counter.connections += 1
        FolderIMAPClient.makeConnection(self, _CountingTransport(transport, self.counter))

    def dataReceived(self, data: bytes) -> None:
        # LineReceiver feeds the bytes after a literal back through
        # dataReceived (setLineMode(rest)): count only what the transport
        # delivered, i.e. the outermost call.
        if self._depth == 0:
            self.counter.read += len(data)
        self._depth += 1
        try:
            FolderIMAPClient.dataReceived(self, data)
        finally:
            self._depth -= 1


def counting_protocol_factory(
    counter: ByteCounter,
    clock: Any,
    command_timeout: float = 60.0,
    inactivity_timeout: Optional[float] = 300.0,
) -> Callable[[], CountingIMAPClient]:
    """A ``FolderService`` ``protocol_factory`` whose clients count into
    ``counter``."""

    def build() -> CountingIMAPClient:
        return CountingIMAPClient(
            counter, clock, command_timeout, inactivity_timeout=inactivity_timeout
        )

    return build


def expand_uid_set(text: bytes) -> list[int]:
    """``b"1:3,7"`` -> ``[1, 2, 3, 7]`` (no ``*``: the engine never sends one
    in a FETCH)."""
    out: list[int] = []
    for part in text.split(b","):
        lo, _, hi = part.partition(b":")
        first, last = int(lo), int(hi or lo)
        out.extend(range(min(first, last), max(first, last) + 1))
    return out


def sections_by_uid(counter: ByteCounter) -> dict[int, set[bytes]]:
    """For every UID named by a ``UID FETCH``, the ``BODY.PEEK`` sections
    asked for it, over every command sent (see
    :meth:`ByteCounter.body_sections_requested` for the section spelling)."""
    out: dict[int, set[bytes]] = {}
    for uids, items in counter.fetch_items():
        sections = {m.group(1) for m in _SECTION.finditer(items)}
        for uid in expand_uid_set(uids):
            out.setdefault(uid, set()).update(sections)
    return out

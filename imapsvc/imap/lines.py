"""Lines and literals out of the server's bytes, in time linear in their size.

Twisted's ``LineReceiver`` appends every read to one buffer and splits the
whole buffer again, so a line that arrives over many reads (a 4 MiB
``* SEARCH``, a line just under the line cap) costs time quadratic in its
length: a hostile server turned that into most of a second of reactor time,
during which no tenant's mail moved. It also copies the rest of a read once
per line handed on. Here a line still incomplete is kept as the list of its
pieces, only the new read is searched for CRLF, and a read is walked with an
offset instead of being copied for every line or literal.

The mixin keeps ``LineReceiver``'s contract for what stays: ``line_mode``
(``setRawMode``/``setLineMode``), ``MAX_LENGTH`` and ``lineLengthExceeded``,
and ``_buffer`` (what was received and not yet handed on; taking it, as the
COMPRESS and STARTTLS paths do, ends the read).
"""

from __future__ import annotations

from typing import Any

CRLF = b"\r\n"


class LinearLineReader:
    """Mixed in before Twisted's ``IMAP4Client``; the class using it calls
    :meth:`_receive` with each read and implements :meth:`lineReceived`,
    :meth:`_literal_bytes` and :meth:`lineLengthExceeded`."""

    MAX_LENGTH: int
    line_mode: int
    transport: Any
    _closed: bool

    # The read being walked and where in it; between reads both are empty.
    _data = b""
    _pos = 0
    # An unfinished line's pieces (``None``: none) and their total length.
    _pieces: list[bytes] | None = None
    _pieces_len = 0
    _walking = False

    # LineReceiver's hooks, implemented by the reader.
    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted's name)
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        raise NotImplementedError

    def _literal_bytes(self, data: bytes, pos: int) -> int:
        """Take literal bytes from ``data[pos:]``; return how many were taken
        (at least one). Switches back to line mode when the literal is whole."""
        raise NotImplementedError

    def setLineMode(self, extra: bytes = b"") -> None:  # noqa: N802
        # Bytes after a literal are walked by :meth:`_receive` itself;
        # ``extra`` is only Twisted's way in.
        self.line_mode = 1
        if extra:
            self._receive(extra)

    @property
    def _buffer(self) -> bytes:
        rest = self._data[self._pos :]
        if self._pieces:
            return b"".join(self._pieces) + rest
        return rest

    @_buffer.setter
    def _buffer(self, value: bytes) -> None:
        self._data, self._pos = value, 0
        self._pieces, self._pieces_len = None, 0

    def _stopped(self) -> bool:
        transport = self.transport
        return self._closed or bool(transport is not None and transport.disconnecting)

    def _receive(self, data: bytes) -> None:
        if self._walking:
            # Re-entered from a handler: walked by the loop already running.
            self._data = self._data[self._pos :] + data
            self._pos = 0
            return
        if not data:
            return
        self._walking = True
        self._data, self._pos = data, 0
        try:
            while self._pos < len(self._data) and not self._stopped():
                if not self.line_mode:
                    self._pos += self._literal_bytes(self._data, self._pos)
                elif not self._next_line():
                    break
        finally:
            self._walking = False
            self._data, self._pos = b"", 0

    def _next_line(self) -> bool:
        """Hand on the next whole line; False when the read ends inside one
        (its rest is kept) or the line is too long."""
        data, pos = self._data, self._pos
        pieces = self._pieces
        if pieces and pieces[-1].endswith(b"\r") and data[pos : pos + 1] == b"\n":
            # The CRLF was split between two reads.
            line = b"".join(pieces)[:-1]
            self._pos = pos + 1
        else:
            end = data.find(CRLF, pos)
            if end < 0:
                piece = data[pos:]
                if pieces is None:
                    pieces = self._pieces = []
                pieces.append(piece)
                self._pieces_len += len(piece)
                self._data, self._pos = b"", 0
                if self._pieces_len >= self.MAX_LENGTH + len(CRLF):
                    line = b"".join(pieces)
                    self._pieces, self._pieces_len = None, 0
                    self.lineLengthExceeded(line)
                return False
            line = data[pos:end]
            if pieces:
                pieces.append(line)
                line = b"".join(pieces)
            self._pos = end + len(CRLF)
        self._pieces, self._pieces_len = None, 0
        if len(line) > self.MAX_LENGTH:
            self._data, self._pos = b"", 0
            self.lineLengthExceeded(line)
            return False
        self.lineReceived(line)
        return True

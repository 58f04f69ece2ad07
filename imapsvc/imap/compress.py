"""COMPRESS=DEFLATE (RFC 4978): the deflate streams of one connection and
the choice of whether to ask for them.

Pure code (``zlib`` and addresses, no Twisted); the command and the wiring
into reading and writing are in :mod:`imapsvc.imap.auth_commands`,
:mod:`imapsvc.imap.reader` and :mod:`imapsvc.imap.connection`.

After the server's tagged OK to ``COMPRESS DEFLATE`` both directions are raw
deflate (RFC 1951, no zlib header: ``wbits`` negative). Every write is
flushed with ``Z_SYNC_FLUSH`` so the server can act on a command at once.

Memory: the server may use the full 32 KiB window, so the inflater needs
it; what the client sends is a few short commands, so the deflater uses a
512-byte window and the smallest memLevel. Both streams of a connection
take about 48 KiB (measured with tracemalloc), against about 300 KiB with
zlib's defaults: thousands of idling connections must not each carry a
quarter megabyte for nothing.
"""

from __future__ import annotations

import ipaddress
import zlib
from typing import Optional

from imapsvc.core.netguard import refused_reason

#: ``IMAP_COMPRESS`` values.
COMPRESS_AUTO = "auto"
COMPRESS_OFF = "off"
COMPRESS_ALWAYS = "always"
COMPRESS_MODES = (COMPRESS_AUTO, COMPRESS_OFF, COMPRESS_ALWAYS)

#: Most inflated bytes produced from the compressed input at a time. Each
#: piece is charged to the byte budget and parsed (with the reader's line,
#: literal and response caps) before the next is inflated, so a
#: decompression bomb (1 KiB inflating to 1 GiB) never sits in memory whole.
INFLATE_PIECE = 64 * 1024

#: The server's window may be the largest deflate allows.
_INFLATE_WBITS = -15
#: Our own window: commands are short, and a small window costs little.
_DEFLATE_WBITS = -9
_DEFLATE_MEMLEVEL = 1
_DEFLATE_LEVEL = 6


class CompressionError(ValueError):
    """The server's compressed stream is corrupt or ended."""


class DeflateStreams:
    """The two raw-deflate streams of one connection.

    :meth:`compress` turns bytes to send into deflate bytes (sync-flushed);
    :meth:`feed` takes received deflate bytes and :meth:`inflate` gives back
    at most ``limit`` inflated bytes at a time.
    """

    def __init__(self) -> None:
        self._deflater = zlib.compressobj(
            _DEFLATE_LEVEL, zlib.DEFLATED, _DEFLATE_WBITS, _DEFLATE_MEMLEVEL
        )
        self._inflater = zlib.decompressobj(_INFLATE_WBITS)
        #: Received compressed bytes not inflated yet.
        self._pending = b""
        #: Inflated bytes counted since the start (a metric).
        self.inflated = 0
        #: Compressed bytes received since the start (a metric).
        self.received = 0

    def compress(self, data: bytes) -> bytes:
        return self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self._pending = self._pending + data if self._pending else data

    @property
    def pending(self) -> bool:
        """Compressed bytes are waiting to be inflated."""
        return bool(self._pending)

    def inflate(self, limit: int = INFLATE_PIECE) -> bytes:
        """Up to ``limit`` inflated bytes of what was fed; ``b""`` when
        nothing is left to inflate.

        :raises CompressionError: corrupt data, or bytes after the end of
            the server's deflate stream (Dovecot ends it after LOGOUT's
            answer, before closing: nothing may follow).
        """
        while self._pending:
            if self._inflater.eof:
                self._pending = b""
                raise CompressionError("data after the end of the server's deflate stream")
            try:
                out = self._inflater.decompress(self._pending, limit)
            except zlib.error as exc:
                self._pending = b""
                raise CompressionError(f"corrupt deflate data from the server: {exc}") from None
            self._pending = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._pending = self._inflater.unused_data
            if out:
                self.inflated += len(out)
                return out
        return b""


def offers_deflate(caps: Optional[dict[bytes, Optional[list[bytes]]]]) -> bool:
    """Whether a capability dict (Twisted's shape) has ``COMPRESS=DEFLATE``."""
    values = (caps or {}).get(b"COMPRESS") or []
    return any(bytes(value).upper() == b"DEFLATE" for value in values)


def worth_compressing(mode: str, peer_host: Optional[str]) -> bool:
    """Whether ``mode`` asks for compression with a server at ``peer_host``
    (the connected IP address, or ``None`` when unknown).

    ``auto`` compresses only towards public addresses: on loopback or a
    private network the bytes cost nothing to carry and deflating them
    only costs CPU. An unknown peer counts as public (a proxy's socket,
    say); ``always`` and ``off`` ignore the address.
    """
    if mode == COMPRESS_ALWAYS:
        return True
    if mode != COMPRESS_AUTO:
        return False
    if not peer_host:
        return True
    try:
        address = ipaddress.ip_address(peer_host.split("%", 1)[0])
    except ValueError:
        return True
    return refused_reason(address) not in ("loopback", "private", "link-local")


def peer_host_of(transport: object) -> Optional[str]:
    """The IP address a transport is connected to (its ``getPeer().host``),
    or ``None`` when it has none: what :func:`worth_compressing` weighs."""
    get_peer = getattr(transport, "getPeer", None)
    host = getattr(get_peer(), "host", None) if get_peer is not None else None
    return host if isinstance(host, str) else None

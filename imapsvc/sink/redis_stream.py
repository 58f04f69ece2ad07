"""The production sink: one ``XADD`` per entry to a Redis stream (txredisapi).

txredisapi has no stream commands, so entries go out as RESP bytes built here:
``XADD stream [MAXLEN ~ n] * k1 v1 ...``, or, with a dedupe window (the
default), calls of a small Lua script (:data:`PUBLISH_ONCE`), one per group
of entries, that append each entry only when the stream has not taken its
``event_id`` within the window. The relay is at-least-once (a crash between
the XADD and the outbox's ``published_at`` publishes the row again, from this
replica or the one that takes its lease); the script makes that second
publish a no-op, so the workflow worker never sees the event twice. A batch
is written on one connection without waiting for replies in between (Redis
pipelining: the protocol writes each command as it is issued), so entries are
appended in order and a batch of 500 costs one round trip, not 500. (txredisapi
parses one bulk reply per reactor turn when several arrive in one read, so
replies of a big batch take a few hundred cheap reactor turns.)

While Redis is down txredisapi parks new commands until a connection comes
back, without any timeout; every call here therefore carries a deadline, and
a batch that misses it aborts the connection so commands already written do
not pile up on a socket that stopped answering.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import unquote, urlsplit

import attr
import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.event import StreamEntry
from imapsvc.deferreds import DeadlineExceeded, with_deadline
from imapsvc.interfaces import ISink

_log = Logger()


class SinkUnavailable(Exception):
    """The Redis stream could not be written (down, refused, timed out)."""


@attr.s(frozen=True, auto_attribs=True)
class RedisAddress:
    """What a ``redis://`` / ``rediss://`` URL names. The password never
    appears in ``repr``."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: Optional[int] = None
    username: Optional[str] = None
    password: Optional[str] = attr.ib(default=None, repr=False)
    tls: bool = False

    def redacted(self) -> str:
        """The URL without credentials, for logs."""
        scheme = "rediss" if self.tls else "redis"
        db = f"/{self.db}" if self.db is not None else ""
        return f"{scheme}://{self.host}:{self.port}{db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).

    :raises ValueError: with a message that does not contain the password.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("REDIS_URL must start with redis:// or rediss://")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("REDIS_URL has an invalid port") from None
    db: Optional[int] = None
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError("REDIS_URL database must be a number")
        db = int(path)
    return RedisAddress(
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


#: Values longer than this go out as three pieces (length line, the value
#: itself, CRLF) rather than copied into one bulk: a batch of big payloads
#: is then copied once, by the transport, instead of once more here.
_COPY_BELOW = 4096


#: Append each entry of a batch unless the stream took its event id within
#: the window. KEYS: the stream, then one dedupe key per entry; ARGV: the
#: window in ms, MAXLEN ("0": none), then per entry its argument count and
#: its fields. Answers, per entry, its stream id and 1 when appended, or the
#: first stream id and 0 when the event was there already. Each entry's
#: check, XADD and key are one step of one script, so neither a crash of the
#: service nor a second replica can come between them; the key is set only
#: after the XADD succeeded, so a failed XADD never hides an event (a script
#: that fails part-way keeps the entries before, as a failed pipeline did).
PUBLISH_ONCE = b"""\
local window, maxlen = ARGV[1], ARGV[2]
local out, a = {}, 3
for i = 2, #KEYS do
  local n = tonumber(ARGV[a])
  local seen = redis.call('GET', KEYS[i])
  if seen then
    out[#out + 1] = seen
    out[#out + 1] = 0
  else
    local id
    if maxlen ~= '0' then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a + 1, a + n))
    else
      id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, a + 1, a + n))
    end
    redis.call('SET', KEYS[i], id, 'PX', window)
    out[#out + 1] = id
    out[#out + 1] = 1
  end
  a = a + n + 1
end
return out
"""
PUBLISH_ONCE_SHA = hashlib.sha1(PUBLISH_ONCE).hexdigest()


def dedupe_key(stream: str, event_id: str) -> str:
    """The key that remembers ``event_id`` was appended to ``stream`` (pure).
    Beside the stream, under its name, so its keys are found with it."""
    return f"{stream}:published:{event_id}"


_SCRIPT_LOAD = b"".join([b"*3\r\n", _bulk(b"SCRIPT"), _bulk(b"LOAD"), _bulk(PUBLISH_ONCE)])


def script_load_command() -> bytes:
    """``SCRIPT LOAD`` of :data:`PUBLISH_ONCE` (built once). Sent ahead of
    every batch in the same write: it costs Redis a hash lookup, and a Redis
    that restarted (or flushed its scripts) never answers ``NOSCRIPT``."""
    return _SCRIPT_LOAD


def _field_bulks(fields: Mapping[str, str]) -> tuple[int, list[bytes]]:
    """The fields of one entry as RESP bulks, and how many arguments they are.

    :raises TypeError: a non-string field. :raises ValueError: no field.
    """
    entry = fields if isinstance(fields, StreamEntry) else None
    items = entry.head() if entry is not None else fields
    if not items and entry is None:
        raise ValueError("a stream entry needs at least one field")
    parts: list[bytes] = []
    for key, value in items.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("stream fields must be strings")
        parts.append(_bulk(key.encode("utf-8")))
        parts.append(_bulk(value.encode("utf-8")))
    count = len(parts)
    if entry is not None:
        parts.append(_bulk(b"payload_json"))
        payload = entry.wire_payload()
        if len(payload) < _COPY_BELOW:
            parts.append(_bulk(payload))
        else:
            parts += [b"$%d\r\n" % len(payload), payload, b"\r\n"]
        count += 2
    return count, parts


#: A batch goes to the script in groups of at most this many entries or
#: about this many payload bytes, pipelined, so Redis runs the first group
#: while the next arrives. Measured on the mixed corpus (bench.backlog, peak
#: RSS): one script per entry 81-82 MB, groups of 2-8 82-83 MB, of 32 or a
#: whole batch 87-89 MB (plain XADD: 80-82 MB), at the same speed.
SCRIPT_GROUP_ENTRIES = 8
SCRIPT_GROUP_BYTES = 256 * 1024


def script_groups(entries: Sequence[tuple[str, Mapping[str, str]]]
                  ) -> list[Sequence[tuple[str, Mapping[str, str]]]]:
    """``entries`` cut into the script's groups, in order (pure)."""
    groups: list[Sequence[tuple[str, Mapping[str, str]]]] = []
    start = size = 0
    for n, (_, fields) in enumerate(entries):
        size += _payload_size(fields)
        if n + 1 - start >= SCRIPT_GROUP_ENTRIES or size >= SCRIPT_GROUP_BYTES:
            groups.append(entries[start:n + 1])
            start, size = n + 1, 0
    if start < len(entries):
        groups.append(entries[start:])
    return groups


def _payload_size(fields: Mapping[str, str]) -> int:
    if isinstance(fields, StreamEntry):
        return len(fields.wire_payload())
    return len(fields.get("payload_json", ""))


def publish_once_pieces(stream: str, entries: Sequence[tuple[str, Mapping[str, str]]],
                        window_ms: int, maxlen: int = 0) -> list[bytes]:
    """One ``EVALSHA`` of :data:`PUBLISH_ONCE` for a group of entries, as the
    RESP pieces that, joined, are the command (pure): what the sink hands to
    ``writeSequence``, one reply for the group.

    :raises TypeError: a non-string field. :raises ValueError: no field.
    """
    keys = [_bulk(stream.encode("utf-8"))]
    args = [_bulk(b"%d" % window_ms), _bulk(b"%d" % max(0, maxlen))]
    arg_count = 2
    for event_id, fields in entries:
        keys.append(_bulk(dedupe_key(stream, event_id).encode("utf-8")))
        count, bulks = _field_bulks(fields)
        args.append(_bulk(b"%d" % count))
        args += bulks
        arg_count += 1 + count
    head = [_bulk(b"EVALSHA"), _bulk(PUBLISH_ONCE_SHA.encode("ascii")),
            _bulk(b"%d" % len(keys))]
    return [b"*%d\r\n" % (len(head) + len(keys) + arg_count), *head, *keys, *args]


def xadd_command(stream: str, fields: Mapping[str, str], maxlen: int = 0) -> bytes:
    """One ``XADD`` as RESP bytes, ready for the socket (pure). A
    :class:`~imapsvc.core.event.StreamEntry` goes out with its payload bytes
    as they are, never decoded or encoded again.

    :raises TypeError: a non-string field (nothing of a bad batch is written).
    :raises ValueError: no field.
    """
    return b"".join(xadd_pieces(stream, fields, maxlen))


def xadd_pieces(stream: str, fields: Mapping[str, str], maxlen: int = 0) -> list[bytes]:
    """:func:`xadd_command` as the pieces that, joined, are the command."""
    head = xadd_args(stream, {}, maxlen, allow_empty=True)
    count, bulks = _field_bulks(fields)
    return [b"*%d\r\n" % (len(head) + count),
            *(_bulk(arg.encode("utf-8")) for arg in head), *bulks]


def xadd_args(stream: str, fields: Mapping[str, str], maxlen: int = 0,
              allow_empty: bool = False) -> list[str]:
    """The arguments of one ``XADD`` (pure; raises ``TypeError`` on a
    non-string field so nothing of a bad batch is written)."""
    args = ["XADD", stream]
    if maxlen > 0:
        # "~": trimming at macro-node boundaries is far cheaper than exact.
        args += ["MAXLEN", "~", str(maxlen)]
    args.append("*")
    if not fields and not allow_empty:
        raise ValueError("a stream entry needs at least one field")
    for key, value in fields.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("stream fields must be strings")
        args += [key, value]
    return args


@implementer(ISink)
class RedisStreamSink:
    """Publish stream entries with ``XADD``.

    :param reactor: the reactor (``IReactorTCP`` + ``IReactorTime``).
    :param url: ``REDIS_URL``.
    :param stream: ``IMAP_EVENT_STREAM``.
    :param timeout_s: deadline of every call (a whole batch, or a ping).
    :param maxlen: ``MAXLEN ~ maxlen`` when > 0; off by default because
        trimming drops entries nobody has read yet.
    :param reconnect_max_s: the longest pause between reconnection attempts.
    :param dedupe_window_ms: how long the stream remembers an ``event_id``
        it took (:data:`PUBLISH_ONCE`); 0 appends with plain ``XADD``, and a
        re-published event is appended again.
    :param factory: for tests: a connection source in place of the
        ``txredisapi.RedisFactory`` that :meth:`start` would create (it needs
        ``getConnection(peek=True)`` and ``disconnect()``).
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        stream: str,
        timeout_s: float,
        maxlen: int = 0,
        reconnect_max_s: float = 5.0,
        factory: Optional[Any] = None,
        dedupe_window_ms: int = 86_400_000,
    ) -> None:
        if dedupe_window_ms < 0:
            raise ValueError("dedupe_window_ms must not be negative")
        self._reactor = reactor
        self._window_ms = dedupe_window_ms
        #: Entries not appended because the stream already held their event.
        self.skipped = 0
        self._address = parse_redis_url(url)
        self.stream = stream
        self._timeout_s = timeout_s
        self._maxlen = maxlen
        self._reconnect_max_s = reconnect_max_s
        self._factory: Optional[Any] = factory

    def __repr__(self) -> str:
        return f"<RedisStreamSink {self._address.redacted()} stream={self.stream!r}>"

    # -- lifecycle -----------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Start connecting (in the background; commands wait for it)."""
        if self._factory is None:
            a = self._address
            factory = txredisapi.RedisFactory(
                a.redacted(),
                a.db,
                1,  # one connection: order of a batch is the order on the wire
                isLazy=True,
                handler=txredisapi.ConnectionHandler,
                charset="utf-8",
                password=a.password,
                replyTimeout=None,  # our own deadline covers the whole call
                convertNumbers=False,
                username=a.username,
            )
            factory.reconnect = True
            factory.maxDelay = self._reconnect_max_s
            factory.initialDelay = min(factory.initialDelay, self._reconnect_max_s)
            endpoint: Any = HostnameEndpoint(
                self._reactor, a.host, a.port, timeout=max(1, int(self._timeout_s))
            )
            if a.tls:
                endpoint = wrapClientTLS(optionsForClientTLS(a.host), endpoint)
            factory.startConnecting(endpoint)
            self._factory = factory
            _log.info("Redis sink connecting to {address}", address=a.redacted())
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        """Close the connection and stop reconnecting."""
        factory, self._factory = self._factory, None
        if factory is None:
            return defer.succeed(None)
        d = with_deadline(factory.disconnect(), self._timeout_s, self._reactor, "Redis disconnect")
        d.addErrback(lambda f: _log.failure("Redis sink did not close cleanly", failure=f))
        return d.addCallback(lambda _: None)

    # -- ISink ---------------------------------------------------------

    def publish(
        self, entries: Sequence[tuple[str, Mapping[str, str]]]
    ) -> defer.Deferred[list[str]]:
        """XADD every entry, pipelined on one connection, in order; with a
        dedupe window, an entry whose event the stream took within it is
        not appended again (its first stream id is returned).

        :return: Deferred of the stream ids, in order; fails with
            :class:`SinkUnavailable` (a prefix may have been appended).
        """
        if not entries:
            return defer.succeed([])
        if self._factory is None:
            return defer.fail(SinkUnavailable("Redis sink is not started"))
        try:
            if self._window_ms:
                pieces = [script_load_command()]
                groups = script_groups(entries)
                for group in groups:
                    pieces += publish_once_pieces(self.stream, group, self._window_ms,
                                                  self._maxlen)
                replies = 1 + len(groups)
            else:
                pieces = []
                for _, fields in entries:
                    pieces += xadd_pieces(self.stream, fields, self._maxlen)
                replies = len(entries)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        sent_on: list[Any] = []

        def send(conn: Any) -> defer.Deferred[list[Any]]:
            sent_on.append(conn)
            return defer.gatherResults(_pipeline(conn, pieces, replies), consumeErrors=True)

        d = self._factory.getConnection(peek=True)
        d.addCallback(send)
        with_deadline(d, self._timeout_s, self._reactor, "Redis XADD batch")

        def failed(failure: Failure) -> Failure:
            if failure.check(DeadlineExceeded) and sent_on and sent_on[0].transport:
                # Replies may never come: drop the socket, the pool reconnects.
                sent_on[0].transport.abortConnection()
            if failure.check(defer.FirstError):
                failure = failure.value.subFailure
            text = _describe(failure)
            if self._window_ms and _refuses_scripts(text):
                text += (" (this Redis refuses the dedupe script: allow SCRIPT LOAD and EVALSHA,"
                         " or set IMAP_EVENT_DEDUPE_WINDOW_MS=0 for plain XADD)")
            raise SinkUnavailable(f"XADD to {self.stream!r} failed: {text}")

        d.addCallbacks(self._stream_ids, failed, callbackArgs=(entries,))
        return d

    def _stream_ids(self, replies: list[Any],
                    entries: Sequence[tuple[str, Mapping[str, str]]]) -> list[str]:
        if not self._window_ms:
            return [_text(i) for i in replies]
        ids = []
        flat = [item for reply in replies[1:] for item in reply]
        for n, (event_id, _) in enumerate(entries):
            stream_id, appended = flat[2 * n], flat[2 * n + 1]
            if not int(appended):
                self.skipped += 1
                _log.info(
                    "Stream {stream} already holds event {event_id} as {stream_id}"
                    " (published before a crash or a lease change); not appended again",
                    stream=self.stream, event_id=event_id, stream_id=_text(stream_id))
            ids.append(_text(stream_id))
        return ids

    def ping(self) -> defer.Deferred[Any]:
        """``PING`` with a deadline; fails with :class:`SinkUnavailable`."""
        if self._factory is None:
            return defer.fail(SinkUnavailable("Redis sink is not started"))
        d = self._factory.getConnection(peek=True)
        d.addCallback(lambda conn: conn.execute_command("PING"))
        with_deadline(d, self._timeout_s, self._reactor, "Redis PING")

        def failed(failure: Failure) -> None:
            raise SinkUnavailable(f"Redis PING failed: {_describe(failure)}")

        return d.addErrback(failed)


def _pipeline(conn: Any, pieces: list[bytes], replies: int) -> list[defer.Deferred[Any]]:
    """Write ``pieces`` (RESP commands, in pieces) in one go and return one
    Deferred for each of the ``replies`` commands, in order.

    This is what ``execute_command`` does for each command (write, then wait
    on the protocol's reply queue, replies being strictly ordered), minus
    building every command again from Python strings, which was most of the
    sink's reactor time. ``writeSequence``: the transport joins its buffer
    anyway, so the batch is not copied once more here (up to 500 entries).
    """
    if not conn.connected:
        raise ConnectionError("Not connected")
    queue = conn.replyQueue
    conn.transport.writeSequence(pieces)
    return [queue.get().addCallback(conn.handle_reply) for _ in range(replies)]


def _refuses_scripts(error: str) -> bool:
    """Whether a Redis error says scripts are not allowed here (an ACL, a
    managed Redis without Lua) rather than that Redis is down."""
    upper = error.upper()
    return "NOPERM" in upper or "UNKNOWN COMMAND" in upper or "NOSCRIPT" in upper


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _describe(failure: Failure) -> str:
    # Exception text from Redis/txredisapi never carries the password.
    return f"{type(failure.value).__name__}: {failure.value}"

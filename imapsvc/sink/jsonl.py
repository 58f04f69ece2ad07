"""The embedded default sink: stream entries appended to a JSON Lines file.

File format, one JSON object per line (UTF-8)::

    {"stream": "workflow:events:global", "id": "1736512496789-0",
     "fields": {"event_id": "...", "event_name": "INBOUND_EMAIL_RECEIVED", ...}}

``stream`` is the configured stream name, ``id`` a Redis-style entry id
(``<milliseconds>-<sequence>``, strictly increasing within the file, also
across restarts) and ``fields`` the flat string fields exactly as they would
be XADDed. As with Redis, an event the file took within the dedupe window
(``dedupe_window_ms``) is not appended again: the file's recent event ids are
read back at start, so this holds across restarts too.

Durability: each :meth:`JsonLinesSink.publish` writes its whole batch, then
flushes and fsyncs before its Deferred fires. A crash in the middle of a
write can leave a partial last line; :meth:`JsonLinesSink.start` cuts it off
(that batch was never acknowledged, so the relay publishes it again).

The file I/O is synchronous on the calling thread: a few small lines and one
fsync per batch, which is acceptable for the single-node embedded setup this
sink exists for.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from typing import Any, Iterator, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from imapsvc.interfaces import ISink

_log = Logger()


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


def read_entries(path: str) -> Iterator[dict[str, Any]]:
    """Yield the complete entries of a JSON Lines sink file, in order
    (a partial last line is ignored)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            yield json.loads(line)


@implementer(ISink)
class JsonLinesSink:
    """Append stream entries to ``path`` (see the module docstring).

    :param path: the file; its directory must exist.
    :param stream: the stream name written into every line.
    :param clock: an ``IReactorTime`` for the ids' millisecond part
        (default: the wall clock).
    :param dedupe_window_ms: how long an event id is remembered; 0 appends
        every publish.
    """

    def __init__(
        self, path: str, stream: str = "workflow:events:global", clock: Optional[Any] = None,
        dedupe_window_ms: int = 86_400_000,
    ) -> None:
        if dedupe_window_ms < 0:
            raise ValueError("dedupe_window_ms must not be negative")
        self.path = path
        self.stream = stream
        self._now = clock.seconds if clock is not None else time.time
        self._fd: Optional[int] = None
        self._last: tuple[int, int] = (0, 0)
        self._window_ms = dedupe_window_ms
        # event id -> its stream id; ``_order`` holds (ms, event id) oldest
        # first, so expiry pops from the left.
        self._seen: dict[str, str] = {}
        self._order: deque[tuple[int, str]] = deque()
        #: Entries not appended because the file already held their event.
        self.skipped = 0

    def start(self) -> defer.Deferred[None]:
        """Open the file, repair a partial last line, resume the id sequence."""
        return defer.maybeDeferred(self._open)

    def _open(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            self._last = self._repair(fd)
            self._recall(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _recall(self, fd: int) -> None:
        """Remember the event ids of the lines within the dedupe window
        (read from the end, so a long file costs only its recent part)."""
        self._seen.clear()
        self._order.clear()
        if not self._window_ms:
            return
        since = int(self._now() * 1000) - self._window_ms
        recent: list[tuple[int, str, str]] = []
        for line in _lines_backwards(fd):
            try:
                item = json.loads(line)
                stream_id = str(item["id"])
                ms = _parse_id(stream_id)[0]
                event_id = item["fields"]["event_id"]
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge: the line stays, unremembered
            if ms < since:
                break
            if isinstance(event_id, str):
                recent.append((ms, event_id, stream_id))
        for ms, event_id, stream_id in reversed(recent):
            if event_id not in self._seen:
                self._seen[event_id] = stream_id
                self._order.append((ms, event_id))

    def _forget_expired(self) -> None:
        since = int(self._now() * 1000) - self._window_ms
        while self._order and self._order[0][0] < since:
            _, event_id = self._order.popleft()
            self._seen.pop(event_id, None)

    def _repair(self, fd: int) -> tuple[int, int]:
        """Truncate after the last complete line; return the last id in it."""
        size = os.fstat(fd).st_size
        if size == 0:
            return (0, 0)
        # Scan backwards for the last newline: the file may be large.
        block = 64 * 1024
        end = size
        good_end = 0
        tail = b""
        while end > 0:
            start = max(0, end - block)
            chunk = os.pread(fd, end - start, start)
            tail = chunk + tail
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                good_end = start + idx + 1
                break
            end = start
        if good_end != size:
            _log.warn(
                "Cutting off a partial last line ({count} bytes) of {path}",
                count=size - good_end,
                path=self.path,
            )
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        if good_end == 0:
            return (0, 0)
        # The last complete line ends at good_end; read it back.
        line_start = good_end - 1
        window = 64 * 1024
        while True:
            start = max(0, line_start - window)
            chunk = os.pread(fd, line_start - start, start)
            idx = chunk.rfind(b"\n")
            if idx >= 0 or start == 0:
                first = start + idx + 1 if idx >= 0 else 0
                break
            window *= 2
        last_line = os.pread(fd, good_end - first, first)
        try:
            return _parse_id(json.loads(last_line)["id"])
        except (ValueError, KeyError, TypeError):
            _log.warn("Last line of {path} has no readable id; ids restart", path=self.path)
            return (0, 0)

    def _next_id(self) -> str:
        ms = int(self._now() * 1000)
        last_ms, last_seq = self._last
        if ms <= last_ms:
            self._last = (last_ms, last_seq + 1)
        else:
            self._last = (ms, 0)
        return f"{self._last[0]}-{self._last[1]}"

    def publish(
        self, entries: Sequence[tuple[str, Mapping[str, str]]]
    ) -> defer.Deferred[list[str]]:
        """Append ``entries`` (``(event_id, fields)``) as one write, then fsync.

        :return: Deferred of the ids given to the entries, in order.
        """
        return defer.maybeDeferred(self._publish, entries)

    def _publish(self, entries: Sequence[tuple[str, Mapping[str, str]]]) -> list[str]:
        self._open()
        assert self._fd is not None
        if not entries:
            return []
        saved = self._last
        ids = []
        lines = []
        if self._window_ms:
            self._forget_expired()
        fresh: dict[str, str] = {}
        try:
            for event_id, fields in entries:
                for key, value in fields.items():
                    if not isinstance(key, str) or not isinstance(value, str):
                        raise TypeError("stream fields must be strings")
                if self._window_ms:
                    known = self._seen.get(event_id) or fresh.get(event_id)
                    if known is not None:
                        ids.append(known)
                        continue
                stream_id = self._next_id()
                ids.append(stream_id)
                fresh[event_id] = stream_id
                lines.append(
                    json.dumps(
                        {"stream": self.stream, "id": stream_id, "fields": dict(fields)},
                        ensure_ascii=False,
                        separators=(",", ":"),
                    )
                )
        except BaseException:
            self._last = saved
            raise
        if self._window_ms:
            self.skipped += len(ids) - len(fresh)
        if not lines:
            return ids
        data = ("\n".join(lines) + "\n").encode("utf-8")
        before = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except BaseException:
            # Do not leave a partial line for the next batch to continue.
            self._last = saved
            try:
                os.ftruncate(self._fd, before)
            except OSError:
                _log.failure("Could not cut a failed write off {path}", path=self.path)
            raise
        if self._window_ms:
            ms = self._last[0]
            for event_id, stream_id in fresh.items():
                self._seen[event_id] = stream_id
                self._order.append((ms, event_id))
        return ids

    def ping(self) -> defer.Deferred[bool]:
        """Answer when the file is open (or can be opened)."""
        def check() -> bool:
            self._open()
            return True

        return defer.maybeDeferred(check)

    def stop(self) -> defer.Deferred[None]:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        return defer.succeed(None)


def _lines_backwards(fd: int, block: int = 64 * 1024) -> Iterator[bytes]:
    """The non-empty lines of ``fd``, last first. Each block is read and
    split once, however long a line is (inline attachments make long ones)."""
    end = os.fstat(fd).st_size
    tail: list[bytes] = []  # the line being put together, its end first
    while end > 0:
        start = max(0, end - block)
        parts = os.pread(fd, end - start, start).split(b"\n")
        end = start
        if len(parts) == 1:
            tail.append(parts[0])
            continue
        tail.append(parts[-1])
        line = b"".join(reversed(tail))
        if line:
            yield line
        for part in reversed(parts[1:-1]):
            if part:
                yield part
        tail = [parts[0]]
    line = b"".join(reversed(tail))
    if line:
        yield line

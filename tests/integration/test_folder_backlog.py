"""A 3,000-message backlog through the folder engine against the real
Dovecot rig: exactly once, in UID order, and only the bytes each path needs.

The structure path (BODYSTRUCTURE trusted) must download headers and body
text parts only, never an attachment byte; the fallback path (the host is in
the broken-BODYSTRUCTURE list) downloads whole messages. Both are proved
with the bytes the client read (:mod:`tests.rig.counting`) and the
``BODY.PEEK`` sections it asked for.

The helpers at the top (message generator, service builder, ``wait_for``)
are shared with the other ``test_folder_*`` integration modules.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import time
from typing import Any, Callable, Optional

import attr
from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import Credentials, FolderCursor, ProviderConfig
from tests.folder_helpers import memory_backend, read_cursor, write_cursor
from tests.rig import mail
from tests.rig.counting import ByteCounter, counting_protocol_factory, sections_by_uid
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user

log = Logger()

BACKLOG_SIZE = 3000
#: Every ATTACHMENT_EVERY-th message carries a 50-500 KB base64 attachment.
ATTACHMENT_EVERY = 20


# -- shared helpers ------------------------------------------------------------


@defer.inlineCallbacks
def wait_for(predicate, timeout=10.0, step=0.02, what="condition"):  # type: ignore[no-untyped-def]
    """Let the real reactor run until ``predicate()`` is true, checking every
    ``step`` seconds; fail after ``timeout`` seconds (reactor time)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() >= deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)


class PasswordSource:
    """``ICredentialSource`` for one rig user."""

    def __init__(self, user: str, password: str = DEFAULT_PASSWORD) -> None:
        self.user = user
        self.password = password

    def credentials(self, provider: ProviderConfig) -> defer.Deferred:
        return defer.succeed(Credentials("password", self.user, self.password))


def start_folder_service(
    testcase: TestCase,
    user: str,
    store: Any,
    pipeline: Any,
    folder: str = "INBOX",
    options: Optional[FolderOptions] = None,
    counter: Optional[ByteCounter] = None,
    provider_id: str = "p1",
    tenant: str = "t1",
    owner: str = "worker-1",
    hooks: Any = None,
) -> FolderService:
    """A started :class:`FolderService` on the rig's implicit-TLS port
    (host ``localhost``), stopped by the test's cleanup."""
    dovecot = get_dovecot()
    options = options or FolderOptions(
        startup_stagger_ms=0, reconnect_base_ms=200, reconnect_max_ms=1000
    )
    provider = ProviderConfig(
        tenant=tenant,
        provider_id=provider_id,
        provider_name="test",
        mailbox=user,
        host="localhost",
        port=dovecot.ports.imaps,
        username=user,
    )
    protocol_factory = None
    if counter is not None:
        protocol_factory = counting_protocol_factory(
            counter,
            reactor,
            options.command_timeout_ms / 1000.0,
            inactivity_timeout=options.inactivity_timeout_ms / 1000.0,
        )
    svc = FolderService(
        provider,
        folder,
        reactor,
        store,
        pipeline,
        PasswordSource(user),
        owner,
        options,
        hooks=hooks,
        protocol_factory=protocol_factory,
        tls_factory=lambda host: client_tls_options(host, ca_file=dovecot.ca_file),
    )
    svc.startService()
    testcase.addCleanup(svc.stopService)
    return svc


@attr.s(frozen=True, auto_attribs=True)
class Generated:
    """One generated message and what the server must give back for it.

    :ivar header: the exact ``BODY[HEADER]`` bytes (blank line included).
    :ivar texts: section -> exact bytes of each body text part.
    :ivar attachment_bytes: encoded size of its attachments (0 if none).
    """

    raw: bytes
    header: bytes
    texts: dict[str, bytes]
    attachment_bytes: int
    kind: str


_WORDS = (
    "invoice printer broken please help urgent ticket server down password reset "
    "meeting tomorrow thanks regards customer order delivery refund account login "
    "error screen laptop network office monday report update status question"
).split()


def _text_lines(rng: random.Random, approx: int) -> bytes:
    lines, size = [], 0
    while size < approx:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 11))]
        line = " ".join(words).capitalize() + "."
        lines.append(line)
        size += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _html(text: bytes) -> bytes:
    paras = b"".join(b"<p>" + line + b"</p>\r\n" for line in text.split(b"\r\n") if line)
    return b"<html><body>\r\n" + paras + b"</body></html>\r\n"


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _multipart(boundary: bytes, parts: list[bytes]) -> bytes:
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), so
    # each part's content is exactly what was put in it.
    out = b"--" + boundary + b"\r\n"
    out += (b"\r\n--" + boundary + b"\r\n").join(parts)
    return out + b"\r\n--" + boundary + b"--\r\n"


def make_generated(
    index: int,
    tag: str,
    attachment_size: Optional[int] = None,
    kind: Optional[str] = None,
) -> Generated:
    """A deterministic message number ``index``.

    :param attachment_size: raw size of a base64 attachment to add (the
        message is then multipart/mixed); ``None`` picks by ``index``.
    :param kind: ``"plain"``, ``"alternative"`` or ``"mixed"``; ``None``
        picks by ``index``.
    """
    rng = random.Random(index * 7919 + 17)
    if attachment_size is None and index % ATTACHMENT_EVERY == ATTACHMENT_EVERY - 1:
        attachment_size = rng.randint(50_000, 500_000)
    if kind is None:
        if attachment_size:
            kind = "mixed"
        else:
            kind = ("plain", "alternative", "plain-long")[index % 3]
    text = _text_lines(rng, 3000 if kind == "plain-long" else rng.randint(80, 900))
    head = (
        f"From: Customer {index} <customer{index}@example.org>\r\n"
        "To: Support <support@example.com>\r\n"
        f"Subject: backlog {index} ({kind})\r\n"
        "Date: Sat, 10 Jan 2026 12:00:00 +0000\r\n"
        f"Message-ID: <backlog-{index}.{tag}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode("ascii")
    texts: dict[str, bytes] = {}
    attachment_bytes = 0
    plain_head = (
        b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
    )
    html_head = b"Content-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
    if kind in ("plain", "plain-long"):
        header = head + plain_head + b"\r\n"
        body = text
        texts["1"] = text
    elif kind == "alternative":
        boundary = b"alt-%d" % index
        header = head + b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
        html = _html(text)
        body = _multipart(boundary, [plain_head + b"\r\n" + text, html_head + b"\r\n" + html])
        texts["1"] = text
        texts["2"] = html
    else:
        size = attachment_size or 60_000
        blob = rng.randbytes(size)
        encoded = _base64_lines(blob)
        attachment_bytes = len(encoded)
        att = (
            b'Content-Type: application/octet-stream; name="file-%d.bin"\r\n' % index
            + b'Content-Disposition: attachment; filename="file-%d.bin"\r\n' % index
            + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + encoded
        )
        boundary = b"mix-%d" % index
        header = head + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        if index % 2:
            inner = b"alt-%d" % index
            html = _html(text)
            first = (
                b'Content-Type: multipart/alternative; boundary="'
                + inner
                + b'"\r\n\r\n'
                + _multipart(inner, [plain_head + b"\r\n" + text, html_head + b"\r\n" + html])
            )
            texts["1.1"] = text
            texts["1.2"] = html
        else:
            first = plain_head + b"\r\n" + text
            texts["1"] = text
        body = _multipart(boundary, [first, att])
    return Generated(header + body, header, texts, attachment_bytes, kind)


@attr.s(auto_attribs=True)
class Backlog:
    user: str
    folder: str
    uids: list[int]
    messages: list[Generated]
    uid_validity: int
    load_seconds: float

    @property
    def attachment_total(self) -> int:
        return sum(m.attachment_bytes for m in self.messages)

    @property
    def needed_total(self) -> int:
        """Header and body text bytes: what the structure path must read."""
        return sum(len(m.header) + sum(map(len, m.texts.values())) for m in self.messages)

    @property
    def raw_total(self) -> int:
        return sum(len(m.raw) for m in self.messages)


_backlog: Optional[Backlog] = None


def backlog() -> Backlog:
    """The 3,000-message folder, generated and loaded once per test run
    (MULTIAPPEND over one connection); both path tests only read it."""
    global _backlog
    if _backlog is None:
        get_dovecot()
        user = get_dovecot().add_user(unique_user("backlog"))
        tag = user.split("@")[0]
        started = time.monotonic()
        messages = [make_generated(i, tag) for i in range(BACKLOG_SIZE)]
        uids = mail.bulk_append(user, DEFAULT_PASSWORD, "INBOX", (m.raw for m in messages), 250)
        validity = mail.status(user, DEFAULT_PASSWORD, "INBOX")["UIDVALIDITY"]
        _backlog = Backlog(user, "INBOX", uids, messages, validity, time.monotonic() - started)
        log.info(
            "backlog: {n} messages, {mb:.1f} MB, loaded in {s:.1f}s",
            n=len(messages),
            mb=_backlog.raw_total / 1e6,
            s=_backlog.load_seconds,
        )
    return _backlog


# -- the tests -----------------------------------------------------------------

#: Per message, what the responses add around the literals we asked for
#: (``* n FETCH (UID .. RFC822.SIZE .. INTERNALDATE ".." BODYSTRUCTURE (..)
#: BODY[HEADER] {n}`` and the section responses). Measured with Dovecot 2.3:
#: about 300 bytes per message on this mix (a nested multipart's
#: BODYSTRUCTURE is the largest part). Ample, and far below one attachment.
FRAMING_PER_MESSAGE = 800


class BacklogTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.backlog = backlog()
        self.store, self.provider, self.pipeline = memory_backend(reactor)
        self.counter = ByteCounter()
        # Rescan the whole folder.
        write_cursor(self.store, self.provider, FolderCursor(None, "0", None),
                     self.backlog.folder)

    def _start(self, broken: tuple[str, ...] = ()) -> FolderService:
        options = FolderOptions(
            startup_stagger_ms=0,
            reconnect_base_ms=200,
            reconnect_max_ms=1000,
            broken_bodystructure_hosts=broken,
        )
        return start_folder_service(
            self,
            self.backlog.user,
            self.store,
            self.pipeline,
            options=options,
            counter=self.counter,
        )

    def _assert_exactly_once_in_order(self, svc: FolderService) -> None:
        b = self.backlog
        self.assertEqual(len(self.pipeline.uids), len(b.uids))
        self.assertEqual(self.pipeline.uids, b.uids)  # in UID order, each once
        self.assertEqual(b.uids, sorted(set(b.uids)))
        cursor = read_cursor(self.store, self.provider, b.folder)
        self.assertEqual(cursor.last_uid, str(b.uids[-1]))
        self.assertEqual(cursor.uid_validity, str(b.uid_validity))
        self.assertEqual(svc.handed_off, len(b.uids))
        for batch in self.pipeline.batches:
            messages, batch_cursor = batch.messages, batch.cursor
            # The cursor stored with a batch is the batch's last UID.
            self.assertEqual(batch_cursor.last_uid, str(messages[-1].uid))

    @defer.inlineCallbacks
    def test_structure_path_hands_off_everything_once_without_attachments(self):
        b = self.backlog
        started = reactor.seconds()
        svc = self._start()
        yield wait_for(
            lambda: len(self.pipeline.uids) >= len(b.uids) and svc.state == S.IDLING,
            timeout=90,
            what="backlog handed off",
        )
        elapsed = reactor.seconds() - started
        log.info("structure path: {n} messages in {s:.1f}s", n=len(b.uids), s=elapsed)
        self._assert_exactly_once_in_order(svc)

        by_uid = dict(zip(b.uids, b.messages))
        for msg in self.pipeline.messages:
            gen = by_uid[msg.uid]
            self.assertIsNone(msg.raw)
            self.assertEqual(msg.header, gen.header, f"UID {msg.uid}")
            self.assertEqual(dict(msg.texts), gen.texts, f"UID {msg.uid}")
            self.assertEqual(msg.size, len(gen.raw))
            self.assertEqual(msg.uid_validity, str(b.uid_validity))
            self.assertEqual(tuple(msg.truncated), ())

        # What was asked: the header and the text sections of each message,
        # never the whole message, never an attachment's section.
        asked = sections_by_uid(self.counter)
        for uid, gen in by_uid.items():
            wanted = {s.encode() for s in gen.texts} | {b"HEADER"}
            self.assertEqual(asked.get(uid), wanted, f"UID {uid}")

        # What was read: no more than headers + texts + framing. The
        # attachments alone are several times that bound.
        bound = b.needed_total + FRAMING_PER_MESSAGE * len(b.uids) + 64 * 1024
        log.info(
            "structure path read {read} bytes; needed {needed}; bound {bound}; "
            "attachments {att}; whole messages {raw}",
            read=self.counter.read,
            needed=b.needed_total,
            bound=bound,
            att=b.attachment_total,
            raw=b.raw_total,
        )
        self.assertGreaterEqual(self.counter.read, b.needed_total)
        self.assertLess(self.counter.read, bound)
        self.assertLess(bound * 2, b.attachment_total)
        self.assertLess(elapsed, 60)

    @defer.inlineCallbacks
    def test_fallback_path_downloads_whole_messages(self):
        b = self.backlog
        started = reactor.seconds()
        svc = self._start(broken=("localhost",))
        self.assertFalse(svc.trust_structure)
        yield wait_for(
            lambda: len(self.pipeline.uids) >= len(b.uids) and svc.state == S.IDLING,
            timeout=120,
            what="backlog handed off",
        )
        elapsed = reactor.seconds() - started
        log.info("fallback path: {n} messages in {s:.1f}s", n=len(b.uids), s=elapsed)
        self._assert_exactly_once_in_order(svc)

        by_uid = dict(zip(b.uids, b.messages))
        for msg in self.pipeline.messages:
            self.assertEqual(msg.raw, by_uid[msg.uid].raw, f"UID {msg.uid}")
            self.assertEqual(tuple(msg.parts), ())
            self.assertEqual(dict(msg.texts), {})
        asked = sections_by_uid(self.counter)
        for uid in b.uids:
            self.assertIn(b"", asked[uid])  # BODY.PEEK[]
        self.assertGreaterEqual(self.counter.read, b.raw_total)
        self.assertGreaterEqual(self.counter.read, b.attachment_total)
        log.info(
            "fallback path read {read} bytes; whole messages {raw}",
            read=self.counter.read,
            raw=b.raw_total,
        )
        self.assertLess(elapsed, 90)


class _CallOnIdling:
    """Hooks that run ``action`` on the reactor turn after the folder enters
    Idling: IDLE is then written but the server's ``+`` cannot have been
    read yet (the reactor runs timed calls before it polls sockets)."""

    def __init__(self, action):  # type: ignore[no-untyped-def]
        self.action = action
        self.armed = True

    def state_changed(self, state, reason="", error=None):  # type: ignore[no-untyped-def]
        if state == S.IDLING and self.armed:
            self.armed = False
            reactor.callLater(0, self.action)


class IdleWindowTests(TestCase):
    """A wake-up or a stop between sending IDLE and the server's ``+`` must
    not be lost (the protocol's ``done()`` defers DONE until the ``+``)."""

    timeout = 60

    def setUp(self) -> None:
        self.user = get_dovecot().add_user(unique_user("idlewin"))
        self.store, self.provider, self.pipeline = memory_backend(reactor)

    @defer.inlineCallbacks
    def test_wake_before_continuation_syncs_again(self):
        hooks = _CallOnIdling(lambda: svc.wake())
        svc = start_folder_service(self, self.user, self.store, self.pipeline, hooks=hooks)
        yield wait_for(lambda: not hooks.armed, what="first IDLE")
        # The wake-up leaves IDLE and runs a second sync at once (not after
        # the IDLE restart, minutes later).
        yield wait_for(
            lambda: svc.sync_count >= 2 and svc.state == S.IDLING,
            timeout=5,
            what="second sync after the wake-up",
        )

    @defer.inlineCallbacks
    def test_stop_before_continuation_closes_cleanly_and_fast(self):
        stopped: list[Any] = []

        def stop() -> None:
            started = reactor.seconds()
            d = svc.stopService()
            d.addCallback(lambda _: stopped.append(reactor.seconds() - started))

        hooks = _CallOnIdling(stop)
        svc = start_folder_service(self, self.user, self.store, self.pipeline, hooks=hooks)
        yield wait_for(lambda: bool(stopped), timeout=15, what="service stopped")
        self.assertEqual(svc.state, S.STOPPED)
        # Not the shutdown timeout (10 s) followed by an abort.
        self.assertLess(stopped[0], 2.0)


def _proc_stat(pid: int) -> Optional[tuple[int, str]]:
    """``(ppid, starttime)`` of a process, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    """``{pid: starttime}`` of every process below ``root``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(name), stat[1]))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            out[pid] = started
            todo.append(pid)
    return out


def cut_sessions_and(dovecot: Any, action: Callable[[], None]) -> int:
    """Run ``action`` (``dovecot.restart`` or ``dovecot.stop_main``) so that
    the running sessions die with the old master, as in a crash or a reboot.

    Dovecot 2.3 lets established sessions (login TLS proxy and imap process)
    outlive a master that got SIGTERM, even with ``shutdown_clients = yes``:
    measured on the rig, a client idling across ``restart()`` keeps its
    connection and still gets EXISTS. So the processes the old master had
    started (found by parent pid before, checked by start time after, so a
    reused pid is never touched) are terminated by pid.

    :return: how many leftover processes were terminated.
    """
    master = dovecot._main.proc  # the rig's Popen of the main instance
    before = _descendants(master.pid) if master is not None else {}
    action()
    killed = 0
    for pid, started in before.items():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                killed += 1
    return killed


class RestartCatchUpTests(TestCase):
    """Dovecot goes away under an idling folder and comes back: the engine
    reconnects with back-off and catches up on mail that arrived meanwhile,
    each message exactly once."""

    timeout = 60

    def setUp(self) -> None:
        self.dovecot = get_dovecot()
        self.addCleanup(self._ensure_running)
        self.user = self.dovecot.add_user(unique_user("restart"))
        self.store, self.provider, self.pipeline = memory_backend(reactor)
        self.counter = ByteCounter()

    def _ensure_running(self) -> None:
        if not self.dovecot.running:
            self.dovecot.restart()

    @defer.inlineCallbacks
    def _idle_with_one_message(self):  # type: ignore[no-untyped-def]
        svc = start_folder_service(self, self.user, self.store, self.pipeline, counter=self.counter)
        yield wait_for(lambda: svc.state == S.IDLING, what="first IDLE")
        before = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("before"))
        yield wait_for(lambda: before in self.pipeline.uids, what="message before the restart")
        yield wait_for(lambda: svc.state == S.IDLING, what="IDLE again")
        return svc, before

    @defer.inlineCallbacks
    def test_restart_while_idling(self):
        svc, before = yield self._idle_with_one_message()
        started = reactor.seconds()
        # Blocks: the reactor sees the loss afterwards.
        cut_sessions_and(self.dovecot, self.dovecot.restart)
        after = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("after"))
        yield wait_for(
            lambda: after in self.pipeline.uids and svc.state == S.IDLING,
            timeout=15,
            what="catch-up after the restart",
        )
        log.info("restart: caught up {s:.2f}s after the restart", s=reactor.seconds() - started)
        self.assertEqual(self.pipeline.uids, [before, after])
        self.assertEqual(read_cursor(self.store, self.provider).last_uid, str(after))
        self.assertIn(S.BACKOFF, [t.new for t in svc.history])
        self.assertEqual(self.counter.connections, 2)

    @defer.inlineCallbacks
    def test_plain_restart_while_idling(self):
        """``restart()`` as it is: whether the session survives it (Dovecot
        2.3 usually keeps it) or not, the message is handed off once."""
        svc, before = yield self._idle_with_one_message()
        self.dovecot.restart()
        after = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("after"))
        yield wait_for(
            lambda: after in self.pipeline.uids and svc.state == S.IDLING,
            timeout=15,
            what="catch-up after the restart",
        )
        self.assertEqual(self.pipeline.uids, [before, after])

    @defer.inlineCallbacks
    def test_down_for_a_while_then_back(self):
        svc, before = yield self._idle_with_one_message()
        cut_sessions_and(self.dovecot, self.dovecot.stop_main)
        # Refused connections, retried with back-off (base 0.2 s, max 1 s).
        calls = svc.factory.connect_calls
        yield wait_for(
            lambda: svc.factory.connect_calls >= calls + 3 and svc.state == S.BACKOFF,
            timeout=15,
            what="three retries",
        )
        self.assertEqual(svc.state, S.BACKOFF)
        self.assertIn("ConnectionRefused", svc.last_error or "")
        self.assertEqual(self.counter.connections, 1)  # none got as far as TCP
        self.dovecot.restart()
        after = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", mail.make_message("after"))
        yield wait_for(
            lambda: after in self.pipeline.uids and svc.state == S.IDLING,
            timeout=15,
            what="catch-up after the outage",
        )
        self.assertEqual(self.pipeline.uids, [before, after])
        self.assertEqual(self.counter.connections, 2)

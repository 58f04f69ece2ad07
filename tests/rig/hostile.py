"""A hostile IMAP server for the adversarial harness (issue 11).

:class:`HostileServer` listens on loopback with implicit TLS (the rig CA's
``localhost`` certificate) and plays a small, well-behaved IMAP server, one
mailbox ``INBOX`` holding :data:`MESSAGES`, until the scenario it was started
with makes it misbehave at one point of the session. Scenarios are named by
what a real tenant's server could do to the service:

- ``brackets``: an EXAMINE answer with an 80,000-``[`` line (a quadratic tokenizer);
- ``list_delimiters``: 2,000 LIST entries, each with another delimiter;
- ``search_flood``: a ``* SEARCH`` line of 4 MiB;
- ``deep_bodystructure``: a BODYSTRUCTURE nested 3,000 deep;
- ``fetch_no``: ``NO`` to every FETCH that names UID 2 (a poison message);
- ``slow_loris``: the greeting one byte per second;
- ``endless_literal``: a FETCH literal announced as 1 GB, streamed slowly without end;
- ``greeting_flood``: untagged ``* OK`` lines without end from the start (the
  first is taken as the greeting; the flood goes on through the session);
- ``silent``: accepts the connection and never says anything.

It runs on the reactor of the process that starts it (the test's); its output
is paced so it never holds that reactor for long.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import protocol, ssl, task
from twisted.protocols.basic import LineReceiver

from tests.rig.tls import TLSFiles

SCENARIOS = (
    "brackets",
    "list_delimiters",
    "search_flood",
    "deep_bodystructure",
    "fetch_no",
    "slow_loris",
    "endless_literal",
    "greeting_flood",
    "silent",
)

CAPS = b"IMAP4rev1 IDLE LITERAL+ AUTH=PLAIN"


def _message(uid: int) -> bytes:
    return (
        f"From: Hostile <hostile@example.net>\r\nTo: help@example.com\r\n"
        f"Subject: hostile {uid}\r\nMessage-ID: <hostile-{uid}@example.net>\r\n"
        f"Date: Sat, 10 Jan 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello {uid}.\r\n"
    ).encode()


#: UID -> the message (three small mails).
MESSAGES = {uid: _message(uid) for uid in (1, 2, 3)}


def _header_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", body


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _uids_of(fetch_args: bytes) -> list[int]:
    """The UIDs named by a ``UID FETCH <set> ...`` argument list."""
    uid_set = fetch_args.split(b" ", 1)[0]
    out: list[int] = []
    for part in uid_set.split(b","):
        lo, _, hi = part.partition(b":")
        first = int(lo)
        last = max(MESSAGES) if hi == b"*" else int(hi or lo)
        out.extend(u for u in range(first, last + 1) if u in MESSAGES)
    return out


class HostileIMAP(LineReceiver):
    """One session; ``self.factory.scenario`` says where it misbehaves."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20
    factory: HostileFactory

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.sessions += 1
        self.factory.live.add(self)
        self._loops: list[task.LoopingCall] = []
        self._authenticating: Optional[bytes] = None
        self._idling: Optional[bytes] = None
        scenario = self.factory.scenario
        if scenario == "silent":
            return
        greeting = b"* OK [CAPABILITY " + CAPS + b"] hostile ready\r\n"
        if scenario == "slow_loris":
            self._drip(greeting, interval=1.0)
        elif scenario == "greeting_flood":
            self._repeat(b"* OK still not ready, have some more\r\n" * 200, interval=0.01)
        else:
            self.transport.write(greeting)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.live.discard(self)
        for loop in self._loops:
            if loop.running:
                loop.stop()

    # -- pacing helpers --------------------------------------------------------

    def _start(self, f: Any, interval: float) -> None:
        loop = task.LoopingCall(f)
        loop.clock = self.factory.reactor
        self._loops.append(loop)
        loop.start(interval, now=True).addErrback(lambda _: None)

    def _drip(self, data: bytes, interval: float) -> None:
        remaining = [data]

        def one() -> None:
            if remaining[0]:
                self.transport.write(remaining[0][:1])
                remaining[0] = remaining[0][1:]

        self._start(one, interval)

    def _repeat(self, chunk: bytes, interval: float) -> None:
        self._start(lambda: self.transport.write(chunk), interval)

    # -- commands ------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self._authenticating is not None:
            tag, self._authenticating = self._authenticating, None
            self.transport.write(tag + b" OK [CAPABILITY " + CAPS + b"] logged in\r\n")
            return
        if self._idling is not None:
            if line.strip().upper() == b"DONE":
                tag, self._idling = self._idling, None
                self.transport.write(tag + b" OK idle done\r\n")
            return
        tag, _, rest = line.partition(b" ")
        command, _, args = rest.partition(b" ")
        name = command.upper()
        if name == b"UID":
            sub, _, args = args.partition(b" ")
            name = b"UID " + sub.upper()
        handler = getattr(self, "do_" + name.decode("ascii", "replace").replace(" ", "_"), None)
        if handler is None:
            self.transport.write(tag + b" BAD unknown command\r\n")
            return
        handler(tag, args)

    def do_CAPABILITY(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        self.transport.write(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")

    def do_NOOP(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        self.transport.write(tag + b" OK noop\r\n")

    def do_LOGOUT(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        self.transport.write(b"* BYE bye\r\n" + tag + b" OK logout\r\n")
        self.transport.loseConnection()

    def do_LOGIN(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        self.transport.write(tag + b" OK [CAPABILITY " + CAPS + b"] logged in\r\n")

    def do_AUTHENTICATE(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        if b" " in args.strip():
            self.transport.write(tag + b" OK [CAPABILITY " + CAPS + b"] logged in\r\n")
        else:
            self._authenticating = tag
            self.transport.write(b"+ \r\n")

    def do_LIST(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        lines = [b'* LIST (\\HasNoChildren) "/" INBOX\r\n']
        if self.factory.scenario == "list_delimiters":
            for i in range(2000):
                delimiter = bytes([33 + i % 90]).replace(b'"', b"#").replace(b"\\", b"%")
                lines.append(b'* LIST () "%s" "f%d%sx%d"\r\n' % (delimiter, i, delimiter, i))
        self.transport.write(b"".join(lines) + tag + b" OK list\r\n")

    def do_EXAMINE(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        out = [b"* %d EXISTS\r\n" % len(MESSAGES), b"* OK [UIDVALIDITY 7] ok\r\n",
               b"* OK [UIDNEXT %d] ok\r\n" % (max(MESSAGES) + 1)]
        if self.factory.scenario == "brackets":
            out.append(b"* OK " + b"[" * 80_000 + b"\r\n")
        self.transport.write(b"".join(out) + tag + b" OK [READ-ONLY] examined\r\n")

    do_SELECT = do_EXAMINE  # noqa: N815

    def do_UID_SEARCH(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        if self.factory.scenario == "search_flood":
            numbers = b" ".join(b"%d" % n for n in range(1, 600_000))  # about 4 MiB
            self.transport.write(b"* SEARCH " + numbers + b"\r\n" + tag + b" OK search\r\n")
            return
        uids = b" ".join(b"%d" % u for u in sorted(MESSAGES))
        self.transport.write(b"* SEARCH " + uids + b"\r\n" + tag + b" OK search\r\n")

    def do_UID_FETCH(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        uids = _uids_of(args)
        scenario = self.factory.scenario
        if scenario == "fetch_no" and 2 in uids:
            self.transport.write(tag + b" NO [SERVERBUG] cannot fetch message 2\r\n")
            return
        if scenario == "endless_literal":
            self.transport.write(b"* 1 FETCH (UID 1 BODY[] {1000000000}\r\n")
            self._repeat(b"x" * 65536, interval=0.05)
            return
        upper = args.upper()
        out = []
        for seq, uid in enumerate(uids, start=1):
            raw = MESSAGES[uid]
            head, body = _header_and_body(raw)
            items = [b"UID %d" % uid]
            if b"RFC822.SIZE" in upper:
                items.append(b"RFC822.SIZE %d" % len(raw))
            if b"INTERNALDATE" in upper:
                items.append(b'INTERNALDATE "10-Jan-2026 12:00:00 +0000"')
            if b"BODYSTRUCTURE" in upper:
                items.append(b"BODYSTRUCTURE " + self._structure(len(body)))
            if b"BODY.PEEK[HEADER]" in upper:
                items.append(b"BODY[HEADER] " + _literal(head))
            if b"BODY.PEEK[1]" in upper:
                items.append(b"BODY[1] " + _literal(body))
            if b"BODY.PEEK[TEXT]" in upper:
                items.append(b"BODY[TEXT] " + _literal(body))
            if b"BODY.PEEK[]" in upper:
                items.append(b"BODY[] " + _literal(raw))
            out.append(b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n")
        self.transport.write(b"".join(out) + tag + b" OK fetch\r\n")

    def _structure(self, body_size: int) -> bytes:
        leaf = b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" %d 1 NIL NIL NIL NIL)' % (
            body_size
        )
        if self.factory.scenario != "deep_bodystructure":
            return leaf
        depth = 3000
        return b"(" * depth + leaf + b' "MIXED")' * depth

    def do_IDLE(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        self._idling = tag
        self.transport.write(b"+ idling\r\n")


class HostileFactory(protocol.ServerFactory):
    protocol = HostileIMAP

    def __init__(self, scenario: str, reactor: Any) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        self.scenario = scenario
        self.reactor = reactor
        self.sessions = 0
        self.live: set[HostileIMAP] = set()


class HostileServer:
    """One scenario listening on ``127.0.0.1:<port>`` with implicit TLS."""

    def __init__(self, scenario: str, tls: TLSFiles, reactor: Any) -> None:
        self.factory = HostileFactory(scenario, reactor)
        with open(tls.server_cert, "rb") as f:
            cert = f.read()
        with open(tls.server_key, "rb") as f:
            key = f.read()
        options = ssl.PrivateCertificate.loadPEM(key + cert).options()
        self.port = reactor.listenSSL(0, self.factory, options, interface="127.0.0.1")

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    @property
    def sessions(self) -> int:
        return self.factory.sessions

    def stop(self) -> Any:
        """Stop listening and cut the sessions still open."""
        for session in list(self.factory.live):
            session.transport.abortConnection()
        return self.port.stopListening()

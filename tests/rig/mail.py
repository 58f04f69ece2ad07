"""Put mail into (and look at) the rig's Dovecot with the stdlib ``imaplib``.

These helpers block. They are meant for a test's set-up and for checks made
after the service under test has done its work, never for code running on the
reactor while that code is expected to make progress, since the reactor
thread is stuck while they run. (Dovecot and the introspection endpoint run
elsewhere, so the helpers themselves never deadlock.)

Every helper opens its own implicit-TLS connection, verified against the rig
CA, and logs out at the end.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import ssl
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tests.rig.dovecot import DEFAULT_PASSWORD, Dovecot, get_dovecot

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]")


class MailError(Exception):
    """An IMAP command made by a helper did not succeed."""


def encode_mailbox(name: str) -> str:
    """
    Encode a folder name in IMAP's modified UTF-7 (RFC 3501 section 5.1.3)
    and quote it, ready to put in a command.
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    encoded = "".join(out)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(result: tuple[str, Any], what: str) -> Any:
    typ, data = result
    if typ != "OK":
        raise MailError(f"{what} failed: {typ} {data!r}")
    return data


@contextlib.contextmanager
def connect(
    user: str, password: str = DEFAULT_PASSWORD, dovecot: Dovecot | None = None
) -> Iterator[imaplib.IMAP4_SSL]:
    """
    A logged-in ``imaplib.IMAP4_SSL`` to the rig's implicit-TLS port,
    verifying the certificate for ``localhost``. Logs out on exit.
    """
    dovecot = dovecot or get_dovecot()
    ctx = ssl.create_default_context(cafile=dovecot.ca_file)
    conn = imaplib.IMAP4_SSL("localhost", dovecot.ports.imaps, ssl_context=ctx, timeout=30)
    try:
        _check(conn.login(user, password), "LOGIN")
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


def _uids_from_appenduid(data: Sequence[object]) -> tuple[int, list[int]]:
    for item in data:
        if isinstance(item, bytes):
            match = _APPENDUID.search(item)
            if match:
                return int(match.group(1)), _expand_uid_set(match.group(2).decode())
    raise MailError(f"no APPENDUID in {data!r}")


def _expand_uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        uids.extend(range(int(lo), int(hi or lo) + 1))
    return uids


def append(
    user: str,
    password: str,
    folder: str,
    raw: bytes,
    flags: str | None = None,
    dovecot: Dovecot | None = None,
    internaldate: Any = None,
) -> int:
    """
    APPEND one message.

    :param flags: e.g. ``r"(\\Seen)"``; ``None`` appends it unread.
    :param internaldate: the APPEND date argument (an aware ``datetime``),
        the message's INTERNALDATE; ``None``: the server's now.
    :return: the UID the server gave it.
    """
    with connect(user, password, dovecot) as conn:
        data = _check(conn.append(encode_mailbox(folder), flags, internaldate, raw), "APPEND")
        return _uids_from_appenduid(data)[1][0]


def bulk_append(
    user: str,
    password: str,
    folder: str,
    messages: Iterable[bytes],
    batch: int = 500,
    dovecot: Dovecot | None = None,
) -> list[int]:
    """
    APPEND many messages quickly: one MULTIAPPEND command (RFC 3502) per
    ``batch`` messages, with non-synchronising literals (LITERAL+), so a
    batch costs one round trip.

    :return: the UIDs, in the order of ``messages``.
    """
    mailbox = encode_mailbox(folder).encode("utf-8")
    uids: list[int] = []
    with connect(user, password, dovecot) as conn:
        chunk: list[bytes] = []
        counter = 0

        def send(items: list[bytes]) -> None:
            nonlocal counter
            counter += 1
            tag = b"BULK%d" % counter
            parts = [tag + b" APPEND " + mailbox]
            for raw in items:
                parts.append(b" {%d+}\r\n" % len(raw))
                parts.append(raw)
            parts.append(b"\r\n")
            conn.send(b"".join(parts))
            while True:
                line = conn.readline()
                if not line:
                    raise MailError("connection closed during bulk APPEND")
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise MailError(f"bulk APPEND failed: {line!r}")
                    got = _uids_from_appenduid([line])[1]
                    if len(got) != len(items):
                        raise MailError(f"APPENDUID names {len(got)} UIDs for {len(items)}")
                    uids.extend(got)
                    return

        for raw in messages:
            chunk.append(raw)
            if len(chunk) >= batch:
                send(chunk)
                chunk = []
        if chunk:
            send(chunk)
    return uids


def create_folder(
    user: str, password: str, folder: str, dovecot: Dovecot | None = None
) -> None:
    """CREATE ``folder`` (an existing folder is fine)."""
    with connect(user, password, dovecot) as conn:
        typ, data = conn.create(encode_mailbox(folder))
        if typ != "OK" and b"ALREADYEXISTS" not in b"".join(
            d for d in data if isinstance(d, bytes)
        ):
            raise MailError(f"CREATE failed: {typ} {data!r}")


def delete_folder(
    user: str, password: str, folder: str, dovecot: Dovecot | None = None
) -> None:
    """DELETE ``folder``."""
    with connect(user, password, dovecot) as conn:
        _check(conn.delete(encode_mailbox(folder)), "DELETE")


def rename_folder(
    user: str, password: str, old: str, new: str, dovecot: Dovecot | None = None
) -> None:
    """RENAME ``old`` to ``new``."""
    with connect(user, password, dovecot) as conn:
        _check(conn.rename(encode_mailbox(old), encode_mailbox(new)), "RENAME")


def list_folders(user: str, password: str, dovecot: Dovecot | None = None) -> list[bytes]:
    """:return: the raw ``LIST "" "*"`` lines."""
    with connect(user, password, dovecot) as conn:
        return [d for d in _check(conn.list(), "LIST") if isinstance(d, bytes)]


def status(
    user: str, password: str, folder: str, dovecot: Dovecot | None = None
) -> dict[str, int]:
    """:return: ``MESSAGES``, ``UIDNEXT``, ``UIDVALIDITY``, ``UNSEEN`` of ``folder``."""
    with connect(user, password, dovecot) as conn:
        data = _check(
            conn.status(encode_mailbox(folder), "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"), "STATUS"
        )
    text = b" ".join(d for d in data if isinstance(d, bytes)).decode()
    inner = text[text.rindex("(") + 1 : text.rindex(")")].split()
    return {inner[i]: int(inner[i + 1]) for i in range(0, len(inner), 2)}


def flags(
    user: str, password: str, folder: str, uid: int, dovecot: Dovecot | None = None
) -> set[str]:
    """
    The flags of one message, read without changing them (EXAMINE).

    :return: e.g. ``{"\\\\Seen"}``; an empty set for an unread message.
    :raises MailError: if there is no message with that UID.
    """
    with connect(user, password, dovecot) as conn:
        _check(conn.select(encode_mailbox(folder), readonly=True), "EXAMINE")
        data = _check(conn.uid("FETCH", str(uid), "(FLAGS)"), "UID FETCH")
    for item in data:
        if isinstance(item, bytes):
            match = re.search(rb"FLAGS \(([^)]*)\)", item)
            if match and re.search(rb"UID %d\b" % uid, item):
                # \\Recent depends on the session, not the message: leave it out.
                return {f.decode() for f in match.group(1).split()} - {"\\Recent"}
    raise MailError(f"no message with UID {uid} in {folder!r}")


def expunge(
    user: str, password: str, folder: str, uids: Iterable[int], dovecot: Dovecot | None = None
) -> None:
    """Delete the messages with these UIDs for good."""
    uid_set = ",".join(str(u) for u in uids)
    if not uid_set:
        return
    with connect(user, password, dovecot) as conn:
        _check(conn.select(encode_mailbox(folder)), "SELECT")
        _check(conn.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE")
        _check(conn.expunge(), "EXPUNGE")


def set_uid_validity(user: str, folder: str, value: int, dovecot: Dovecot | None = None) -> None:
    """Change ``folder``'s UIDVALIDITY server-side (``doveadm mailbox update``)."""
    dovecot = dovecot or get_dovecot()
    result = dovecot.doveadm(
        "mailbox", "update", "-u", user, "--uid-validity", str(value), folder
    )
    if result.returncode != 0:
        raise MailError(f"doveadm mailbox update failed: {result.stderr.decode(errors='replace')}")


def kick(user: str, dovecot: Dovecot | None = None) -> bool:
    """Cut all of ``user``'s connections from the server side (``doveadm kick``)."""
    return (dovecot or get_dovecot()).kick(user)


def make_message(
    subject: str = "Test message",
    sender: str = "Alice Example <alice@example.org>",
    to: str = "support@example.com",
    body: str = "Hello.\r\n",
    message_id: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A small, valid RFC 5322 message with CRLF line ends."""
    headers = [
        ("From", sender),
        ("To", to),
        ("Subject", subject),
        ("Date", "Sat, 10 Jan 2026 12:00:00 +0000"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]
    if message_id is not None:
        headers.append(("Message-ID", message_id))
    headers.extend(extra_headers)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + "\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")).encode("utf-8")

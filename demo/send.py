"""Send one demo message: IMAP APPEND to the demo mailbox of a running ``demo/run.py``.

``python demo/send.py [--subject S] [--from ADDR]`` reads where the demo's
Dovecot listens (``dovecot.json`` in the demo's state directory, written by
``demo/run.py`` while it runs), logs in over TLS trusting only the demo's own
CA, and appends one message to ``INBOX``. The service then sees it arrive
(IDLE) and ``demo/run.py`` prints the event.

Standard library only, so any Python 3.11 runs it.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import imaplib
import json
import os
import ssl
import sys
import uuid
from email.message import EmailMessage
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where ``demo/run.py`` keeps its files (override: ``DEMO_STATE_DIR``).
DEFAULT_STATE_DIR = os.path.join(HERE, ".state")
INFO_FILE = "dovecot.json"


class SendError(Exception):
    """The demo message could not be appended (the message says why)."""


def state_dir() -> str:
    """:return: the demo's state directory (``DEMO_STATE_DIR`` or ``demo/.state``)."""
    return os.environ.get("DEMO_STATE_DIR") or DEFAULT_STATE_DIR


def load_info(directory: str) -> dict[str, Any]:
    """
    Read what ``demo/run.py`` wrote about its Dovecot.

    :raise SendError: when no demo is running (no info file).
    """
    path = os.path.join(directory, INFO_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            info: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise SendError(
            f"no running demo found ({path} is missing): start it with `make run`"
        ) from None
    return info


def build_message(info: dict[str, Any], subject: str, sender: str) -> EmailMessage:
    """:return: a small text message to the demo user with a fresh Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = info["user"]
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
    msg["Message-ID"] = email.utils.make_msgid(domain="demo.imapsvc.invalid")
    msg.set_content(
        "Hello from the imapsvc quick start.\n\n"
        "This message was appended over IMAP by demo/send.py.\n"
    )
    return msg


def send_message(
    info: dict[str, Any], subject: str, sender: str = "Demo Sender <sender@example.org>"
) -> EmailMessage:
    """
    APPEND one message to the demo user's INBOX over implicit TLS.

    :return: the message as appended (for its Message-ID and Subject).
    :raise SendError: on a connection, TLS or IMAP failure (no password in the text).
    """
    msg = build_message(info, subject, sender)
    context = ssl.create_default_context(cafile=info["ca_file"])
    try:
        with imaplib.IMAP4_SSL(
            info["host"], int(info["imaps"]), ssl_context=context, timeout=15
        ) as imap:
            imap.login(info["user"], info["password"])
            typ, data = imap.append("INBOX", "", None, msg.as_bytes())
            if typ != "OK":
                raise SendError(f"APPEND was refused: {data!r}")
            imap.logout()
    except (OSError, imaplib.IMAP4.error) as e:
        raise SendError(
            f"could not append to {info['user']} at {info['host']}:{info['imaps']}: "
            f"{type(e).__name__}: {e}"
        ) from None
    return msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", default=None, help="subject (default: a numbered demo subject)")
    ap.add_argument("--from", dest="sender", default="Demo Sender <sender@example.org>",
                    help="From header")
    args = ap.parse_args(argv)
    subject = args.subject or f"Demo message {uuid.uuid4().hex[:6]}"
    try:
        info = load_info(state_dir())
        msg = send_message(info, subject, args.sender)
    except SendError as e:
        print(f"send: {e}", file=sys.stderr)
        return 1
    print(f"appended {msg['Message-ID']} ({subject!r}) to {info['user']} INBOX")
    return 0


if __name__ == "__main__":
    sys.exit(main())

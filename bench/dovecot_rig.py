"""Keep a private Dovecot (the test rig's) running for benchmark sessions.

``python -m bench.dovecot_rig --info /tmp/bench-dovecot.json`` starts the
rig's Dovecot (``tests/rig/dovecot.py``), adds the bench account, writes the
ports and the CA file as JSON to ``--info`` and then waits until it gets
SIGTERM/SIGINT; Dovecot stops with it. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from tests.rig.dovecot import Dovecot, get_dovecot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--info", required=True, help="write host/ports/CA file here (JSON)")
    ap.add_argument("--user", default="bench@example.com")
    ap.add_argument("--password", default="benchpw")
    ap.add_argument(
        "--imap-client-limit", type=int, default=0,
        help="clients per imap process (service_count = 0); 25 for thousands of idlers",
    )
    args = ap.parse_args(argv)

    if args.imap_client_limit:
        dovecot = Dovecot(imap_client_limit=args.imap_client_limit)
        dovecot.start(wrong_certificate=False)
    else:
        dovecot = get_dovecot()
    dovecot.add_user(args.user, args.password)
    info = {
        "host": "127.0.0.1",
        "imaps": dovecot.ports.imaps,
        "imap": dovecot.ports.imap,
        "ca_file": dovecot.ca_file,
        "conf": dovecot.conf_path,
        "user": args.user,
    }
    with open(args.info, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.write("\n")
    print(json.dumps(info), file=sys.stderr, flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Event.wait with a timeout keeps the main thread responsive to signals.
    while not stop.wait(3600):
        pass
    dovecot.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

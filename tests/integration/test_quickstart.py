"""The README quick start (``make run`` / ``make smoke``), run as a user would.

``bash demo/run.sh`` runs as a subprocess with ``DEMO_SKIP_INSTALL=1`` and the
venv of the interpreter running the tests (in CI ``.ci/run`` built ``.venv``),
in a session of its own so that a Ctrl-C can be sent to its whole process
group as a terminal would. It starts the rig's Dovecot, so it needs root and
Dovecot like the other integration tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import uuid
from typing import Any, Optional, cast

from twisted.internet import defer, error, protocol
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from tests.rig.dovecot import DOVECOT, skip_or_fail
from tests.rig.service import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.dirname(os.path.dirname(sys.executable))

#: Runs ARGV in a new session (its pid is the process group id): the test can
#: then signal the demo's whole group without signalling itself.
_SETSID_EXEC = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"

SMOKE_BUDGET_S = 60

# The global reactor as a plain object: its stubs declare spawnProcess without `self`.
reactor = cast(Any, _reactor)


class _Demo(protocol.ProcessProtocol):
    """Collect the demo's output; ``ended`` fires with its exit status (or -signal)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.status: Optional[int] = None

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's naming
        self.output += data

    errReceived = outReceived  # noqa: N815

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        value = reason.value
        if isinstance(value, error.ProcessDone):
            self.status = 0
        elif value.exitCode is not None:
            self.status = value.exitCode
        else:
            self.status = -int(value.signal)
        self.ended.callback(self.status)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def running(self) -> bool:
        return self.status is None


def _processes_of(markers: list[str]) -> list[str]:
    """
    Live processes whose command line mentions, or whose working directory
    lies in, one of ``markers`` (the demo's state folder, Dovecot's folder).
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:  # gone meanwhile, or a zombie
            continue
        if any(m in cmd or cwd == m or cwd.startswith(m + "/") for m in markers):
            found.append(f"{name}: {cmd} (cwd {cwd})")
    return found


class QuickStartTests(TestCase):
    """``demo/run.sh``: the smoke mode and a Ctrl-C stop, with nothing left behind."""

    timeout = 180

    def setUp(self) -> None:
        if not os.path.exists(DOVECOT):
            skip_or_fail(f"{DOVECOT} is not installed (apt-get install dovecot-imapd)")
        if os.geteuid() != 0:
            skip_or_fail("the demo's Dovecot needs root (it runs mail processes as vmail)")
        if not os.path.exists(os.path.join(VENV, "bin", "twistd")):
            skip_or_fail(f"no twistd in {VENV} (the venv running the tests)")
        self.state = os.path.abspath(self.mktemp())

    def start_demo(self, **extra: str) -> tuple[_Demo, int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
        env.update(
            DEMO_SKIP_INSTALL="1",
            DEMO_VENV=VENV,
            DEMO_STATE_DIR=self.state,
            # The user's secrets and servers must not reach the demo either way.
            DATABASE_URL="postgresql://nobody@192.0.2.1/never",
            REDIS_URL="redis://192.0.2.1:6379/0",
        )
        env.update(extra)
        demo = _Demo()
        args = [sys.executable, "-c", _SETSID_EXEC, "bash", "demo/run.sh"]
        transport = reactor.spawnProcess(demo, sys.executable, args, env=env, path=REPO)
        pgid = int(transport.pid)

        @defer.inlineCallbacks
        def kill_leftovers():
            if demo.running:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                yield demo.ended

        self.addCleanup(kill_leftovers)
        return demo, pgid

    def dovecot_root(self, demo: _Demo) -> str:
        match = re.search(r"files in (\S+)\)", demo.text)
        self.assertIsNotNone(match, demo.text)
        assert match is not None
        return match.group(1)

    def events(self) -> list[dict[str, Any]]:
        path = os.path.join(self.state, "events.jsonl")
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def assert_nothing_left(self, demo: _Demo, root: str) -> defer.Deferred:
        leftovers = wait_for(
            lambda: not _processes_of([self.state, root]), 20, "the demo's processes to exit"
        )

        def report(failure):
            failure.trap(AssertionError)
            self.fail(
                f"processes left behind: {_processes_of([self.state, root])}\n{demo.text}"
            )

        leftovers.addErrback(report)
        leftovers.addCallback(
            lambda _: self.assertFalse(os.path.exists(root), f"{root} was not removed")
        )
        return leftovers

    @defer.inlineCallbacks
    def test_smoke(self):
        """
        ``DEMO_SMOKE=1``: one message goes in over IMAP, its event is shown and
        recorded in the embedded sink's file, the run ends with 0 well inside a
        minute, and no twistd, tail or Dovecot of the demo is left.
        """
        demo, _ = self.start_demo(DEMO_SMOKE="1")
        started = reactor.seconds()
        ended = demo.ended
        ended.addTimeout(SMOKE_BUDGET_S, reactor)
        status = yield ended
        took = reactor.seconds() - started
        self.assertEqual(status, 0, demo.text)
        self.assertLess(took, SMOKE_BUDGET_S)

        match = re.search(r"subject: (imapsvc smoke [0-9a-f]{12})\n", demo.text)
        self.assertIsNotNone(match, demo.text)
        assert match is not None
        subject = match.group(1)
        self.assertIn("*** INBOUND_EMAIL_RECEIVED  event_id=", demo.text)
        self.assertIn("from:    Demo Sender <sender@example.org>", demo.text)
        self.assertIn(f"smoke: OK, the INBOUND_EMAIL_RECEIVED event for '{subject}' arrived",
                      demo.text)

        # The printed event is the one in the file: same event_id, same subject.
        entries = self.events()
        self.assertEqual(len(entries), 1, entries)
        fields = entries[0]["fields"]
        self.assertEqual(fields["event_name"], "INBOUND_EMAIL_RECEIVED")
        self.assertIn(f"event_id={fields['event_id']}", demo.text)
        payload = json.loads(fields["payload_json"])
        self.assertEqual(payload["emailData"]["subject"], subject)
        self.assertEqual(payload["emailData"]["imap"]["mailbox"], "INBOX")

        # The secret key was kept for the next run; the Dovecot info file is gone.
        with open(os.path.join(self.state, "secret_key"), encoding="utf-8") as f:
            self.assertTrue(f.read().strip())
        self.assertEqual(os.stat(os.path.join(self.state, "secret_key")).st_mode & 0o077, 0)
        self.assertFalse(os.path.exists(os.path.join(self.state, "dovecot.json")))
        # The poisoned DATABASE_URL/REDIS_URL were not used: the store is the demo's SQLite.
        self.assertTrue(os.path.exists(os.path.join(self.state, "imapsvc.sqlite3")))
        yield self.assert_nothing_left(demo, self.dovecot_root(demo))

    @defer.inlineCallbacks
    def test_ctrl_c_stops_everything(self):
        """
        The interactive run shows a message sent with ``demo/send.py``; SIGINT
        to its process group (a terminal's Ctrl-C) stops twistd, the tail and
        Dovecot, and the run exits 0 or 130.
        """
        demo, pgid = self.start_demo()
        yield wait_for(lambda: "The demo is running." in demo.text or not demo.running,
                       60, "the demo to be ready")
        self.assertTrue(demo.running, demo.text)
        root = self.dovecot_root(demo)

        running = "\n".join(_processes_of([self.state, root]))
        # The check below is meaningful only if it sees the demo's processes now.
        self.assertIn("twistd", running)
        self.assertIn("events tail", running)
        self.assertIn("dovecot", running)
        # Only the Dovecot the demo uses (the rig's wrong-certificate one is for tests).
        masters = [line for line in running.splitlines() if "dovecot -F -c" in line]
        self.assertEqual(len(masters), 1, running)
        # Sealed secrets live in the store: not readable by other local users.
        store = os.path.join(self.state, "imapsvc.sqlite3")
        self.assertEqual(os.stat(store).st_mode & 0o077, 0)

        # A second run on the same state folder refuses instead of taking over.
        second, _ = self.start_demo()
        second_status = yield second.ended
        self.assertEqual(second_status, 1, second.text)
        self.assertIn("another demo is running", second.text)
        self.assertTrue(demo.running, demo.text)
        self.assertTrue(os.path.exists(store))

        # cli.env points the admin CLI at this demo: `status` answers.
        exports = {}
        with open(os.path.join(self.state, "cli.env"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("export "):
                    name, _, value = line[len("export "):].strip().partition("=")
                    exports[name] = shlex.split(value)[0]
        cli = _Demo()
        reactor.spawnProcess(
            cli, sys.executable, [sys.executable, "-m", "imapsvc", "status"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("IMAP", "PORT"))},
                 **exports},
            path=self.state,
        )
        self.assertEqual((yield cli.ended), 0, cli.text)
        self.assertIn("INBOX", cli.text)

        # demo/send.py, as `make send` runs it.
        subject = f"ctrl-c test {uuid.uuid4().hex[:8]}"
        send = _Demo()
        reactor.spawnProcess(
            send,
            sys.executable,
            [sys.executable, "demo/send.py", "--subject", subject],
            env={**os.environ, "DEMO_STATE_DIR": self.state},
            path=REPO,
        )
        sent = yield send.ended
        self.assertEqual(sent, 0, send.text)
        self.assertIn("appended <", send.text)
        yield wait_for(lambda: f"subject: {subject}\n" in demo.text, 30,
                       "the sent message's event to be shown")

        os.killpg(pgid, signal.SIGINT)
        ended = demo.ended
        ended.addTimeout(60, reactor)
        status = yield ended
        self.assertIn(status, (0, 130), demo.text)
        self.assertIn("==> stopped", demo.text)
        yield self.assert_nothing_left(demo, root)

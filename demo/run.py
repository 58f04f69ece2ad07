"""The quick-start demo: a private Dovecot, the service on its embedded default, live events.

Started by ``demo/run.sh`` (``make run``) with the venv's Python, after the
installation. In order, it

1. gets ``IMAPSVC_SECRET_KEY`` from the environment, or from
   ``<state>/secret_key`` (made once with ``python -m imapsvc keygen``);
2. starts a private Dovecot (the test rig's, ``tests/rig/dovecot.py``: loopback
   only, TLS with a throwaway CA, in a temporary directory) with one demo user,
   and writes where it listens to ``<state>/dovecot.json`` for ``demo/send.py``;
3. adds the demo provider to a fresh SQLite store through the admin CLI
   (``provider add ... --password-stdin``);
4. follows the embedded sink's JSON Lines file with
   ``python -m imapsvc events tail --follow`` and prints each event;
5. runs ``twistd -n imapsvc`` (log in ``<state>/twistd.log``) with
   ``IMAP_TLS_CA_FILE`` set to the demo CA, until Ctrl-C or SIGTERM.

``<state>`` is ``demo/.state`` (``DEMO_STATE_DIR``). ``DEMO_SMOKE=1`` sends one
message, waits (``DEMO_SMOKE_TIMEOUT``, 30 s) until its event is printed,
stops everything and exits 0, or 1 with the reason. ``DEMO_VERBOSE=1`` shows
the service's log on the terminal instead of writing it to the file.

Whatever happens, twistd, the tail and Dovecot are stopped on the way out;
each child also gets SIGTERM from the kernel if this process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import IO, Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from demo.send import INFO_FILE, SendError, send_message, state_dir  # noqa: E402

DEMO_USER = "demo@example.com"
EVENT_NAME = "INBOUND_EMAIL_RECEIVED"
#: Shell exports for the admin CLI, in the state folder.
CLI_ENV = "cli.env"
#: Settings a user's shell may carry that would point the demo somewhere real.
FOREIGN_SETTINGS = ("DATABASE_URL", "REDIS_URL", "IMAPSVC_SECRETS_DIR", "IMAP_TLS_INSECURE",
                    "IMAPSVC_TENANTS", "IMAP_EVENT_STREAM")


class DemoError(Exception):
    """The demo could not start or did not see its event (the message says why)."""


class Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM: stop everything cleanly."""


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _die_with_parent() -> Optional[Callable[[], None]]:
    """A ``preexec_fn``: the kernel sends SIGTERM to the child when we die (Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _tail_of(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)\n"


def format_event(entry: dict[str, Any]) -> str:
    """
    One stream entry (as ``events tail`` prints it) as a few readable lines.

    Shows the event name and id, and for a received message its From, Subject
    and where it was found; never the body.
    """
    fields = entry.get("fields", {})
    try:
        payload = json.loads(fields.get("payload_json") or "{}")
    except ValueError:
        payload = {}
    data = payload.get("emailData") or {}
    sender = data.get("from") or {}
    sender_text = sender.get("email", "")
    if sender.get("name"):
        sender_text = f"{sender['name']} <{sender_text}>"
    imap = data.get("imap") or {}
    lines = [
        f"*** {fields.get('event_name', '?')}  event_id={fields.get('event_id', '?')}"
        f"  stream id {entry.get('id', '?')}",
    ]
    if data:
        lines += [
            f"    from:    {sender_text}",
            f"    subject: {data.get('subject', '')}",
            f"    message: {data.get('id', '')}  ({imap.get('mailbox', '?')}"
            f" uid {imap.get('uid', '?')})",
        ]
    elif payload:
        lines.append(f"    payload: {json.dumps(payload, sort_keys=True)}")
    return "\n".join(lines)


class EventPrinter:
    """
    Read ``events tail --follow`` output on a thread, print each event, and
    remember the subjects of received messages so the smoke mode can wait for one.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._cond = threading.Condition()
        self._subjects: set[str] = set()
        self.count = 0
        self._thread = threading.Thread(target=self._run, name="demo-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for raw in self._stream:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                print(f"    (events tail: {line})", flush=True)
                continue
            print(format_event(entry), flush=True)
            fields = entry.get("fields", {})
            subject = None
            if fields.get("event_name") == EVENT_NAME:
                with contextlib.suppress(ValueError, AttributeError):
                    subject = json.loads(fields["payload_json"])["emailData"]["subject"]
            with self._cond:
                self.count += 1
                if subject is not None:
                    self._subjects.add(subject)
                self._cond.notify_all()

    def wait_for_subject(self, subject: str, timeout: float) -> bool:
        """:return: whether an event for a message with ``subject`` was printed in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while subject not in self._subjects:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True


class Demo:
    """Everything the demo starts, and how to stop it again."""

    def __init__(self, state: str, smoke: bool, verbose: bool, smoke_timeout: float) -> None:
        self.state = state
        self.smoke = smoke
        self.verbose = verbose
        self.smoke_timeout = smoke_timeout
        self.bin = os.path.dirname(sys.executable)
        self.python = sys.executable
        self.log_path = os.path.join(state, "twistd.log")
        self.sqlite_path = os.path.join(state, "imapsvc.sqlite3")
        self.events_path = os.path.join(state, "events.jsonl")
        self.dovecot: Any = None
        self.twistd: Optional[subprocess.Popen[bytes]] = None
        self.tail: Optional[subprocess.Popen[bytes]] = None
        self.printer: Optional[EventPrinter] = None
        self.env: dict[str, str] = {}
        self.port = 0
        self._lock_fd: Optional[int] = None

    # -- set-up ------------------------------------------------------------------

    def _cli(self, *args: str, stdin: Optional[str] = None) -> str:
        result = subprocess.run(
            [self.python, "-m", "imapsvc", *args],
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            env=self.env,
            cwd=self.state,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise DemoError(
                f"`python -m imapsvc {args[0]}` failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode()

    def _secret_key(self) -> str:
        if os.environ.get("IMAPSVC_SECRET_KEY"):
            say("using IMAPSVC_SECRET_KEY from the environment")
            return os.environ["IMAPSVC_SECRET_KEY"]
        path = os.path.join(self.state, "secret_key")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                key = f.read().strip()
            if key:
                say(f"using the secret key in {path}")
                return key
        key = self._cli("keygen").strip()
        _write_private(path, key + "\n")
        say(f"generated IMAPSVC_SECRET_KEY into {path} (python -m imapsvc keygen)")
        return key

    def _start_dovecot(self) -> dict[str, Any]:
        from unittest import SkipTest

        from tests.rig.dovecot import Dovecot, RigError

        say("starting a private Dovecot on 127.0.0.1 (TLS, throwaway CA)")
        try:
            self.dovecot = Dovecot()
            self.dovecot.start(wrong_certificate=False)
        except (RigError, SkipTest) as e:
            raise DemoError(f"Dovecot did not start: {e}") from None
        password = secrets.token_urlsafe(12)
        self.dovecot.add_user(DEMO_USER, password)
        info = {
            "host": "localhost",
            "imaps": self.dovecot.ports.imaps,
            "ca_file": self.dovecot.ca_file,
            "user": DEMO_USER,
            # A throwaway password of a throwaway server, so that send.py can log in.
            "password": password,
            "root": self.dovecot.root,
        }
        _write_private(os.path.join(self.state, INFO_FILE), json.dumps(info, indent=2) + "\n")
        say(f"Dovecot: imaps://localhost:{info['imaps']}  user {DEMO_USER}"
            f"  (files in {self.dovecot.root})")
        return info

    def _fresh_files(self) -> None:
        # Each run has a new Dovecot on new ports: start from an empty store and
        # event file rather than carry over a provider that points nowhere.
        for name in ("imapsvc.sqlite3", "imapsvc.sqlite3-wal", "imapsvc.sqlite3-shm",
                     "imapsvc.sqlite3-journal", "events.jsonl", "twistd.log", "twistd.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.state, name))

    def _add_provider(self, info: dict[str, Any]) -> None:
        tenant = str(uuid.uuid4())
        out = self._cli(
            "provider", "add", "--tenant", tenant, "--mailbox", DEMO_USER, "--name", "Demo",
            "--host", info["host"], "--port", str(info["imaps"]), "--tls",
            "--username", DEMO_USER, "--password-stdin",
            stdin=info["password"] + "\n",
        )
        say(out.strip())

    def _start_tail(self) -> None:
        self.tail = subprocess.Popen(
            [self.python, "-m", "imapsvc", "events", "tail", "--follow", "--count", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=self.env,
            cwd=self.state,
            # Its own session: Ctrl-C reaches only us, and we stop the children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        assert self.tail.stdout is not None
        self.printer = EventPrinter(self.tail.stdout)
        self.printer.start()

    def _start_twistd(self) -> None:
        cmd = [os.path.join(self.bin, "twistd"), "-n", "--pidfile="]
        if not self.verbose:
            cmd += ["--logfile", self.log_path]
        cmd.append("imapsvc")
        say(f"starting `twistd -n imapsvc` on the embedded default (HTTP port {self.port})")
        self.twistd = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.state,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )

    def _wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for ``/readyz`` to answer 200 (store and sink up, providers discovered)."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        deadline = time.monotonic() + timeout
        assert self.twistd is not None
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            try:
                # Paces the loop and notices at once if twistd exited.
                code = self.twistd.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise DemoError(f"the service was not ready within {timeout:.0f} s "
                                    f"({url});\n{self._log_hint()}") from None
                continue
            raise DemoError(f"twistd exited with {code} during start-up;\n{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.verbose:
            return "see its log above"
        return f"last lines of {self.log_path}:\n{_tail_of(self.log_path)}"

    def _lock(self) -> None:
        """One demo per state folder: a second ``make run`` would delete the
        first one's store and event file and take ``make send`` over."""
        path = os.path.join(self.state, "demo.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = ""
            with contextlib.suppress(OSError, ValueError):
                other = os.read(fd, 32).decode().strip()
            os.close(fd)
            raise DemoError(
                f"another demo is running (pid {other or '?'}) on {self.state}: stop it with "
                "Ctrl-C, or start this one with DEMO_STATE_DIR=<another folder>") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _write_cli_env(self) -> None:
        """``<state>/cli.env``: what the admin CLI needs to reach this demo."""
        names = ("IMAPSVC_SQLITE_PATH", "IMAPSVC_EVENTS_FILE", "PORT", "IMAPSVC_ADMIN_TOKEN",
                 "IMAPSVC_SECRET_KEY")
        lines = ["# . demo/.state/cli.env  points `python -m imapsvc` at the running demo"]
        lines += [f"export {name}={shlex.quote(self.env[name])}" for name in names]
        _write_private(os.path.join(self.state, CLI_ENV), "\n".join(lines) + "\n")

    def start(self) -> None:
        os.makedirs(self.state, mode=0o700, exist_ok=True)
        self._lock()
        self._fresh_files()
        self.env = {k: v for k, v in os.environ.items() if k not in FOREIGN_SETTINGS}
        self.env.pop("IMAPSVC_SECRET_KEY", None)
        self.env.pop("IMAPSVC_ADMIN_TOKEN", None)
        self.port = _free_port()
        self.env.update(
            IMAPSVC_SQLITE_PATH=self.sqlite_path,
            IMAPSVC_EVENTS_FILE=self.events_path,
            PORT=str(self.port),
            IMAPSVC_LOG_FORMAT="text",
            PYTHONUNBUFFERED="1",
            # The demo's Dovecot listens on loopback, which tenant IMAP hosts
            # may not use unless allowed (a production safety default).
            IMAPSVC_PRIVATE_NETWORK_ALLOWLIST="127.0.0.0/8,::1/128,localhost",
        )
        self.env["IMAPSVC_SECRET_KEY"] = self._secret_key()
        # The admin API (`python -m imapsvc status`, reconnect, ...) needs a token.
        self.env["IMAPSVC_ADMIN_TOKEN"] = secrets.token_urlsafe(32)
        self._write_cli_env()
        info = self._start_dovecot()
        self.env["IMAP_TLS_CA_FILE"] = info["ca_file"]
        self._add_provider(info)
        self._start_tail()
        self._start_twistd()
        self._wait_ready()

    # -- running -------------------------------------------------------------------

    def run_smoke(self) -> None:
        assert self.printer is not None
        with open(os.path.join(self.state, INFO_FILE), encoding="utf-8") as f:
            info = json.load(f)
        subject = f"imapsvc smoke {uuid.uuid4().hex[:12]}"
        say(f"smoke: appending {subject!r} to {DEMO_USER} INBOX")
        try:
            send_message(info, subject)
        except SendError as e:
            raise DemoError(str(e)) from None
        if not self.printer.wait_for_subject(subject, self.smoke_timeout):
            raise DemoError(f"no {EVENT_NAME} event for {subject!r} within "
                            f"{self.smoke_timeout:.0f} s;\n{self._log_hint()}")
        say(f"smoke: OK, the {EVENT_NAME} event for {subject!r} arrived")

    def run_forever(self) -> None:
        assert self.twistd is not None
        print(
            "\n"
            "The demo is running. Events are printed here as they arrive.\n"
            "  send a message:   make send   (or: .venv/bin/python demo/send.py"
            " --subject 'Hello')\n"
            f"  service log:      {self.log_path if not self.verbose else '(this terminal)'}\n"
            f"  events file:      {self.events_path}\n"
            f"  health:           curl http://127.0.0.1:{self.port}/readyz\n"
            f"  admin CLI:        . {os.path.join(self.state, CLI_ENV)} && "
            ".venv/bin/python -m imapsvc status\n"
            "  stop:             Ctrl-C\n",
            flush=True,
        )
        code = self.twistd.wait()
        raise DemoError(f"twistd exited with {code};\n{self._log_hint()}")

    # -- tear-down -------------------------------------------------------------------

    @staticmethod
    def _stop_process(proc: Optional[subprocess.Popen[bytes]], grace: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop twistd, then the tail, then Dovecot; safe to call at any point."""
        if self.twistd is None and self.tail is None and self.dovecot is None \
                and self._lock_fd is None:
            return  # refused before starting anything (another demo runs): nothing to stop
        say("stopping: twistd, events tail, Dovecot")
        self._stop_process(self.twistd, grace=20)
        self._stop_process(self.tail, grace=5)
        if self.dovecot is not None:
            self.dovecot.cleanup()
            self.dovecot = None
        if self._lock_fd is not None:
            # Only the demo holding the lock owns these files.
            for name in (INFO_FILE, CLI_ENV):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.state, name))
            os.close(self._lock_fd)
            self._lock_fd = None
        say("stopped")


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def main() -> int:
    smoke = os.environ.get("DEMO_SMOKE", "") not in ("", "0")
    verbose = os.environ.get("DEMO_VERBOSE", "") not in ("", "0")
    try:
        smoke_timeout = float(os.environ.get("DEMO_SMOKE_TIMEOUT") or 30)
    except ValueError:
        print("demo: DEMO_SMOKE_TIMEOUT must be a number of seconds", file=sys.stderr)
        return 2
    state = os.path.abspath(state_dir())
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    demo = Demo(state, smoke=smoke, verbose=verbose, smoke_timeout=smoke_timeout)
    status = 0
    try:
        demo.start()
        if smoke:
            demo.run_smoke()
        else:
            demo.run_forever()
    except Stop as e:
        print(f"\n==> {e}: stopping", flush=True)
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short; the children would
        # still get SIGTERM from the kernel, but Dovecot's files would stay.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())

"""A private Dovecot 2.3 for integration tests.

Each :class:`Dovecot` writes its own configuration into a temporary directory
and runs ``dovecot -F -c CONF`` as a child process: not the system service, no
well-known ports. It listens on ``127.0.0.1`` only:

- ``ports.imap``: plain IMAP with STARTTLS,
- ``ports.imaps``: implicit TLS with a certificate for ``localhost``/``127.0.0.1``,
- ``ports.imaps_wrong``: implicit TLS with a certificate for ``wrong.example``
  signed by the same CA (a second, minimal instance), so hostname checks can
  be proved.

Users live in a passwd-file (``add_user``); OAuth logins (XOAUTH2 and
OAUTHBEARER) go through an oauth2 passdb that asks
:class:`tests.rig.introspection.IntrospectionServer`.

Integration tests share one instance through :func:`get_dovecot` and give
each test its own user (:func:`unique_user`) so mailboxes never collide.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import grp
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from unittest import SkipTest

import attr

from tests.rig.introspection import IntrospectionServer
from tests.rig.tls import TLSFiles, make_tls_files

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
IMAP_ZLIB_PLUGIN = "/usr/lib/dovecot/modules/lib30_imap_zlib_plugin.so"
MAIL_USER = "vmail"
DEFAULT_PASSWORD = "secret"
DOMAIN = "example.com"
_USER_RE = re.compile(r"^[A-Za-z0-9._+-]+(@[A-Za-z0-9.-]+)?$")


class RigError(Exception):
    """The rig could not start or drive Dovecot."""


def skip_or_fail(reason: str) -> None:
    """
    Skip the test, or fail when the environment says this is CI (``CI`` set),
    where a missing service means a broken machine rather than a laptop.
    """
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        raise RigError(reason)
    raise SkipTest(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_mail_user() -> tuple[int, int]:
    """Create the ``vmail`` system user that owns the Maildirs, if absent."""
    try:
        entry = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                MAIL_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid


def _check_environment() -> None:
    for path in (DOVECOT, DOVEADM):
        if not os.path.exists(path):
            skip_or_fail(f"{path} is not installed (apt-get install dovecot-imapd)")
    if os.geteuid() != 0:
        skip_or_fail("the Dovecot rig needs root (it runs mail processes as vmail)")
    for name in ("dovenull", "dovecot"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            skip_or_fail(f"system user {name!r} is missing (it comes with dovecot-core)")


@attr.s(frozen=True, auto_attribs=True)
class Ports:
    """The TCP ports a :class:`Dovecot` listens on, all on ``127.0.0.1``."""

    imap: int
    imaps: int
    imaps_wrong: int


def _wait_ready(
    proc: subprocess.Popen[bytes], port: int, use_tls: bool, log_path: str, attempts: int = 400
) -> None:
    """
    Wait until ``port`` answers with an IMAP greeting.

    Between refused attempts we block in ``proc.wait`` for a moment: that
    paces the loop and notices at once if Dovecot exited during start-up.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for _ in range(attempts):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                sock: socket.socket = raw
                if use_tls:
                    sock = ctx.wrap_socket(raw)
                greeting = sock.recv(200)
                if use_tls:
                    sock.close()
                if greeting.startswith(b"* OK"):
                    return
        except OSError:
            pass
        try:
            proc.wait(timeout=0.025)
        except subprocess.TimeoutExpired:
            continue
        raise RigError(f"dovecot exited with {proc.returncode} during start-up:\n{_tail(log_path)}")
    raise RigError(f"dovecot did not answer on port {port}:\n{_tail(log_path)}")


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


_instance_counter = itertools.count(1)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """
    A ``preexec_fn`` that makes the kernel send SIGTERM to Dovecot's master
    when the test process dies, even by SIGKILL, so no orphan instance is left
    listening. Linux only. PR_SET_PDEATHSIG fires when the *thread* that
    forked exits, so it is used only when starting from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl.
        if os.getppid() != parent:
            os._exit(1)

    return hook


_PR_SET_PDEATHSIG = 1


class _Instance:
    """One ``dovecot -F`` process with its own directories and config."""

    def __init__(self, root: str, name: str, config: str) -> None:
        self.root = root
        self.name = name
        self.conf_path = os.path.join(root, "dovecot.conf")
        self.log_path = os.path.join(root, "dovecot.log")
        with open(self.conf_path, "w", encoding="utf-8") as f:
            f.write(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: list[tuple[int, bool]]) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log_path, "ab") as early_log:
            # Errors before log_path is open (config errors) land here too.
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", self.conf_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=early_log,
                preexec_fn=_die_with_parent_hook(),
            )
        try:
            for port, use_tls in ready:
                _wait_ready(self.proc, port, use_tls, self.log_path)
        except BaseException:
            self.stop()
            raise

    def signal_stop(self) -> subprocess.Popen[bytes] | None:
        """
        Ask the master to shut down; :meth:`wait_stopped` waits for it.

        SIGTERM to the master is what ``doveadm stop`` sends; we hold the
        process, so we signal it directly and wait on it, which is about
        2 s quicker than ``doveadm stop``'s own polling.
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None
        proc.terminate()
        return proc

    @staticmethod
    def wait_stopped(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        self.wait_stopped(self.signal_stop())

    def doveadm(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:  # noqa: A002
        return subprocess.run(
            [DOVEADM, "-c", self.conf_path, *args],
            input=input,
            capture_output=True,
            timeout=60,
            check=False,
        )


def _common_config(
    *,
    instance_name: str,
    root: str,
    users_file: str,
    oauth_args: str,
    mail_uid: int,
    mail_gid: int,
    home_root: str,
    cert: str,
    key: str,
    listeners: str,
    auth_failure_delay: str,
    imap_client_limit: int | None = None,
) -> str:
    # Many idlers: with one imap process per connection the mail user runs
    # out of inotify instances (128) and Dovecot silently polls every 30 s;
    # several clients per process (service_count = 0) keep IDLE immediate.
    imap_clients = (
        f"\n  client_limit = {imap_client_limit}\n  service_count = 0"
        if imap_client_limit
        else ""
    )
    # COMPRESS=DEFLATE (RFC 4978) where Debian's dovecot-imapd ships the plugin.
    imap_plugins = (
        "\n  mail_plugins = $mail_plugins imap_zlib" if os.path.exists(IMAP_ZLIB_PLUGIN) else ""
    )
    return f"""\
# Written by tests/rig/dovecot.py for one test run. Not the system config.
instance_name = {instance_name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {min(mail_uid, 100)}
first_valid_gid = {min(mail_gid, 100)}
mail_uid = {mail_uid}
mail_gid = {mail_gid}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  # "/" as most providers use it; folder names then may not contain ".".
  separator = /
  # RFC 6154 SPECIAL-USE flags in LIST, for folders that exist (not
  # created here: tests create the ones they need).
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
}}
mail_max_userip_connections = 500
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = {auth_failure_delay}
auth_cache_size = 0
verbose_proctitle = yes
auth_verbose = yes
auth_debug = {"yes" if os.environ.get("IMAPSVC_TEST_DOVECOT_DEBUG") else "no"}
shutdown_clients = yes
# Log what clients say in ID (RFC 2971): the tests check imapsvc's.
imap_id_log = *

passdb {{
  driver = passwd-file
  # One file per user: Dovecot re-checks a passwd-file at most once a second,
  # so a user added to a shared file could stay unknown for up to a second.
  args = scheme=PLAIN username_format=%u {users_file}/%u
  mechanisms = plain login none
}}
passdb {{
  driver = oauth2
  args = {oauth_args}
  mechanisms = xoauth2 oauthbearer
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={home_root}/%u allow_all_users=yes
}}

service imap-login {{
{listeners}
  process_min_avail = 1
  client_limit = 1000
  service_count = 0
}}
service imap {{
  process_limit = 1000{imap_clients}
}}
default_process_limit = 1000
default_client_limit = 2000
service anvil {{
  client_limit = 3000
  # No socket access means no auth penalty: otherwise every failed login from
  # 127.0.0.1 makes the next one wait longer (2, 4, 8, 15 s).
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  client_limit = 3000
}}
protocol imap {{
  mail_max_userip_connections = 500{imap_plugins}
}}
"""


class Dovecot:
    """
    A private Dovecot with a plain/STARTTLS port, an implicit-TLS port and a
    wrong-hostname implicit-TLS port.

    :ivar ports: :class:`Ports`.
    :ivar ca_file: path of the CA certificate (PEM) the clients must trust.
    :ivar tls: all TLS file paths (:class:`tests.rig.tls.TLSFiles`).
    :ivar introspection: the OAuth token endpoint Dovecot consults.
    :ivar root: the temporary directory holding everything.
    """

    #: Dovecot 2.3 lets ``auth_failure_delay`` be lowered; 2 s per failed login
    #: would dominate the auth-failure tests; it takes whole seconds only, so 0.
    AUTH_FAILURE_DELAY = "0"

    def __init__(
        self,
        introspection: IntrospectionServer | None = None,
        imap_client_limit: int | None = None,
    ) -> None:
        """:param imap_client_limit: clients per imap process (with
        ``service_count = 0``); ``None`` keeps one process per connection."""
        _check_environment()
        self.root = tempfile.mkdtemp(prefix="imapsvc-dovecot-")
        # Login processes (dovenull) and mail processes (vmail) must traverse it.
        os.chmod(self.root, 0o755)
        self.tls: TLSFiles = make_tls_files(os.path.join(self.root, "tls"))
        self.ca_file = self.tls.ca_file
        self.introspection = introspection or IntrospectionServer()
        self._own_introspection = introspection is None
        self.introspection.start()
        self.mail_uid, self.mail_gid = _ensure_mail_user()
        self.ports = Ports(imap=_free_port(), imaps=_free_port(), imaps_wrong=_free_port())
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}

        self.home_root = os.path.join(self.root, "home")
        os.makedirs(self.home_root)
        os.chown(self.home_root, self.mail_uid, self.mail_gid)
        self.users_file = os.path.join(self.root, "users")
        self._dovecot_gid = grp.getgrnam("dovecot").gr_gid
        os.makedirs(self.users_file)
        os.chown(self.users_file, 0, self._dovecot_gid)
        os.chmod(self.users_file, 0o750)
        self.oauth_args = os.path.join(self.root, "dovecot-oauth2.conf.ext")
        with open(self.oauth_args, "w", encoding="utf-8") as f:
            f.write(
                "introspection_mode = post\n"
                f"introspection_url = {self.introspection.url}\n"
                "force_introspection = yes\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
                "timeout_msecs = 5000\n"
            )
        os.chmod(self.oauth_args, 0o644)

        tag = f"{os.getpid()}-{next(_instance_counter)}-{uuid.uuid4().hex[:6]}"
        common = dict(
            users_file=self.users_file,
            oauth_args=self.oauth_args,
            mail_uid=self.mail_uid,
            mail_gid=self.mail_gid,
            home_root=self.home_root,
            auth_failure_delay=self.AUTH_FAILURE_DELAY,
            imap_client_limit=imap_client_limit,
        )
        main_root = os.path.join(self.root, "main")
        wrong_root = os.path.join(self.root, "wrong")
        os.makedirs(main_root)
        os.makedirs(wrong_root)
        os.chmod(main_root, 0o755)
        os.chmod(wrong_root, 0o755)
        self._main = _Instance(
            main_root,
            f"imapsvc-test-{tag}",
            _common_config(
                instance_name=f"imapsvc-test-{tag}",
                root=main_root,
                cert=self.tls.server_cert,
                key=self.tls.server_key,
                listeners=(
                    f"  inet_listener imap {{\n    address = 127.0.0.1\n"
                    f"    port = {self.ports.imap}\n  }}\n"
                    f"  inet_listener imaps {{\n    address = 127.0.0.1\n"
                    f"    port = {self.ports.imaps}\n    ssl = yes\n  }}"
                ),
                **common,  # type: ignore[arg-type]
            ),
        )
        # A second, minimal instance: Dovecot 2.3 picks certificates by local
        # IP or SNI, not by port, so a wrong certificate needs its own master.
        self._wrong = _Instance(
            wrong_root,
            f"imapsvc-test-wrong-{tag}",
            _common_config(
                instance_name=f"imapsvc-test-wrong-{tag}",
                root=wrong_root,
                cert=self.tls.wrong_cert,
                key=self.tls.wrong_key,
                listeners=(
                    f"  inet_listener imap {{\n    port = 0\n  }}\n"
                    f"  inet_listener imaps {{\n    address = 127.0.0.1\n"
                    f"    port = {self.ports.imaps_wrong}\n    ssl = yes\n  }}"
                ),
                **common,  # type: ignore[arg-type]
            ),
        )

    # -- lifecycle ---------------------------------------------------------

    @property
    def conf_path(self) -> str:
        """The main instance's ``dovecot.conf`` (for ``doveadm -c``)."""
        return self._main.conf_path

    @property
    def log_path(self) -> str:
        """The main instance's log file."""
        return self._main.log_path

    def start(self, wrong_certificate: bool = True) -> None:
        """Start both instances and wait until their ports greet.

        ``wrong_certificate=False`` starts only the main instance (the demo has
        no use for a server with a certificate for another name).
        """
        self._main.start([(self.ports.imap, False), (self.ports.imaps, True)])
        if wrong_certificate:
            self._wrong.start([(self.ports.imaps_wrong, True)])

    def stop(self) -> None:
        """Stop both instances (mail stays on disk)."""
        stopping = [self._wrong.signal_stop(), self._main.signal_stop()]
        for proc in stopping:
            _Instance.wait_stopped(proc)

    def restart(self) -> None:
        """Stop and start the main instance on the same ports.

        Dovecot 2.3 leaves running imap sessions alive across a master
        restart, so this does not by itself cut clients off: use
        :meth:`kick` (or stop the old session processes) for that.
        """
        self._main.stop()
        self._main.start([(self.ports.imap, False), (self.ports.imaps, True)])

    def stop_main(self) -> None:
        """Stop only the main instance (to test an unreachable server); ``restart`` revives it."""
        self._main.stop()

    def cleanup(self) -> None:
        """Stop everything and delete the temporary directory."""
        self.stop()
        if self._own_introspection:
            self.introspection.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether the main instance's process is alive."""
        return self._main.proc is not None and self._main.proc.poll() is None

    # -- users -------------------------------------------------------------

    def _write_user(self, name: str, password: str | None) -> None:
        path = os.path.join(self.users_file, name)
        if password is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{name}:{{PLAIN}}{password}::::::\n")
        # The auth process runs as the internal user "dovecot".
        os.chown(tmp, 0, self._dovecot_gid)
        # Rename: a new inode and mtime, so Dovecot re-reads it on its next check.
        os.replace(tmp, path)

    def _auth_test(self, name: str, password: str) -> bool:
        result = self._main.doveadm("auth", "test", "-x", "service=imap", name, password)
        return result.returncode == 0

    def _await_auth(self, name: str, password: str, expect: bool) -> None:
        """
        Wait until Dovecot's auth process agrees that ``name``/``password``
        does (or does not) log in. Each attempt is a ``doveadm`` run, which
        paces the loop; a changed file is noticed within about a second.
        """
        if not self.running:
            return
        # Bounded by time, not attempts: right after start-up doveadm can
        # fail fast (auth process not listening yet), a hundred times in
        # well under a second on a loaded machine.
        deadline = time.monotonic() + 15.0
        pause = threading.Event()
        while time.monotonic() < deadline:
            if self._auth_test(name, password) == expect:
                return
            pause.wait(0.05)
        raise RigError(f"Dovecot did not pick up the change to user {name!r}")

    def add_user(self, name: str, password: str = DEFAULT_PASSWORD) -> str:
        """
        Add ``name``, or change its password, and return once Dovecot accepts it.

        A new user is usable at once. A changed password can take up to a
        second to be noticed (Dovecot checks a passwd-file at most once a
        second); this call waits for that, so the old password is refused
        when it returns.

        :return: ``name``.
        """
        if not _USER_RE.match(name):
            raise ValueError(f"unsupported user name {name!r}")
        if any(c in password for c in ":\n\r"):
            raise ValueError("passwords may not contain ':' or line breaks")
        with self._lock:
            previous = self._users.get(name)
            self._users[name] = password
            self._write_user(name, password)
        if previous is not None and previous != password:
            self._await_auth(name, previous, expect=False)
        self._await_auth(name, password, expect=True)
        return name

    def remove_user(self, name: str) -> None:
        """Remove ``name`` and wait until its LOGIN fails. Existing sessions stay."""
        with self._lock:
            previous = self._users.pop(name, None)
            self._write_user(name, None)
        if previous is not None:
            self._await_auth(name, previous, expect=False)

    def kick(self, user: str) -> bool:
        """
        Disconnect all of ``user``'s IMAP sessions from the server side.

        :return: ``True`` if Dovecot reported kicking at least one connection.
        """
        result = self._main.doveadm("kick", user)
        if result.returncode == 0:
            return True
        if result.returncode == 68 or b"no users" in result.stdout.lower():
            return False
        raise RigError(f"doveadm kick failed: {result.stderr.decode(errors='replace')}")

    def doveadm(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:  # noqa: A002
        """Run ``doveadm -c CONF ARGS`` against the main instance."""
        return self._main.doveadm(*args, input=input)


def unique_user(prefix: str = "u") -> str:
    """:return: a fresh address such as ``u-1a2b3c4d5e@example.com``."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}@{DOMAIN}"


_singleton: Dovecot | None = None
_singleton_lock = threading.Lock()


def get_dovecot() -> Dovecot:
    """
    The process-wide Dovecot, started on first use and stopped at exit.

    Skips the calling test when Dovecot is not installed, unless ``CI`` is
    set, in which case it raises :class:`RigError`.
    """
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            dovecot = Dovecot()
            try:
                dovecot.start()
            except BaseException:
                dovecot.cleanup()
                raise
            atexit.register(dovecot.cleanup)
            _singleton = dovecot
        elif not _singleton.running:
            # A test stopped it (stop_main) and did not restart it.
            _singleton.restart()
        return _singleton

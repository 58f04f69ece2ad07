"""Run the real ``twistd imapsvc`` against the rig's Postgres, Redis and Dovecot.

Test helpers: put providers and their sealed passwords into the run's
database, start/stop/kill service processes, wait for conditions with the
reactor (no sleeps).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor, task

from imapsvc.sealed_secrets import SecretBox, generate_key, password_name
from tests.rig import postgres as pg

SECRET_KEY = generate_key()
#: The admin bearer token of the rig's services (32+ characters, as start-up demands).
ADMIN_TOKEN = "rig-admin-" + "7Qx2Lw9cVb4Nz8Rt1Yp6Ks3Hd5Fg0Jm"
#: Loopback, where the rig's servers listen: allowed for tenant endpoints.
RIG_ALLOWLIST = "127.0.0.0/8,::1/128,localhost"


def database_url(dsn: str) -> str:
    """The rig's libpq DSN as the ``postgresql://`` URL the service expects."""
    from urllib.parse import quote

    from psycopg2.extensions import parse_dsn

    p = parse_dsn(dsn)
    auth = quote(p.get("user", "postgres"))
    if p.get("password"):
        auth += ":" + quote(p["password"])
    host = p.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{p.get('port', '5432')}/{p['dbname']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_provider(
    dsn: str,
    user: str,
    password: str,
    port: int,
    *,
    tenant: Optional[str] = None,
    folders: tuple[str, ...] = (),
    cursor: Optional[dict] = None,
    active: bool = True,
) -> tuple[str, str]:
    """Insert an IMAP provider (both tables) and its sealed password."""
    tenant = tenant or str(uuid.uuid4())
    pid = str(uuid.uuid4())
    pg.execute(
        dsn,
        "INSERT INTO email_providers (id, tenant, provider_type, provider_name, mailbox,"
        " is_active) VALUES (%s, %s, 'imap', 'Support', %s, %s)",
        (pid, tenant, f"{user}@{pid[:8]}", active),
    )
    pg.execute(
        dsn,
        "INSERT INTO imap_email_provider_config (email_provider_id, tenant, host, port, secure,"
        " auth_type, username, folder_filters, folder_state) VALUES"
        " (%s, %s, 'localhost', %s, true, 'password', %s, %s, %s)",
        (pid, tenant, port, user, json.dumps(list(folders)), json.dumps(cursor or {})),
    )
    set_password(dsn, tenant, pid, password)
    return tenant, pid


def set_password(dsn: str, tenant: str, pid: str, password: str) -> None:
    name = password_name(pid)
    sealed = SecretBox.from_setting(SECRET_KEY).seal(tenant, name, password.encode())
    pg.execute(
        dsn,
        "INSERT INTO imap_secrets (tenant, name, ciphertext, updated_at)"
        " VALUES (%s, %s, %s, now()) ON CONFLICT (tenant, name)"
        " DO UPDATE SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
        (tenant, name, sealed),
    )


class ServiceProcess:
    """One ``twistd -n imapsvc`` process."""

    def __init__(self, env: dict[str, str], worker: str):
        self.port = free_port()
        self.worker = worker
        self.dir = tempfile.mkdtemp(prefix="imapsvc-svc-")
        self.log_path = os.path.join(self.dir, "service.log")
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("IMAP", "PORT", "REDIS"))
        }
        environ.update(
            {
                "PORT": str(self.port),
                "IMAPSVC_WORKER_ID": worker,
                "IMAPSVC_SECRET_KEY": SECRET_KEY,
                "IMAPSVC_ADMIN_TOKEN": ADMIN_TOKEN,
                # The rig's Dovecot, token and introspection endpoints listen
                # on loopback, which tenant endpoints may not use by default.
                "IMAPSVC_PRIVATE_NETWORK_ALLOWLIST": RIG_ALLOWLIST,
                "IMAPSVC_OAUTH_ALLOW_HTTP_LOOPBACK": "true",
                "IMAPSVC_LOG_FORMAT": "json",
                "IMAP_STARTUP_STAGGER_MS": "0",
            }
        )
        environ.update(env)
        self.env = environ
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "imapsvc"],
            env=self.env,
            cwd=self.dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        code = self.proc.wait(timeout)
        return code

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cleanup(self) -> None:
        """Kill the process if it still runs and delete its folder (log included:
        tests that need the log read it before; ``IMAPSVC_TEST_KEEP_DIRS=1`` keeps it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        if not os.environ.get("IMAPSVC_TEST_KEEP_DIRS"):
            shutil.rmtree(self.dir, ignore_errors=True)


def http_get(url: str, token: Optional[str] = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def http_post(url: str, body: dict, token: str = ADMIN_TOKEN) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@defer.inlineCallbacks
def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
):
    """Poll ``condition`` on the reactor until it is truthy; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        yield task.deferLater(reactor, interval, lambda: None)


def lease_owners(dsn: str, pids: list[str]) -> dict[str, Optional[str]]:
    """``{provider_id: lease_owner}`` for the given providers (unexpired or not)."""
    rows = pg.execute(
        dsn,
        "SELECT email_provider_id::text, lease_owner FROM imap_email_provider_config"
        " WHERE email_provider_id::text = ANY(%s)",
        (list(pids),),
    )
    return {pid: owner for pid, owner in rows}


def admin_status(proc: ServiceProcess) -> Optional[dict]:
    """The replica's ``GET /status`` document, or ``None`` when it does not answer 200."""
    code, body = http_get(proc.url("/status"), token=ADMIN_TOKEN)
    if code != 200:
        return None
    return json.loads(body)


def status_provider(proc: ServiceProcess, pid: str) -> Optional[dict]:
    """This replica's ``/status`` entry for one provider, ``None`` if it does not run it."""
    status = admin_status(proc)
    for entry in (status or {}).get("providers", []):
        if entry.get("providerId") == pid:
            return entry
    return None


def set_secret(dsn: str, tenant: str, name: str, value: str) -> None:
    """Seal ``value`` under the run's key and store it as secret ``name``."""
    sealed = SecretBox.from_setting(SECRET_KEY).seal(tenant, name, value.encode())
    pg.execute(
        dsn,
        "INSERT INTO imap_secrets (tenant, name, ciphertext, updated_at)"
        " VALUES (%s, %s, %s, now()) ON CONFLICT (tenant, name)"
        " DO UPDATE SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
        (tenant, name, sealed),
    )


def set_oauth_client_secret(dsn: str, tenant: str, pid: str, secret: str) -> None:
    """Store the provider's OAuth client secret, sealed, under its CONTRACT name."""
    from imapsvc.sealed_secrets import client_secret_name

    set_secret(dsn, tenant, client_secret_name(pid), secret)


def add_oauth_provider(
    dsn: str,
    user: str,
    port: int,
    *,
    authorize_url: str,
    token_url: str,
    client_id: str,
    client_secret: str,
    tenant: Optional[str] = None,
    scopes: str = "imap",
) -> tuple[str, str]:
    """Insert an ``auth_type = 'oauth2'`` IMAP provider (no tokens yet) and
    its sealed client secret."""
    tenant = tenant or str(uuid.uuid4())
    pid = str(uuid.uuid4())
    pg.execute(
        dsn,
        "INSERT INTO email_providers (id, tenant, provider_type, provider_name, mailbox,"
        " is_active) VALUES (%s, %s, 'imap', 'Support', %s, true)",
        (pid, tenant, f"{user}@{pid[:8]}"),
    )
    pg.execute(
        dsn,
        "INSERT INTO imap_email_provider_config (email_provider_id, tenant, host, port, secure,"
        " auth_type, username, oauth_authorize_url, oauth_token_url, oauth_client_id,"
        " oauth_scopes) VALUES (%s, %s, 'localhost', %s, true, 'oauth2', %s, %s, %s, %s, %s)",
        (pid, tenant, port, user, authorize_url, token_url, client_id, scopes),
    )
    set_oauth_client_secret(dsn, tenant, pid, client_secret)
    return tenant, pid


class ServiceRigMixin:
    """Shared set-up of the end-to-end tests: the rig's Dovecot, this run's
    database, Redis with a fresh stream, and the base service environment."""

    def set_up_service_rig(self, label: str) -> None:
        from tests.rig.dovecot import get_dovecot
        from tests.rig.redis import SyncRedis, _host_port, shared_redis, unique_stream

        self.dovecot = get_dovecot()
        self.dsn = pg.database_dsn()
        self.redis_url = shared_redis()
        self.redis = SyncRedis(*_host_port(self.redis_url))
        self.addCleanup(self.redis.close)  # type: ignore[attr-defined]
        self.stream = unique_stream(label)

    def service_env(self, **overrides: str) -> dict[str, str]:
        env = {
            "DATABASE_URL": database_url(self.dsn),
            "REDIS_URL": self.redis_url,
            "IMAP_EVENT_STREAM": self.stream,
            "IMAP_TLS_CA_FILE": self.dovecot.ca_file,
        }
        env.update(overrides)
        return env

    def entries(self) -> Any:
        return self.redis.xrange(self.stream)

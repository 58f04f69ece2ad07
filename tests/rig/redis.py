"""Redis for integration tests.

- :func:`shared_redis` gives the machine's Redis (``IMAPSVC_TEST_REDIS_URL``,
  default ``redis://127.0.0.1:6379``), skipping the test when it does not
  answer and ``CI`` is unset (failing it when ``CI`` is set).
- :data:`PREFIX` is a per-run key prefix (``imapsvc-test:<random>:``); every
  key a test makes starts with it and the whole prefix is deleted at exit.
- :class:`PrivateRedis` runs a throwaway ``redis-server`` on a free port that a
  test may stop and start again (the honest "Redis went down" test).
- :class:`SyncRedis` is redis-py's blocking client for setting up and
  checking (never used by the code under test).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from typing import Any, Optional
from urllib.parse import urlsplit

import redis
from twisted.internet import defer, task
from twisted.trial.unittest import SkipTest

#: Key prefix of this test run.
PREFIX = f"imapsvc-test:{secrets.token_hex(6)}:"


#: What redis-py raises for an error reply or a connection it lost (its
#: connection errors are not OSError).
RespError = redis.RedisError


class SyncRedis(redis.Redis):
    """redis-py's blocking client with text replies, for test setup and
    checking (never used by the code under test). ``xrange(stream)`` gives
    ``[(id, {field: value})]`` in order."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, timeout: float = 5.0) -> None:
        super().__init__(
            host=host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; how many there were."""
        keys = list(self.scan_iter(match=prefix + "*", count=500))
        return sum(int(self.delete(*keys[i : i + 500])) for i in range(0, len(keys), 500))


def shared_redis_url() -> str:
    return os.environ.get("IMAPSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


_cleanup_registered = False


def _delete_run_prefix() -> None:
    try:
        with SyncRedis(*_host_port(shared_redis_url())) as r:
            r.delete_prefix(PREFIX)
    except OSError:
        pass


def shared_redis() -> str:
    """The shared Redis URL, after checking it answers PING.

    :raises SkipTest: when unreachable and ``CI`` is unset.
    """
    global _cleanup_registered
    try:
        with SyncRedis(*_host_port(shared_redis_url()), timeout=2.0) as r:
            r.ping()
    except (OSError, RespError) as e:
        message = f"Redis at {shared_redis_url()} is unreachable: {e}"
        if os.environ.get("CI"):
            raise AssertionError(message) from e
        raise SkipTest(message) from e
    if not _cleanup_registered:
        atexit.register(_delete_run_prefix)
        _cleanup_registered = True
    return shared_redis_url()


def unique_stream(label: str = "stream") -> str:
    """A stream name under this run's :data:`PREFIX`."""
    return f"{PREFIX}{label}:{secrets.token_hex(4)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of our own on a free loopback port, nothing persisted.

    ``start()``/``stop()`` return Deferreds; ``start()`` fires once the server
    answers PING (polled on the reactor, bounded).
    """

    def __init__(self, reactor: Any, port: Optional[int] = None) -> None:
        self._reactor = reactor
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._dir = tempfile.mkdtemp(prefix="imapsvc-redis-")

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def client(self) -> SyncRedis:
        return SyncRedis("127.0.0.1", self.port)

    @defer.inlineCallbacks
    def start(self, timeout_s: float = 10.0) -> Any:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        step = 0.05
        for _ in range(int(timeout_s / step)):
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with SyncRedis("127.0.0.1", self.port, timeout=1.0) as r:
                    if r.ping():
                        return
            except (OSError, RespError):
                pass
            yield task.deferLater(self._reactor, step, lambda: None)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> defer.Deferred[None]:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return defer.succeed(None)

    def destroy(self) -> defer.Deferred[None]:
        d = self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        return d

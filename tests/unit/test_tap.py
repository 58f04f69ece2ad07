"""``twistd imapsvc`` options and the service tree (no real reactor, no ports)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from typing import Any

import attr
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from imapsvc import log_output as imapsvc_logging
from imapsvc import tap
from imapsvc.config import CONTRACT_VARIABLES, SETTINGS, Settings


def parse(argv: list[str], environ: dict[str, str]) -> tuple[tap.Options, io.StringIO]:
    options = tap.Options()
    options.environ = environ
    options.stderr = io.StringIO()
    options.parseOptions(argv)
    return options, options.stderr


class OptionsTests(TestCase):
    def test_one_option_per_setting_and_help_names_the_variable(self) -> None:
        help_text = str(tap.Options())
        for setting in SETTINGS:
            self.assertIn(f"--{setting.option}=", help_text)
        flat = " ".join(help_text.split())
        for env in CONTRACT_VARIABLES:
            self.assertIn(env, flat)

    def test_help_never_shows_current_secret(self) -> None:
        os_env = {"IMAPSVC_ADMIN_TOKEN": "adm-live-7f3e9c-0d1e2f3a4b5c6d7e8f9a0b1c"}
        self.patch(os, "environ", os_env)
        self.assertNotIn("adm-live-7f3e9c-0d1e2f3a4b5c6d7e8f9a0b1c", str(tap.Options()))

    def test_option_beats_environment(self) -> None:
        options, _ = parse(["--poll-interval-ms", "1234", "--port=9000"], {"PORT": "8081"})
        assert options.settings is not None
        self.assertEqual(options.settings.poll_interval_ms, 1234)
        self.assertEqual(options.settings.port, 9000)

    def test_environment_used(self) -> None:
        options, _ = parse([], {"IMAP_FETCH_CHUNK": "17"})
        assert options.settings is not None
        self.assertEqual(options.settings.fetch_chunk, 17)

    def test_bad_value_exits_with_one_line(self) -> None:
        options = tap.Options()
        options.environ = {"IMAP_TIMER_JITTER_PCT": "2"}
        options.stderr = io.StringIO()
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions([])
        self.assertEqual(caught.exception.code, 2)
        self.assertEqual(
            options.stderr.getvalue(),
            "imapsvc: IMAP_TIMER_JITTER_PCT='2' must be between 0 and 1 (a fraction, e.g. 0.1 "
            "for 10%)\n",
        )

    def test_bad_secret_option_not_echoed(self) -> None:
        options = tap.Options()
        options.environ = {}
        options.stderr = io.StringIO()
        with self.assertRaises(SystemExit):
            options.parseOptions(["--database-url", "mysql://root:hunter2-pw@db/x"])
        self.assertNotIn("hunter2-pw", options.stderr.getvalue())
        self.assertIn("DATABASE_URL", options.stderr.getvalue())

    def test_logger_chosen_for_twistd(self) -> None:
        self.addCleanup(imapsvc_logging.set_twistd_target, "json", "-")
        parent = {"logger": None, "logfile": None, "nodaemon": True}
        options = tap.Options()
        options.parent = parent  # type: ignore[attr-defined]
        options.environ = {"IMAPSVC_LOG_FORMAT": "text"}
        options.parseOptions([])
        self.assertEqual(parent["logger"], "imapsvc.log_output.twistd_observer")
        self.assertEqual(imapsvc_logging._twistd_target, {"format": "text", "logfile": "-"})

    def test_explicit_logger_respected(self) -> None:
        parent = {"logger": "my.observer", "logfile": None, "nodaemon": True}
        options = tap.Options()
        options.parent = parent  # type: ignore[attr-defined]
        options.environ = {}
        options.parseOptions([])
        self.assertEqual(parent["logger"], "my.observer")


class ServiceTests(TestCase):
    def settings(self) -> Settings:
        d = tempfile.mkdtemp()
        return Settings(
            port=8099,
            events_file=os.path.join(d, "events.jsonl"),
            sqlite_path=os.path.join(d, "imapsvc.sqlite3"),
        )

    def test_tree(self) -> None:
        reactor = MemoryReactorClock()
        top = tap.build_service(self.settings(), reactor)
        self.assertEqual(top.name, "imapsvc")
        names = [s.name for s in IServiceCollection(top)]
        # Web starts first (liveness answers while the store comes up) and
        # stops last (twistd stops in reverse), after the runtime drained.
        self.assertEqual(names, ["web", "runtime"])
        # Only the web child: the runtime's store works from a thread that
        # this memory reactor would never hear back from.
        web = top.getServiceNamed("web")
        web.startService()
        self.addCleanup(web.stopService)
        ports = [p[0] for p in reactor.tcpServers]
        self.assertEqual(ports, [8099])
        from imapsvc.web_site import GuardedSite

        self.assertIsInstance(reactor.tcpServers[0][1], GuardedSite)
        self.assertEqual(reactor.tcpServers[0][1].max_body, 65536)

    def test_separate_metrics_port(self) -> None:
        reactor = MemoryReactorClock()
        settings = attr.evolve(self.settings(), metrics_port=9464)
        web = tap.build_service(settings, reactor).getServiceNamed("web")
        web.startService()
        self.addCleanup(web.stopService)
        self.assertEqual(sorted(p[0] for p in reactor.tcpServers), [8099, 9464])


class TwistdTests(TestCase):
    """Run the real ``twistd`` to prove what an operator sees."""

    def twistd(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            self.skipTest("no twistd script next to the interpreter")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("IMAP", "PORT"))}
        environ.update(env)
        return subprocess.run(
            [twistd, "-n", "--pidfile=", "imapsvc", *args],
            capture_output=True,
            text=True,
            env=environ,
            cwd=tempfile.mkdtemp(),
            timeout=60,
        )

    def test_bad_value_stops_start_up_without_traceback(self) -> None:
        result = self.twistd(IMAP_TIMER_JITTER_PCT="2")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr.strip(),
            "imapsvc: IMAP_TIMER_JITTER_PCT='2' must be between 0 and 1 (a fraction, e.g. "
            "0.1 for 10%)",
        )
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_bad_option_value(self) -> None:
        result = self.twistd("--reconnect-base-ms", "90000")
        self.assertEqual(result.returncode, 2)
        self.assertIn("IMAP_RECONNECT_BASE_MS", result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class SinkChoiceTests(TestCase):
    def test_redis_when_url_set(self) -> None:
        from imapsvc.sink.redis_stream import RedisStreamSink

        sink = tap.make_sink(
            Settings(redis_url="redis://:pw@cache:6379/0", event_stream_maxlen=1000),
            MemoryReactorClock(),
        )
        self.assertIsInstance(sink, RedisStreamSink)
        self.assertEqual(sink.stream, "workflow:events:global")
        self.assertEqual(sink._window_ms, 86_400_000)

    def test_dedupe_window_reaches_both_sinks(self) -> None:
        for settings in (Settings(redis_url="redis://cache:6379/0", event_dedupe_window_ms=0),
                         Settings(events_file="x.jsonl", event_dedupe_window_ms=0)):
            sink = tap.make_sink(settings, MemoryReactorClock())
            self.assertEqual(sink._window_ms, 0, type(sink).__name__)

    def test_jsonl_by_default(self) -> None:
        from imapsvc.sink.jsonl import JsonLinesSink

        sink = tap.make_sink(Settings(events_file="x.jsonl"), MemoryReactorClock())
        self.assertIsInstance(sink, JsonLinesSink)
        self.assertEqual(sink.path, "x.jsonl")


class ParsePoolChoiceTests(TestCase):
    def runtime(self, **kw: Any) -> Any:
        from imapsvc.runtime import Runtime

        d = tempfile.mkdtemp()
        settings = Settings(
            events_file=os.path.join(d, "e.jsonl"), sqlite_path=os.path.join(d, "s.db"), **kw
        )
        return Runtime(settings, MemoryReactorClock())

    def test_default_parses_in_a_thread_without_processes(self) -> None:
        self.assertIsNone(self.runtime().parse_pool)

    def test_processes_when_asked(self) -> None:
        from imapsvc.parse_pool import ParsePool

        self.assertIsInstance(self.runtime(parse_processes=1).parse_pool, ParsePool)

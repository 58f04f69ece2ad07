"""Settings: the table, parsing, validation, masking, docs."""

from __future__ import annotations

import io
import os
import tempfile

import attr
from twisted.trial.unittest import TestCase

from imapsvc import cli
from imapsvc.config import (
    CONTRACT_VARIABLES,
    SETTINGS,
    SETTINGS_BY_ENV,
    ConfigError,
    Settings,
    load_settings,
    settings_markdown,
)
from imapsvc.model import MIB, Limits

KEY_A = "q3Fz1yQzVb7mZkq2cGk2T1dXbWJjZ0J3a3NBd0p4Y2s="  # 32 bytes, url-safe base64
KEY_B = "00" * 32


class TableTests(TestCase):
    def test_every_contract_variable_has_a_row(self) -> None:
        for env in CONTRACT_VARIABLES:
            self.assertIn(env, SETTINGS_BY_ENV)

    def test_attribute_names(self) -> None:
        names = {s.env: s.name for s in SETTINGS}
        self.assertEqual(names["IMAP_PROVIDER_REFRESH_MS"], "provider_refresh_ms")
        self.assertEqual(names["IMAPSVC_ADMIN_TOKEN"], "admin_token")
        self.assertEqual(names["DATABASE_URL"], "database_url")
        self.assertEqual(names["PORT"], "port")
        self.assertEqual(names["REDIS_TIMEOUT_MS"], "redis_timeout_ms")
        self.assertEqual(names["IMAPSVC_SECRET_KEY"], "secret_key")

    def test_settings_class_matches_table(self) -> None:
        fields = [f.name for f in attr.fields(Settings) if not f.metadata.get("derived")]
        self.assertEqual(fields, [s.name for s in SETTINGS])

    def test_settings_is_frozen(self) -> None:
        s = Settings()
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, s, "port", 1)


class DefaultTests(TestCase):
    def test_contract_defaults(self) -> None:
        s = load_settings({})
        self.assertEqual(s.provider_refresh_ms, 60000)
        self.assertEqual(s.lease_ttl_ms, 120000)
        self.assertEqual(s.poll_interval_ms, 30000)
        self.assertEqual(s.idle_restart_ms, 1500000)
        self.assertEqual(s.startup_stagger_ms, 2000)
        self.assertEqual(s.timer_jitter_pct, 0.1)
        self.assertEqual(s.reconnect_base_ms, 2000)
        self.assertEqual(s.reconnect_max_ms, 60000)
        self.assertEqual(s.reconnect_jitter_pct, 0.5)
        self.assertEqual(s.connection_timeout_ms, 10000)
        self.assertIs(s.socket_keepalive, True)
        self.assertEqual(s.max_emails_per_sync, 5)
        self.assertEqual(s.max_connections_per_tenant, 5)
        self.assertEqual(s.event_stream, "workflow:events:global")
        self.assertEqual(s.port, 8080)
        self.assertEqual(s.database_url, "")
        self.assertEqual(s.redis_url, "")
        self.assertEqual(s.secret_key, ())
        self.assertEqual(s.event_stream_maxlen, 0)
        self.assertIs(s.tls_insecure, False)
        self.assertEqual(s.log_format, "json")
        self.assertEqual(s.worker_id, f"{os.uname().nodename}-{os.getpid()}")

    def test_limits(self) -> None:
        s = load_settings({"IMAP_MAX_ATTACHMENT_COUNT": "7", "IMAP_MAX_TEXT_PART_BYTES": "1000"})
        self.assertEqual(
            s.limits(),
            Limits(10 * MIB, 25 * MIB, 7, 25 * MIB, 1000),
        )

    def test_empty_value_is_unset(self) -> None:
        self.assertEqual(load_settings({"IMAP_POLL_INTERVAL_MS": "  "}).poll_interval_ms, 30000)


class ParseTests(TestCase):
    def test_values(self) -> None:
        s = load_settings(
            {
                "IMAP_SOCKET_KEEPALIVE": "No",
                "IMAP_TLS_INSECURE": "yes",
                "IMAP_TIMER_JITTER_PCT": "0",
                "PORT": "65535",
                "DATABASE_URL": "postgres://u:p@db/app",
                "REDIS_URL": "rediss://cache:6380/0",
                "IMAP_BROKEN_BODYSTRUCTURE_HOSTS": " Imap.Example.COM, ,mail.x.org",
                "IMAPSVC_TENANTS": "6F1C6C4E-0B2F-4C65-9A55-0D5C1B0E8A11",
                "IMAPSVC_SECRET_KEY": f"{KEY_A}, {KEY_B}",
                "IMAPSVC_REDIRECT_ALLOWLIST": "https://app.example.com/settings,http://localhost:3000",
                "IMAPSVC_LOG_FORMAT": "TEXT",
            }
        )
        self.assertIs(s.socket_keepalive, False)
        self.assertIs(s.tls_insecure, True)
        self.assertEqual(s.timer_jitter_pct, 0.0)
        self.assertEqual(s.port, 65535)
        self.assertEqual(s.broken_bodystructure_hosts, ("imap.example.com", "mail.x.org"))
        self.assertEqual(s.tenants, ("6f1c6c4e-0b2f-4c65-9a55-0d5c1b0e8a11",))
        self.assertEqual(s.secret_key, (KEY_A, KEY_B))
        self.assertEqual(len(s.redirect_allowlist), 2)
        self.assertEqual(s.log_format, "text")

    def test_overrides_win_over_environment(self) -> None:
        s = load_settings(
            {"PORT": "8081", "IMAP_POLL_INTERVAL_MS": "1000"},
            {"PORT": "9090", "poll_interval_ms": None, "fetch_chunk": "50"},
        )
        self.assertEqual(s.port, 9090)
        self.assertEqual(s.poll_interval_ms, 1000)
        self.assertEqual(s.fetch_chunk, 50)

    def test_unknown_override(self) -> None:
        self.assertRaises(ConfigError, load_settings, {}, {"NOPE": "1"})

    def test_secrets_dir(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(d, f)) for f in os.listdir(d)])
        with open(os.path.join(d, "IMAPSVC_ADMIN_TOKEN"), "w") as f:
            f.write("from-file-token-0a1b2c3d4e5f6a7b8c9d\n")
        with open(os.path.join(d, "PORT"), "w") as f:
            f.write("8082\n")
        s = load_settings({"IMAPSVC_SECRETS_DIR": d, "PORT": "8083"})
        self.assertEqual(s.admin_token, "from-file-token-0a1b2c3d4e5f6a7b8c9d")
        self.assertEqual(s.port, 8083)  # the environment wins over the file

    def test_repr_hides_secrets(self) -> None:
        s = load_settings(
            {
                "IMAPSVC_ADMIN_TOKEN": "adm-9f8e7d6c5b4a-1c2d3e4f5a6b7c8d9e0f",
                "DATABASE_URL": "postgresql://svc:pg-pass-123@db/app",
                "IMAPSVC_SECRET_KEY": KEY_A,
            }
        )
        text = repr(s)
        for secret in ("adm-9f8e7d6c5b4a-1c2d3e4f5a6b7c8d9e0f", "pg-pass-123", KEY_A):
            self.assertNotIn(secret, text)

    def test_masked(self) -> None:
        s = load_settings(
            {
                "IMAPSVC_ADMIN_TOKEN": "adm-9f8e7d6c5b4a-1c2d3e4f5a6b7c8d9e0f",
                "DATABASE_URL": "postgresql://svc:pg-pass-123@db:5432/app",
                "REDIS_URL": "redis://cache:6379/0",
                "IMAPSVC_SECRET_KEY": f"{KEY_A},{KEY_B}",
            }
        )
        m = s.masked()
        self.assertEqual(m["DATABASE_URL"], "postgresql://svc:***@db:5432/app")
        self.assertEqual(m["REDIS_URL"], "redis://cache:6379/0")
        self.assertEqual(m["IMAPSVC_ADMIN_TOKEN"], "***")
        self.assertEqual(m["IMAPSVC_SECRET_KEY"], "*** (2 keys)")
        self.assertEqual(m["PORT"], "8080")


class ErrorTests(TestCase):
    def assertConfigError(self, environ: dict[str, str], *fragments: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            load_settings(environ)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_bad_values_name_the_variable(self) -> None:
        cases = {
            "IMAP_TIMER_JITTER_PCT": "2",
            "IMAP_RECONNECT_JITTER_PCT": "-0.1",
            "IMAP_POLL_INTERVAL_MS": "0",
            "IMAP_PROVIDER_REFRESH_MS": "1.5",
            "IMAP_STARTUP_STAGGER_MS": "-1",
            "IMAP_SOCKET_KEEPALIVE": "maybe",
            "PORT": "0",
            "IMAP_EVENT_STREAM_MAXLEN": "many",
            "IMAPSVC_TENANTS": "acme",
            "IMAPSVC_LOG_FORMAT": "xml",
            "IMAP_TLS_CA_FILE": "/nonexistent/ca.pem",
            "IMAPSVC_SECRETS_DIR": "/nonexistent/dir",
            "IMAPSVC_PUBLIC_BASE_URL": "ftp://x",
            "IMAPSVC_REDIRECT_ALLOWLIST": "https://ok.example.com,javascript:alert(1)",
        }
        for env, value in cases.items():
            self.assertConfigError({env: value}, env)

    def test_port_range(self) -> None:
        self.assertConfigError({"PORT": "65536"}, "PORT", "65535")

    def test_url_schemes_without_leaking(self) -> None:
        msg = self.assertConfigError(
            {"DATABASE_URL": "mysql://root:db-s3cret@h/x"}, "DATABASE_URL", "postgres"
        )
        self.assertNotIn("db-s3cret", msg)
        msg = self.assertConfigError({"REDIS_URL": "http://:r3dis-pw@h:6379"}, "REDIS_URL", "redis")
        self.assertNotIn("r3dis-pw", msg)
        msg = self.assertConfigError({"DATABASE_URL": "postgres://u:pw@h:99x/db"}, "DATABASE_URL")
        self.assertNotIn("pw", msg.replace("DATABASE_URL", ""))

    def test_admin_token_rules(self) -> None:
        # Too short, and placeholders of any length: refused, never echoed.
        for token in ("short-token-123", "REPLACE-ME", "replace-me-" + "x" * 40,
                      "CHANGEME_" + "0" * 30, "a" * 40, "changeit-please-changeit-please-x"):
            msg = self.assertConfigError({"IMAPSVC_ADMIN_TOKEN": token}, "IMAPSVC_ADMIN_TOKEN")
            self.assertNotIn(token, msg)
        good = "Zk3-9vQ_p2LmX7wR4tYb8NcJ1hGd6FsA0eU5"
        self.assertEqual(load_settings({"IMAPSVC_ADMIN_TOKEN": good}).admin_token, good)
        # Empty stays allowed: the admin API is then disabled.
        self.assertEqual(load_settings({}).admin_token, "")

    def test_private_network_allowlist(self) -> None:
        s = load_settings({"IMAPSVC_PRIVATE_NETWORK_ALLOWLIST": "127.0.0.1/32, Mail.Corp.Example"})
        self.assertEqual(s.private_network_allowlist, ("127.0.0.1/32", "mail.corp.example"))
        self.assertConfigError(
            {"IMAPSVC_PRIVATE_NETWORK_ALLOWLIST": "10.0.0.0/8,not a host"},
            "IMAPSVC_PRIVATE_NETWORK_ALLOWLIST",
        )

    def test_metrics_port_differs(self) -> None:
        self.assertConfigError({"PORT": "9000", "IMAPSVC_METRICS_PORT": "9000"}, "METRICS_PORT")

    def test_bad_secret_key_not_echoed(self) -> None:
        msg = self.assertConfigError(
            {"IMAPSVC_SECRET_KEY": f"{KEY_A},hunter2-not-a-key"}, "IMAPSVC_SECRET_KEY"
        )
        self.assertNotIn("hunter2", msg)
        self.assertNotIn(KEY_A, msg)

    def test_reconnect_base_above_max(self) -> None:
        self.assertConfigError(
            {"IMAP_RECONNECT_BASE_MS": "70000"}, "IMAP_RECONNECT_BASE_MS", "IMAP_RECONNECT_MAX_MS"
        )
        load_settings({"IMAP_RECONNECT_BASE_MS": "60000"})  # equal is fine

    def test_idle_restart_under_29_minutes(self) -> None:
        self.assertConfigError({"IMAP_IDLE_RESTART_MS": "1740000"}, "IMAP_IDLE_RESTART_MS")
        load_settings({"IMAP_IDLE_RESTART_MS": "1739999"})

    def test_idle_keepalive(self) -> None:
        self.assertEqual(load_settings({}).idle_keepalive_ms, 240000)
        self.assertEqual(
            load_settings({"IMAP_IDLE_KEEPALIVE_MS": "60000"}).idle_keepalive_ms, 60000
        )
        self.assertConfigError({"IMAP_IDLE_KEEPALIVE_MS": "0"}, "IMAP_IDLE_KEEPALIVE_MS")
        # Above the watchdog it is not refused: the folder caps each draw at
        # 90 % of IMAP_INACTIVITY_TIMEOUT_MS (tests.unit.test_idle_keepalive).
        load_settings({"IMAP_IDLE_KEEPALIVE_MS": "600000"})
        # Neither are jitter settings that stretch the IDLE restart past 29
        # minutes: the restart is capped, and start-up must not fail on them.
        load_settings({"IMAP_TIMER_JITTER_PCT": "0.5"})

    def test_inactivity_above_keepalive(self) -> None:
        self.assertConfigError({"IMAP_INACTIVITY_TIMEOUT_MS": "120000"}, "INACTIVITY")
        load_settings({"IMAP_INACTIVITY_TIMEOUT_MS": "120001"})

    def test_lease_must_outlast_refresh(self) -> None:
        self.assertConfigError(
            {"IMAP_LEASE_TTL_MS": "60000"}, "IMAP_LEASE_TTL_MS", "IMAP_PROVIDER_REFRESH_MS"
        )
        # 110000 > 60000 * 1.1 but not > 60000 * 2 with full jitter
        load_settings({"IMAP_LEASE_TTL_MS": "110000"})
        self.assertConfigError(
            {"IMAP_LEASE_TTL_MS": "110000", "IMAP_TIMER_JITTER_PCT": "1"}, "IMAP_LEASE_TTL_MS"
        )

    def test_insecure_with_ca_file(self) -> None:
        with tempfile.NamedTemporaryFile(suffix=".pem") as ca:
            self.assertConfigError(
                {"IMAP_TLS_INSECURE": "true", "IMAP_TLS_CA_FILE": ca.name}, "IMAP_TLS_INSECURE"
            )
            self.assertEqual(load_settings({"IMAP_TLS_CA_FILE": ca.name}).tls_ca_file, ca.name)


class DocsTests(TestCase):
    def test_markdown_lists_everything(self) -> None:
        text = settings_markdown()
        for setting in SETTINGS:
            self.assertIn(f"`{setting.env}`", text)
            self.assertIn(f"`--{setting.option}`", text)

    def test_docs_file_is_current(self) -> None:
        path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "settings.md")
        if not os.path.exists(path):
            self.skipTest("no checkout docs/ next to the tests")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(
                f.read(), settings_markdown(), "regenerate: python -m imapsvc config --markdown"
            )


class CliTests(TestCase):
    def run_cli(self, argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(argv, environ=environ, out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_config_masks_secrets(self) -> None:
        status, out, err = self.run_cli(
            ["config"],
            {
                "IMAPSVC_ADMIN_TOKEN": "adm-9f8e7d6c5b4a-1c2d3e4f5a6b7c8d9e0f",
                "DATABASE_URL": "postgresql://svc:pg-pass-123@db/app",
                "PORT": "8181",
            },
        )
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn("adm-9f8e7d6c5b4a-1c2d3e4f5a6b7c8d9e0f", out)
        self.assertNotIn("pg-pass-123", out)
        self.assertIn("postgresql://svc:***@db/app", out)
        self.assertRegex(out, r"PORT\s+8181\s+\(env\)")

    def test_config_error_is_one_line(self) -> None:
        status, out, err = self.run_cli(["config"], {"IMAP_FETCH_CHUNK": "lots"})
        self.assertEqual(status, 2)
        self.assertEqual(err, "imapsvc config: IMAP_FETCH_CHUNK='lots' is not an integer\n")

    def test_markdown(self) -> None:
        status, out, _ = self.run_cli(["config", "--markdown"], {})
        self.assertEqual(status, 0)
        self.assertEqual(out, settings_markdown())

    def test_migrate_delegates(self) -> None:
        from imapsvc.store import migrate

        seen = []
        self.patch(migrate, "main", lambda argv: seen.append(argv) or 3)
        status, _, _ = self.run_cli(["migrate", "--database-url", "postgresql:///x"], {})
        self.assertEqual(status, 3)
        self.assertEqual(seen, [["--database-url", "postgresql:///x"]])

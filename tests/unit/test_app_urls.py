"""``DATABASE_URL`` / ``REDIS_URL`` built from the app's own variables
(issue 10 item 7), the app's secret settings, and what ``config`` and
``--help`` say about which one won, never the password."""

from __future__ import annotations

import io
import os
import tempfile

from twisted.trial.unittest import TestCase

from imapsvc import cli, tap
from imapsvc.config import (
    ConfigError,
    build_database_url,
    build_redis_url,
    load_settings,
)

DB = {"DB_HOST": "db.internal", "DB_NAME_SERVER": "server", "DB_USER_SERVER": "app_user"}


class BuildTests(TestCase):
    def test_database_url_quoted(self) -> None:
        self.assertEqual(
            build_database_url("db", 5433, "my db", "user@x", "p@ss:/w?rd#%"),
            "postgresql://user%40x:p%40ss%3A%2Fw%3Frd%23%25@db:5433/my%20db",
        )
        self.assertEqual(build_database_url("::1", 5432, "s", "u", ""), "postgresql://u@[::1]:5432/s")

    def test_redis_url_quoted(self) -> None:
        self.assertEqual(build_redis_url("r", 6380, "a b/c"), "redis://:a%20b%2Fc@r:6380/0")
        self.assertEqual(build_redis_url("r", 6379, ""), "redis://r:6379/0")

    def test_built_url_parses_back_to_the_password(self) -> None:
        from urllib.parse import unquote, urlsplit

        password = "p@ss:/w?rd#%é"
        url = build_database_url("db", 5432, "server", "app", password)
        self.assertEqual(unquote(urlsplit(url).password or ""), password)
        from imapsvc.sink.redis_stream import parse_redis_url

        self.assertEqual(parse_redis_url(build_redis_url("r", 6379, password)).password, password)


class LoadTests(TestCase):
    def base(self) -> str:
        return tempfile.mkdtemp(prefix="imapsvc-app-secrets-")

    def test_database_url_wins_when_set(self) -> None:
        s = load_settings(dict(DB, DATABASE_URL="postgresql://u@h/d", DB_PASSWORD_SERVER="x"))
        self.assertEqual(s.database_url, "postgresql://u@h/d")
        self.assertEqual(s.database_url_source, "DATABASE_URL")

    def test_built_from_db_variables(self) -> None:
        s = load_settings(dict(DB, DB_PORT="5433", DB_PASSWORD_SERVER="pw:1"))
        self.assertEqual(s.database_url, "postgresql://app_user:pw%3A1@db.internal:5433/server")
        self.assertIn("built from DB_HOST", s.database_url_source)
        self.assertIn("password: DB_PASSWORD_SERVER", s.database_url_source)
        self.assertNotIn("pw:1", s.database_url_source)

    def test_password_from_the_app_secret_file(self) -> None:
        base = self.base()
        with open(os.path.join(base, "db_password_server"), "w") as f:
            f.write("file-pw\n")
        s = load_settings(dict(DB, SECRET_FS_BASE_PATH=base, SECRET_READ_CHAIN="filesystem"))
        self.assertEqual(s.database_url, "postgresql://app_user:file-pw@db.internal:5432/server")
        self.assertIn(f"app secret db_password_server (filesystem {base}/db_password_server)",
                      s.database_url_source)  # fmt: skip

    def test_password_from_the_app_env_provider(self) -> None:
        s = load_settings(dict(DB, SECRET_READ_CHAIN="env", SECRET_ENV_PREFIX="APP",
                               APP_db_password_server="env-pw"))  # fmt: skip
        self.assertIn(":env-pw@", s.database_url)

    def test_no_password_anywhere_builds_without_and_says_so(self) -> None:
        s = load_settings(dict(DB, SECRET_FS_BASE_PATH=self.base()))
        self.assertEqual(s.database_url, "postgresql://app_user@db.internal:5432/server")
        self.assertIn("no password", s.database_url_source)

    def test_db_host_needs_name_and_user(self) -> None:
        for missing in ("DB_NAME_SERVER", "DB_USER_SERVER"):
            env = dict(DB)
            del env[missing]
            with self.assertRaises(ConfigError) as caught:
                load_settings(env)
            self.assertIn(missing, str(caught.exception))

    def test_neither_set_is_the_embedded_store(self) -> None:
        s = load_settings({})
        self.assertEqual((s.database_url, s.redis_url), ("", ""))
        self.assertIn("embedded SQLite", s.database_url_source)

    def test_redis_built_with_password_or_app_secret(self) -> None:
        s = load_settings({"REDIS_HOST": "redis", "REDIS_PORT": "6380", "REDIS_PASSWORD": "r/p"})
        self.assertEqual(s.redis_url, "redis://:r%2Fp@redis:6380/0")
        self.assertIn("password: REDIS_PASSWORD", s.redis_url_source)
        base = self.base()
        with open(os.path.join(base, "redis_password"), "w") as f:
            f.write("rp")
        s = load_settings({"REDIS_HOST": "redis", "SECRET_FS_BASE_PATH": base})
        self.assertEqual(s.redis_url, "redis://:rp@redis:6379/0")
        s = load_settings({"REDIS_HOST": "redis", "REDIS_URL": "redis://other:1/0"})
        self.assertEqual((s.redis_url, s.redis_url_source), ("redis://other:1/0", "REDIS_URL"))

    def test_unreachable_vault_for_the_password_names_the_variable(self) -> None:
        from tests.rig.service import free_port

        env = dict(DB, SECRET_READ_CHAIN="vault", VAULT_ADDR=f"http://127.0.0.1:{free_port()}",
                   VAULT_TOKEN="vt-secret", IMAPSVC_VAULT_TIMEOUT_MS="2000")  # fmt: skip
        with self.assertRaises(ConfigError) as caught:
            load_settings(env)
        self.assertIn("DB_PASSWORD_SERVER", str(caught.exception))
        self.assertNotIn("vt-secret", str(caught.exception))


class SecretSettingTests(TestCase):
    def test_defaults_as_the_app(self) -> None:
        s = load_settings({})
        self.assertEqual(s.secret_read_chain, ("env", "filesystem"))
        self.assertEqual(s.secret_write_provider, "")
        self.assertIn(s.secret_fs_base_path, ("/run/secrets", "../secrets"))
        self.assertEqual(s.vault_tenant_secret_path_template, "kv/data/tenants/{tenantId}/secrets")
        self.assertEqual(s.vault_app_secret_path, "kv/data/app/secrets")

    def test_bad_values_name_the_variable(self) -> None:
        for env, text in (
            ({"SECRET_READ_CHAIN": "filesystem,aws"}, "SECRET_READ_CHAIN"),
            ({"SECRET_WRITE_PROVIDER": "env"}, "SECRET_WRITE_PROVIDER"),
            ({"SECRET_READ_CHAIN": "vault"}, "VAULT_ADDR"),
            ({"SECRET_WRITE_PROVIDER": "vault", "VAULT_ADDR": "http://v:8200"}, "VAULT_TOKEN"),
            ({"VAULT_TENANT_SECRET_PATH_TEMPLATE": "kv/data/all"}, "{tenantId}"),
        ):
            with self.assertRaises(ConfigError) as caught:
                load_settings(env)
            self.assertIn(text, str(caught.exception))

    def test_vault_token_never_shown(self) -> None:
        s = load_settings({"SECRET_READ_CHAIN": "vault", "VAULT_ADDR": "http://v:8200",
                           "VAULT_TOKEN": "hvs.secret-token"})  # fmt: skip
        self.assertNotIn("hvs.secret-token", repr(s))
        self.assertNotIn("hvs.secret-token", str(s.masked()))


class OutputTests(TestCase):
    def test_config_says_which_won_without_the_password(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        env = dict(DB, DB_PASSWORD_SERVER="db-pw-9876", REDIS_HOST="redis",
                   REDIS_PASSWORD="redis-pw-5432")  # fmt: skip
        self.assertEqual(cli.main(["config"], environ=env, out=out, err=err), 0)
        text = out.getvalue()
        self.assertNotIn("db-pw-9876", text)
        self.assertNotIn("redis-pw-5432", text)
        self.assertRegex(text, r"DATABASE_URL\s+postgresql://app_user:\*\*\*@db.internal:5432/"
                               r"server\s+\(built from DB_HOST")  # fmt: skip
        self.assertRegex(text, r"REDIS_URL\s+redis://:\*\*\*@redis:6379/0\s+\(built from REDIS")
        self.assertRegex(text, r"DB_PASSWORD_SERVER\s+\*\*\*")

    def test_help_says_how_the_urls_are_built(self) -> None:
        flat = " ".join(str(tap.Options()).split())
        self.assertIn("built from DB_HOST", flat)
        self.assertIn("built from REDIS_HOST", flat)
        self.assertIn("--db-password-server=", flat)
        self.assertIn("--secret-read-chain=", flat)
        self.assertIn("say which one won", flat)

    def test_migrate_uses_the_built_url(self) -> None:
        from imapsvc.store import migrate

        seen: list = []
        self.patch(migrate, "main", lambda argv: seen.append(argv) or 0)
        env = dict(DB, DB_PASSWORD_SERVER="m/pw")
        status = cli.main(["migrate"], environ=env, out=io.StringIO(), err=io.StringIO())
        self.assertEqual(status, 0)
        self.assertEqual(
            seen, [["--database-url", "postgresql://app_user:m%2Fpw@db.internal:5432/server"]]
        )

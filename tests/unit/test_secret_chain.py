"""The app's secret providers (filesystem with real files, env), the read
chain (order, caching with a fake clock, invalidation, unavailable
providers, writes), and the sealed-versus-plaintext access token."""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.sealed_secrets import (
    SEALED_TEXT_PREFIX,
    TEXT_PLAINTEXT,
    TEXT_SEALED,
    TEXT_UNOPENABLE,
    SecretBox,
    classify_text,
    generate_key,
)
from imapsvc.secret_chain import (
    OWN_STORE,
    CredentialsMissing,
    EnvSecrets,
    FilesystemSecrets,
    NoSecretStore,
    SecretBackendUnavailable,
    SecretChain,
    build_providers,
    lookup_app_secret_sync,
)
from imapsvc.secret_providers import parse_kv2

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"
PW = "imap_password_" + P


def write(path: str, data: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)


class FilesystemTests(unittest.TestCase):
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="imapsvc-fs-")
        self.fs = FilesystemSecrets(self.base)

    def test_tenant_secret_file_trailing_newline_not_part(self):
        write(os.path.join(self.base, "tenants", T, PW), "pa ss\r\n")
        self.assertEqual(self.successResultOf(self.fs.get(T, PW)), "pa ss")
        write(os.path.join(self.base, "tenants", T, PW), "  lead and trail  \n")
        self.assertEqual(self.fs.read(T, PW), "  lead and trail  ")

    def test_absent_and_empty_are_not_there(self):
        self.assertIsNone(self.successResultOf(self.fs.get(T, PW)))
        write(os.path.join(self.base, "tenants", T, PW), "\n")
        self.assertIsNone(self.fs.read(T, PW))
        # Another tenant's file is never read.
        write(os.path.join(self.base, "tenants", "other", PW), "theirs")
        self.assertIsNone(self.fs.read(T, PW))

    def test_app_secret_is_directly_under_the_base(self):
        write(os.path.join(self.base, "db_password_server"), "dbpw\n")
        self.assertEqual(self.fs.read_app("db_password_server"), "dbpw")

    def test_path_traversal_refused(self):
        for tenant in ("..", "../x", "a/b", ""):
            self.assertRaises(ValueError, self.fs.read, tenant, PW)
        self.assertRaises(ValueError, self.fs.read, T, "../../etc/passwd")

    def test_unreadable_is_unavailable_not_missing(self):
        # A directory where the file should be: an OSError other than "absent".
        os.makedirs(os.path.join(self.base, "tenants", T, PW))
        f = self.failureResultOf(self.fs.get(T, PW), SecretBackendUnavailable)
        self.assertIn(PW, str(f.value))

    def test_oversized_file_refused(self):
        write(os.path.join(self.base, "tenants", T, PW), "x" * (64 * 1024 + 1))
        self.failureResultOf(self.fs.get(T, PW), SecretBackendUnavailable)

    def test_write_is_atomic_private_and_read_back(self):
        self.successResultOf(self.fs.put(T, "imap_refresh_token_" + P, "rt-1"))
        path = os.path.join(self.base, "tenants", T, "imap_refresh_token_" + P)
        self.assertEqual(open(path).read(), "rt-1")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.successResultOf(self.fs.put(T, "imap_refresh_token_" + P, "rt-2"))
        self.assertEqual(self.fs.read(T, "imap_refresh_token_" + P), "rt-2")
        # No temporary file left behind.
        self.assertEqual(os.listdir(os.path.dirname(path)), ["imap_refresh_token_" + P])

    def test_where_names_the_file(self):
        self.assertEqual(
            self.fs.where(T, PW), f"filesystem {os.path.join(self.base, 'tenants', T, PW)}"
        )


class EnvTests(unittest.TestCase):
    def test_app_spelling_then_upper_case(self):
        env = EnvSecrets({f"TENANT_{T}_{PW}": "exact"})
        self.assertEqual(env.read(T, PW), "exact")
        env = EnvSecrets({f"TENANT_{T}_{PW}".upper(): "upper"})
        self.assertEqual(env.read(T, PW), "upper")
        self.assertIsNone(EnvSecrets({}).read(T, PW))

    def test_prefix_prepended(self):
        env = EnvSecrets({f"APP_TENANT_{T}_{PW}": "p"}, prefix="APP")
        self.assertEqual(env.read(T, PW), "p")
        self.assertEqual(EnvSecrets({f"APP_TENANT_{T}_{PW}": "p"}, prefix="APP_").read(T, PW), "p")
        # Without the prefix the variable is not the provider's.
        self.assertIsNone(EnvSecrets({f"TENANT_{T}_{PW}": "p"}, prefix="APP").read(T, PW))

    def test_app_secret_and_where(self):
        env = EnvSecrets({"DB_PASSWORD_SERVER": "x"})
        self.assertEqual(env.read_app("db_password_server"), "x")
        self.assertEqual(env.where_app("db_password_server"),
                         "env db_password_server (or upper-cased)")  # fmt: skip
        self.assertNotIn("x", env.where_app("db_password_server").replace("or", ""))


class Recording:
    """A provider answering from a dict and counting lookups."""

    def __init__(self, name, values=None, fail=False):
        self.name = name
        self.values = dict(values or {})
        self.fail = fail
        self.calls = []
        self.puts = []

    def get(self, tenant, name):
        self.calls.append(name)
        if self.fail:
            return defer.fail(SecretBackendUnavailable(f"{self.name}: down"))
        return defer.succeed(self.values.get((tenant, name)))

    def put(self, tenant, name, value):
        self.puts.append((tenant, name, value))
        self.values[(tenant, name)] = value
        return defer.succeed(None)

    def where(self, tenant, name):
        return f"{self.name} {tenant}/{name}"


class Own(Recording):
    def __init__(self, values=None):
        super().__init__("own", values)
        self.deleted = []

    def delete(self, tenant, name):
        self.deleted.append(name)
        self.values.pop((tenant, name), None)
        return defer.succeed(None)


class ChainTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()

    def chain(self, own, *providers, cache_s=30.0, writer=None):
        return SecretChain(own, providers, self.clock, cache_s, writer)

    def test_own_store_first_then_chain_order(self):
        own = Own()
        a = Recording("filesystem", {(T, PW): "from-fs"})
        b = Recording("vault", {(T, PW): "from-vault"})
        chain = self.chain(own, a, b)
        self.assertEqual(self.successResultOf(chain.find(T, PW)), ("from-fs", "filesystem"))
        self.assertEqual((own.calls, a.calls, b.calls), ([PW], [PW], []))
        own.values[(T, PW)] = "sealed"
        chain.invalidate(T, P)
        self.assertEqual(self.successResultOf(chain.find(T, PW)), ("sealed", OWN_STORE))

    def test_cached_until_ttl_then_read_again(self):
        fs = Recording("filesystem", {(T, PW): "v1"})
        chain = self.chain(None, fs, cache_s=30)
        self.assertEqual(self.successResultOf(chain.get(T, PW)), "v1")
        fs.values[(T, PW)] = "v2"
        self.clock.advance(29)
        self.assertEqual(self.successResultOf(chain.get(T, PW)), "v1")
        self.assertEqual(len(fs.calls), 1)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(chain.get(T, PW)), "v2")
        self.assertEqual(len(fs.calls), 2)

    def test_absence_is_cached_too_and_zero_disables_the_cache(self):
        fs = Recording("filesystem")
        chain = self.chain(None, fs, cache_s=30)
        self.assertIsNone(self.successResultOf(chain.get(T, PW)))
        self.assertIsNone(self.successResultOf(chain.get(T, PW)))
        self.assertEqual(len(fs.calls), 1)
        fs2 = Recording("filesystem")
        uncached = self.chain(None, fs2, cache_s=0)
        uncached.get(T, PW)
        uncached.get(T, PW)
        self.assertEqual(len(fs2.calls), 2)

    def test_lookups_under_way_are_shared(self):
        # The folders of a provider log in together: one read of the secret.
        answers = []

        def get(tenant, name):
            answers.append(defer.Deferred())
            return answers[-1]

        vault = Recording("vault")
        vault.get = get
        chain = self.chain(None, vault)
        first, second = chain.get(T, PW), chain.get(T, PW)
        self.assertNoResult(first)
        self.assertEqual(len(answers), 1)
        chain.invalidate(T, P)  # the answer under way may be stale now
        third = chain.get(T, PW)
        self.assertEqual(len(answers), 2)
        answers[0].callback("v1")
        answers[1].callback("v2")
        self.assertEqual([self.successResultOf(d) for d in (first, second, third)],
                         ["v1", "v1", "v2"])

    def test_shared_lookup_failure_reaches_every_waiter(self):
        slow = defer.Deferred()
        vault = Recording("vault")
        vault.get = lambda tenant, name: slow
        chain = self.chain(None, vault)
        waiting = [chain.get(T, PW), chain.get(T, PW)]
        slow.errback(SecretBackendUnavailable("vault: down"))
        for d in waiting:
            self.failureResultOf(d, SecretBackendUnavailable)

    def test_invalidate_drops_only_that_providers_names(self):
        other = "imap_password_33333333-3333-3333-3333-333333333333"
        fs = Recording("filesystem", {(T, PW): "a", (T, other): "b"})
        chain = self.chain(None, fs)
        chain.get(T, PW)
        chain.get(T, other)
        fs.values[(T, PW)] = "a2"
        fs.values[(T, other)] = "b2"
        chain.invalidate(T, P)
        self.assertEqual(self.successResultOf(chain.get(T, PW)), "a2")
        self.assertEqual(self.successResultOf(chain.get(T, other)), "b")

    def test_unavailable_provider_skipped_when_a_later_one_has_it(self):
        vault = Recording("vault", fail=True)
        fs = Recording("filesystem", {(T, PW): "fs"})
        chain = self.chain(None, vault, fs)
        self.assertEqual(self.successResultOf(chain.get(T, PW)), "fs")

    def test_unavailable_and_found_nowhere_is_not_missing(self):
        chain = self.chain(None, Recording("vault", fail=True), Recording("filesystem"))
        f = self.failureResultOf(chain.get(T, PW), SecretBackendUnavailable)
        self.assertFalse(f.value.auth_failure)
        # Not cached: the next lookup asks again.
        self.failureResultOf(chain.get(T, PW), SecretBackendUnavailable)

    def test_put_goes_to_the_write_provider_and_drops_the_sealed_copy(self):
        name = "imap_refresh_token_" + P
        own = Own({(T, name): "old-sealed"})
        fs = Recording("filesystem")
        chain = self.chain(own, fs, writer=fs)
        self.assertEqual(self.successResultOf(chain.get(T, name)), "old-sealed")
        self.successResultOf(chain.put(T, name, "rotated"))
        self.assertEqual(fs.puts, [(T, name, "rotated")])
        self.assertEqual(own.deleted, [name])
        # The own copy no longer shadows the app's.
        self.assertEqual(self.successResultOf(chain.find(T, name)), ("rotated", "filesystem"))

    def test_write_provider_down_keeps_the_rotated_token_sealed(self):
        name = "imap_refresh_token_" + P
        own = Own()
        down = Recording("vault")
        down.put = lambda *a: defer.fail(SecretBackendUnavailable("vault: down"))
        chain = self.chain(own, down, writer=down)
        self.successResultOf(chain.put(T, name, "rotated"))
        self.assertEqual(own.puts, [(T, name, "rotated")])
        self.assertEqual(self.successResultOf(chain.find(T, name)), ("rotated", OWN_STORE))
        # Without an own store the failure is reported.
        self.failureResultOf(self.chain(None, down, writer=down).put(T, name, "r"),
                             SecretBackendUnavailable)  # fmt: skip

    def test_put_without_write_provider_seals_and_without_either_refuses(self):
        own = Own()
        chain = self.chain(own)
        self.successResultOf(chain.put(T, "n_" + P, "v"))
        self.assertEqual(own.puts, [(T, "n_" + P, "v")])
        self.assertFalse(self.chain(None).writable)
        self.failureResultOf(self.chain(None).put(T, "n_" + P, "v"), NoSecretStore)

    def test_places_in_order(self):
        chain = self.chain(Own(), Recording("filesystem"), Recording("env"))
        self.assertEqual(
            chain.places(T, PW), [OWN_STORE, f"filesystem {T}/{PW}", f"env {T}/{PW}"]
        )

    def test_build_providers_in_chain_order(self):
        providers = build_providers(
            ["env", "filesystem"], environ={}, fs_base_path="/x", env_prefix="", vault=None
        )
        self.assertEqual([p.name for p in providers], ["env", "filesystem"])
        self.assertRaises(
            ValueError, build_providers, ["vault"], environ={}, fs_base_path="/x",
            env_prefix="", vault=None,
        )  # fmt: skip


class MissingMessageTests(unittest.TestCase):
    def test_names_names_and_places_never_values(self):
        e = CredentialsMissing([(PW, ["imapsvc sealed store", "filesystem /s/tenants/t/x"])])
        self.assertIn(PW, str(e))
        self.assertIn("filesystem /s/tenants/t/x", str(e))
        self.assertFalse(e.auth_failure)
        self.assertEqual(e.code, "missing_credentials")


class AppSecretSyncTests(unittest.TestCase):
    def test_chain_order_and_places(self):
        base = tempfile.mkdtemp(prefix="imapsvc-fs-")
        write(os.path.join(base, "redis_password"), "from-file\n")
        value, where, places = lookup_app_secret_sync(
            "redis_password", ["env", "filesystem"], environ={}, fs_base_path=base, env_prefix=""
        )
        self.assertEqual(value, "from-file")
        self.assertEqual(where, f"filesystem {base}/redis_password")
        self.assertEqual(places[0], "env redis_password (or upper-cased)")
        value, where, _ = lookup_app_secret_sync(
            "redis_password", ["env", "filesystem"], environ={"X_REDIS_PASSWORD": "e"},
            fs_base_path=base, env_prefix="X",
        )  # fmt: skip
        self.assertEqual((value, where), ("e", "env X_redis_password (or upper-cased)"))

    def test_unreachable_vault_is_unavailable(self):
        from tests.rig.service import free_port

        self.assertRaises(
            SecretBackendUnavailable, lookup_app_secret_sync, "db_password_server", ["vault"],
            environ={}, fs_base_path="/nonexistent", env_prefix="",
            vault_addr=f"http://127.0.0.1:{free_port()}", vault_token="t", timeout_s=2,
        )  # fmt: skip


class Kv2ParseTests(unittest.TestCase):
    def test_shapes(self):
        body = b'{"data": {"data": {"a": "1"}, "metadata": {"version": 3}}}'
        self.assertEqual(parse_kv2(body), ({"a": "1"}, 3))
        deleted = b'{"data": {"data": null, "metadata": {"version": 4}}}'
        self.assertEqual(parse_kv2(deleted), ({}, 4))
        for bad in (b"<html>", b"[]", b'{"data": 1}', b'{"data": {"data": "x"}}', b"\xff"):
            self.assertRaises(SecretBackendUnavailable, parse_kv2, bad)


class SealedTextTests(unittest.TestCase):
    def setUp(self):
        self.box = SecretBox.from_setting(generate_key())
        self.name = "imap_access_token_" + P

    def test_new_sealed_values_carry_the_prefix(self):
        sealed = self.box.seal_text(T, self.name, "at-1")
        self.assertTrue(sealed.startswith(SEALED_TEXT_PREFIX))
        self.assertEqual(classify_text(self.box, T, self.name, sealed), (TEXT_SEALED, "at-1"))
        self.assertEqual(self.box.open_text(T, self.name, sealed), "at-1")

    def test_legacy_unprefixed_value_recognised_by_opening(self):
        legacy = self.box.seal_text(T, self.name, "at-old")[len(SEALED_TEXT_PREFIX):]
        self.assertEqual(classify_text(self.box, T, self.name, legacy), (TEXT_SEALED, "at-old"))
        # Another slot's legacy value does not authenticate: treated as the
        # app's plaintext, never "opened" into something else.
        self.assertEqual(classify_text(self.box, T, "other", legacy)[0], TEXT_PLAINTEXT)

    def test_plaintext_tokens_are_the_apps(self):
        # The last one starts like base64 of the legacy b"v1" layout.
        lookalike = "djE" + "A" * 60
        for token in ("ya29.a0AfH6SMB", "EwBwA8l6BAAU", lookalike):
            self.assertEqual(
                classify_text(self.box, T, self.name, token), (TEXT_PLAINTEXT, token)
            )
            self.assertEqual(classify_text(None, T, self.name, token), (TEXT_PLAINTEXT, token))

    def test_prefixed_value_under_another_key_or_without_key_is_unopenable(self):
        sealed = SecretBox.from_setting(generate_key()).seal_text(T, self.name, "at")
        self.assertEqual(classify_text(self.box, T, self.name, sealed), (TEXT_UNOPENABLE, None))
        self.assertEqual(classify_text(None, T, self.name, sealed), (TEXT_UNOPENABLE, None))

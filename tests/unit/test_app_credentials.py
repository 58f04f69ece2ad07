"""Credentials the way the main app leaves them: a password in its
filesystem provider, plaintext OAuth tokens in the row, the refresh token
only in the app's store; a rotated refresh token written back there; a
credential found nowhere is :class:`CredentialsMissing` naming the places.
The token endpoint is a StubTreq resource; files are real files."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime

import attr
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc import oauth
from imapsvc.sealed_secrets import (
    SEALED_TEXT_PREFIX,
    SecretBox,
    SecretStore,
    client_secret_name,
    generate_key,
    password_name,
    refresh_token_name,
)
from imapsvc.secret_chain import (
    CredentialsMissing,
    EnvSecrets,
    FilesystemSecrets,
    SecretChain,
)
from imapsvc.store.memory import MemoryStore
from tests.unit.test_oauth_flow import TokenEndpoint

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"


class AppCredentialTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(self.clock)
        self.box = SecretBox.from_setting(generate_key())
        self.own = SecretStore(self.store, self.box)
        self.base = tempfile.mkdtemp(prefix="imapsvc-app-secrets-")
        self.fs = FilesystemSecrets(self.base)
        self.endpoint = TokenEndpoint()
        self.http = StubTreq(self.endpoint)
        self.provider = self.store.add_provider(
            tenant=T, provider_id=P, host="imap.example.com", auth_type="oauth2",
            username="user@example.com", oauth_client_id="client-1",
            oauth_token_url="https://login.example.com/token",
            oauth_authorize_url="https://login.example.com/authorize",
        )  # fmt: skip

    def chain(self, writer=None, environ=None, own="default"):
        own = self.own if own == "default" else own
        providers = [self.fs, EnvSecrets(environ or {})]
        return SecretChain(own, providers, self.clock, 30.0, writer)

    def source(self, chain=None, box="default"):
        box = self.box if box == "default" else box
        return oauth.CredentialSource(self.store, chain or self.chain(), box, self.http, self.clock)

    def file(self, name, value):
        path = os.path.join(self.base, "tenants", T, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(value)
        return path

    def at(self, seconds):
        return datetime.fromtimestamp(self.clock.seconds() + seconds, tz=UTC)

    # -- passwords ------------------------------------------------------------------

    def test_password_only_in_the_apps_filesystem_provider(self):
        self.file(password_name(P), "app-pw\n")
        p = attr.evolve(self.provider, auth_type="password")
        creds = self.successResultOf(self.source().credentials(p))
        self.assertEqual((creds.mechanism, creds.secret), ("password", "app-pw"))

    def test_password_only_in_env_without_a_secret_key(self):
        env = {f"TENANT_{T}_{password_name(P)}": "env-pw"}
        src = self.source(self.chain(environ=env, own=None), box=None)
        p = attr.evolve(self.provider, auth_type="password")
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "env-pw")

    def test_missing_everywhere_names_names_and_places(self):
        p = attr.evolve(self.provider, auth_type="password")
        f = self.failureResultOf(self.source().credentials(p), CredentialsMissing)
        text = str(f.value)
        self.assertFalse(f.value.auth_failure)
        self.assertIn(password_name(P), text)
        self.assertIn("imapsvc sealed store", text)
        self.assertIn(os.path.join(self.base, "tenants", T, password_name(P)), text)
        self.assertIn(f"TENANT_{T}_{password_name(P)}", text)
        # The old name still catches it.
        self.assertIsInstance(f.value, oauth.MissingCredentials)

    def test_changed_password_read_again_after_invalidate(self):
        path = self.file(password_name(P), "old")
        p = attr.evolve(self.provider, auth_type="password")
        src = self.source()
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "old")
        with open(path, "w") as f:
            f.write("new")
        # Within the cache lifetime the old answer is reused...
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "old")
        # ...until the server refuses it and the folder drops the cache.
        src.invalidate(T, P)
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "new")

    # -- OAuth: the app's plaintext columns ------------------------------------------

    def test_apps_plaintext_access_token_used_while_valid(self):
        p = attr.evolve(self.provider, access_token="ya29.app-token",
                        token_expires_at=self.at(3600))  # fmt: skip
        creds = self.successResultOf(self.source().credentials(p))
        self.assertEqual((creds.mechanism, creds.secret), ("xoauth2", "ya29.app-token"))
        self.assertEqual(self.endpoint.requests, [])

    def test_expired_app_token_refreshed_with_app_store_and_row_secrets(self):
        # Row as the app leaves it: plaintext access token (expired) and
        # client secret; the refresh token only in the app's filesystem store.
        self.store.update_provider(T, P, access_token="ya29.expired",
                                   token_expires_at=self.at(-10),
                                   oauth_client_secret="row-client-secret")  # fmt: skip
        p = self.successResultOf(self.store.get_provider(T, P))
        self.file(refresh_token_name(P), "rt-app\n")
        self.endpoint.answers.append(
            (200, {"access_token": "at-new", "refresh_token": "rt-rotated", "expires_in": 3600})
        )
        chain = self.chain(writer=self.fs)
        src = self.source(chain)
        d = src.credentials(p)
        self.http.flush()
        self.assertEqual(self.successResultOf(d).secret, "at-new")
        [form] = self.endpoint.requests
        self.assertEqual(form["refresh_token"], "rt-app")
        self.assertEqual(form["client_secret"], "row-client-secret")
        # The rotated refresh token went to SECRET_WRITE_PROVIDER (the app sees it).
        self.assertEqual(self.fs.read(T, refresh_token_name(P)), "rt-rotated")
        self.assertIsNone(self.successResultOf(self.own.get(T, refresh_token_name(P))))
        # The app's columns are as the app left them.
        row = self.store.provider_row(T, P)
        self.assertEqual(row["access_token"], "ya29.expired")
        self.assertEqual(row["oauth_client_secret"], "row-client-secret")
        # The new token is remembered: no second refresh.
        self.assertEqual(self.successResultOf(src.credentials(p)).secret, "at-new")
        self.assertEqual(len(self.endpoint.requests), 1)

    def test_refresh_token_from_the_rows_plaintext_column_rotation_sealed(self):
        self.store.update_provider(T, P, refresh_token="rt-row", access_token=None)
        p = self.successResultOf(self.store.get_provider(T, P))
        self.endpoint.answers.append(
            (200, {"access_token": "at-1", "refresh_token": "rt-2", "expires_in": 3600})
        )
        d = self.source().credentials(p)
        self.http.flush()
        self.assertEqual(self.successResultOf(d).secret, "at-1")
        self.assertEqual(self.endpoint.requests[0]["refresh_token"], "rt-row")
        # No write provider: the rotation is sealed in the service's store,
        # which is read first from now on; the row's column is untouched.
        self.assertEqual(self.successResultOf(self.own.get(T, refresh_token_name(P))), "rt-2")
        row = self.store.provider_row(T, P)
        self.assertEqual(row["refresh_token"], "rt-row")
        # The access token column was empty: the service's own token goes
        # there, sealed and recognisable.
        self.assertTrue(row["access_token"].startswith(SEALED_TEXT_PREFIX))

    def test_client_secret_in_app_store_wins_over_row(self):
        self.file(client_secret_name(P), "fs-cs")
        self.file(refresh_token_name(P), "rt")
        p = attr.evolve(self.provider, oauth_client_secret="row-cs")
        self.endpoint.answers.append((200, {"access_token": "a", "expires_in": 3600}))
        self.source().credentials(p)
        self.http.flush()
        self.assertEqual(self.endpoint.requests[0]["client_secret"], "fs-cs")

    def test_expired_token_and_no_refresh_token_anywhere_is_missing(self):
        p = attr.evolve(self.provider, access_token="ya29.expired", token_expires_at=self.at(-1))
        f = self.failureResultOf(self.source().credentials(p), CredentialsMissing)
        self.assertNotIsInstance(f.value, oauth.AwaitingConsent)
        self.assertIn(refresh_token_name(P), str(f.value))
        self.assertIn("imap_email_provider_config.refresh_token", str(f.value))
        self.assertNotIn("ya29", str(f.value))

    def test_never_consented_is_awaiting_consent_naming_places(self):
        f = self.failureResultOf(self.source().credentials(self.provider), oauth.AwaitingConsent)
        self.assertIsInstance(f.value, CredentialsMissing)
        self.assertIn(refresh_token_name(P), str(f.value))

    def test_no_refresh_without_a_place_for_the_rotated_token(self):
        self.file(refresh_token_name(P), "rt")
        src = self.source(self.chain(own=None), box=None)
        p = attr.evolve(self.provider, access_token="ya29.x", token_expires_at=self.at(-1))
        self.failureResultOf(src.credentials(p), oauth.NoSecretStore)
        self.assertEqual(self.endpoint.requests, [])

    def test_own_sealed_row_token_still_used(self):
        sealed = self.box.seal_text(T, oauth.access_token_name(P), "at-ours")
        legacy = sealed[len(SEALED_TEXT_PREFIX):]
        for value in (sealed, legacy):
            p = attr.evolve(self.provider, access_token=value, token_expires_at=self.at(3600))
            self.assertEqual(self.successResultOf(self.source().credentials(p)).secret, "at-ours")
        self.assertEqual(self.endpoint.requests, [])

    def test_own_token_row_overwritten_after_refresh_but_never_the_apps(self):
        # Ours (sealed) in the row: replaced by the new sealed token.
        sealed = self.box.seal_text(T, oauth.access_token_name(P), "at-ours")
        self.store.update_provider(T, P, access_token=sealed, token_expires_at=self.at(-1))
        self.successResultOf(self.own.put(T, refresh_token_name(P), "rt"))
        p = self.successResultOf(self.store.get_provider(T, P))
        self.endpoint.answers.append((200, {"access_token": "at-2", "expires_in": 3600}))
        self.source().credentials(p)
        self.http.flush()
        row = self.store.provider_row(T, P)
        self.assertEqual(self.box.open_text(T, oauth.access_token_name(P), row["access_token"]),
                         "at-2")  # fmt: skip

    def test_stale_sealed_refresh_token_falls_back_to_the_apps(self):
        # The service once sealed a (rotated) refresh token; the app has
        # re-consented since and keeps the live one in its store.
        self.successResultOf(self.own.put(T, refresh_token_name(P), "rt-stale"))
        self.file(refresh_token_name(P), "rt-app-live")
        p = attr.evolve(self.provider, access_token="ya29.x", token_expires_at=self.at(-1))
        self.endpoint.answers.append((400, {"error": "invalid_grant"}))
        self.endpoint.answers.append((200, {"access_token": "at-ok", "expires_in": 3600}))
        d = self.source().credentials(p)
        self.http.flush()
        self.assertEqual(self.successResultOf(d).secret, "at-ok")
        self.assertEqual([r["refresh_token"] for r in self.endpoint.requests],
                         ["rt-stale", "rt-app-live"])  # fmt: skip
        # Not rotated: the stale sealed copy no longer shadows the app's token.
        self.assertIsNone(self.successResultOf(self.own.get(T, refresh_token_name(P))))

    def test_refused_apps_refresh_token_is_not_retried(self):
        self.file(refresh_token_name(P), "rt-app")
        p = attr.evolve(self.provider, access_token="ya29.x", token_expires_at=self.at(-1),
                        refresh_token="rt-row")  # fmt: skip
        self.endpoint.answers.append((400, {"error": "invalid_grant"}))
        d = self.source().credentials(p)
        self.http.flush()
        f = self.failureResultOf(d, oauth.TokenEndpointError)
        self.assertTrue(f.value.auth_failure)
        self.assertEqual(len(self.endpoint.requests), 1)

"""Redaction: credentials never reach a log line."""

from __future__ import annotations

import base64
import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from imapsvc.log_output import (
    MASK,
    is_sensitive_key,
    json_observer_for,
    redact,
    redact_event,
    text_observer_for,
)

PASSWORD = "Tr0ub4dor&3-horse"
ACCESS_TOKEN = "ya29.a0AfH6SMBx3kQ9Zr-p_Lm2Wq7tYvXcN0bEjK8dF5gHsJ1uI4oP6lA7rT"
REFRESH_TOKEN = "1//0gLz9xYqWe3RtY-L9IrAbCdEfGhIjKlMnOpQrStUvWxYz"
CLIENT_SECRET = "GOCSPX-4bW9qLmN2pXz7RtVk8Yc"
AUTH_CODE = "4/0AeaYSHBgX7sKq9Lm2NpQ"
ADMIN_TOKEN = "adm_7f3e9c1b5d2a8e4f6b0c"
XOAUTH2 = base64.b64encode(
    f"user=alice@example.com\x01auth=Bearer {ACCESS_TOKEN}\x01\x01".encode()
).decode()
PLAIN = base64.b64encode(f"\x00alice@example.com\x00{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, ACCESS_TOKEN, REFRESH_TOKEN, CLIENT_SECRET, AUTH_CODE, ADMIN_TOKEN, XOAUTH2,
           PLAIN)  # fmt: skip


class RedactTests(TestCase):
    def check(self, text: str, expected: str) -> None:
        self.assertEqual(redact(text), expected)
        self.assertEqual(redact(expected), expected, "redact must be idempotent")

    def test_authorization_header(self) -> None:
        self.check(f"Authorization: Bearer {ACCESS_TOKEN}", f"Authorization: Bearer {MASK}")
        self.check(
            f"headers {{b'Authorization': [b'Bearer {ACCESS_TOKEN}']}}",
            f"headers {{b'Authorization': [b'Bearer {MASK}']}}",
        )
        self.check("authorization=Basic YWxpY2U6c2VjcmV0", f"authorization=Basic {MASK}")

    def test_imap_login(self) -> None:
        self.check(f'a001 LOGIN "alice@example.com" "{PASSWORD}"', f"a001 LOGIN {MASK} {MASK}")
        self.check(f"a001 LOGIN alice {PASSWORD}", f"a001 LOGIN {MASK} {MASK}")
        self.check('A7 login "al\\"ice" "pa ss word"\r\n', f"A7 login {MASK} {MASK}\r\n")
        # ordinary prose that mentions logging in keeps its words
        self.check("login failed for alice, retrying", "login failed for alice, retrying")

    def test_authenticate(self) -> None:
        self.check(f"0003 AUTHENTICATE XOAUTH2 {XOAUTH2}", f"0003 AUTHENTICATE XOAUTH2 {MASK}")
        self.check(f"a2 authenticate PLAIN {PLAIN}", f"a2 authenticate PLAIN {MASK}")

    def test_lone_sasl_lines(self) -> None:
        self.check(XOAUTH2, MASK)
        self.check(f"b'{XOAUTH2}'", f"b'{MASK}'")
        self.check(f"C: {PLAIN}", f"C: {MASK}")
        self.check(f"client sent {XOAUTH2} after +", f"client sent {MASK} after +")

    def test_decoded_xoauth2(self) -> None:
        raw = f"user=alice@example.com\x01auth=Bearer {ACCESS_TOKEN}\x01\x01"
        self.check(raw, f"user=alice@example.com\x01auth=Bearer {MASK}\x01\x01")
        self.check(repr(raw), repr(f"user=alice@example.com\x01auth=Bearer {MASK}\x01\x01"))

    def test_query_parameters(self) -> None:
        self.check(
            f"GET /api/email/oauth/imap/callback?code={AUTH_CODE}&state=abc",
            f"GET /api/email/oauth/imap/callback?code={MASK}&state=abc",
        )
        self.check(
            f"grant_type=refresh_token&refresh_token={REFRESH_TOKEN}&client_id=cid"
            f"&client_secret={CLIENT_SECRET}",
            f"grant_type=refresh_token&refresh_token={MASK}&client_id=cid&client_secret={MASK}",
        )
        self.check(f"#access_token={ACCESS_TOKEN}&x=1", f"#access_token={MASK}&x=1")

    def test_json_body(self) -> None:
        body = json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3599,
                           "refresh_token": REFRESH_TOKEN})  # fmt: skip
        self.check(
            body, f'{{"access_token": "{MASK}", "expires_in": 3599, "refresh_token": "{MASK}"}}'
        )

    def test_url_password(self) -> None:
        self.check(
            f"connecting to postgresql://svc:{PASSWORD}@db:5432/app",
            f"connecting to postgresql://svc:{MASK}@db:5432/app",
        )

    def test_ordinary_text_untouched(self) -> None:
        for text in (
            "UID FETCH 1:200 (UID RFC822.SIZE BODY.PEEK[HEADER])",
            "folder INBOX uid_validity=1735234567 last_uid=4242",
            "Message-ID <CAF=abcdEFGH1234ijklMNOP5678@mail.gmail.com>",
            "twistd 26.10.0 (/usr/local/bin/python3 3.11.7) starting up.",
            "token_expires_at=2026-01-10T12:00:00.000Z",
        ):
            self.assertEqual(redact(text), text)

    def test_sensitive_keys(self) -> None:
        for key in ("password", "client_secret", "access_token", "refresh_token",
                    "Authorization", "admin_token", "secret_key", "token"):  # fmt: skip
            self.assertTrue(is_sensitive_key(key), key)
        for key in ("token_expires_at", "provider_id", "folder", "secure", "mailbox"):
            self.assertFalse(is_sensitive_key(key), key)


class ObserverTests(TestCase):
    def emit_everything(self, log: Logger) -> None:
        log.info("login as {user} with {password}", user="alice", password=PASSWORD)
        log.info("sent {line}", line=f"a001 LOGIN alice {PASSWORD}")
        log.info("sent {line}", line=f"0003 AUTHENTICATE XOAUTH2 {XOAUTH2}")
        log.info("continuation {line!r}", line=XOAUTH2.encode())
        log.info("token response {body}", body={"access_token": ACCESS_TOKEN,
                                                "refresh_token": REFRESH_TOKEN})  # fmt: skip
        log.info("request {headers}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        log.info(f"callback ?code={AUTH_CODE}&state=s")  # noqa: G004 - literal on purpose
        log.warn("config", client_secret=CLIENT_SECRET, access_token=ACCESS_TOKEN)
        log.info("xoauth2 {raw}", raw=f"user=a@b\x01auth=Bearer {ACCESS_TOKEN}\x01\x01")
        log.info("PLAIN {payload}", payload=PLAIN)
        try:
            raise ValueError(f"server said: a1 LOGIN alice {PASSWORD} -> NO")
        except ValueError:
            log.failure("login failed", Failure(), token=REFRESH_TOKEN)
        log.error("bad {thing}", thing=[f"refresh_token={REFRESH_TOKEN}", {"password": PASSWORD}])

    def capture(self, make_observer) -> str:  # type: ignore[no-untyped-def]
        out = io.StringIO()
        publisher = LogPublisher(make_observer(out))
        self.emit_everything(Logger(namespace="test.redaction", observer=publisher))
        return out.getvalue()

    def assertNoSecrets(self, text: str) -> None:
        for secret in SECRETS:
            self.assertNotIn(secret, text)
        # the decoded XOAUTH2 token fragment as well
        self.assertNotIn(ACCESS_TOKEN[:20], text)
        self.assertNotIn(PASSWORD[:10], text)

    def test_json_output_has_no_credentials(self) -> None:
        text = self.capture(json_observer_for)
        self.assertNoSecrets(text)
        lines = [json.loads(line) for line in text.splitlines()]
        self.assertEqual(len(lines), 12)
        first = lines[0]
        self.assertEqual(first["msg"], f"login as alice with {MASK}")
        self.assertEqual(first["password"], MASK)
        self.assertEqual(first["user"], "alice")
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["ns"], "test.redaction")
        self.assertRegex(first["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        failure = lines[10]
        self.assertEqual(failure["level"], "critical")
        self.assertEqual(failure["exc_type"], "ValueError")
        self.assertIn("ValueError: server said: a1 LOGIN *** *** -> NO", failure["failure"])
        self.assertEqual(lines[7]["level"], "warn")

    def test_text_output_has_no_credentials(self) -> None:
        text = self.capture(text_observer_for)
        self.assertNoSecrets(text)
        self.assertIn(f"login as alice with {MASK}", text)
        self.assertIn("ValueError: server said", text)  # the traceback is kept, redacted

    def test_redact_event_keeps_original(self) -> None:
        event = {"log_format": "x {password}", "password": PASSWORD, "log_level": LogLevel.info}
        safe = redact_event(event)
        self.assertEqual(event["password"], PASSWORD)
        self.assertEqual(safe["password"], MASK)
        self.assertEqual(safe["log_message"], f"x {MASK}")

    def test_unformattable_event_does_not_raise(self) -> None:
        safe = redact_event({"log_format": "{missing} {", "log_level": LogLevel.info})
        self.assertIsInstance(safe["log_message"], str)

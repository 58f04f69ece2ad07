"""The folder's recovery bookkeeping (imapsvc.core.session_attempt)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.session_attempt import BYE, QUARANTINE, SessionAttempt


class TokenRetryTests(SynchronousTestCase):
    def test_a_refused_token_is_retried_once_until_a_login_works(self) -> None:
        attempt = SessionAttempt()
        attempt.logging_in("xoauth2")
        first, second = ValueError("refused"), ValueError("refused again")
        self.assertTrue(attempt.retry_refused_token(first))
        self.assertTrue(attempt.force_token_refresh)
        self.assertIs(attempt.refusal, first)
        attempt.token_refreshed()
        self.assertFalse(attempt.force_token_refresh)
        # Refused again with the refreshed token: now the refusal counts.
        self.assertFalse(attempt.retry_refused_token(second))
        self.assertIs(attempt.refusal, first)
        attempt.logged_in()
        self.assertIsNone(attempt.refusal)
        self.assertTrue(attempt.retry_refused_token(second))

    def test_a_refused_password_is_not_retried(self) -> None:
        attempt = SessionAttempt()
        attempt.logging_in("password")
        self.assertFalse(attempt.retry_refused_token(ValueError("no")))
        self.assertFalse(attempt.force_token_refresh)
        self.assertIsNone(attempt.refusal)

    def test_the_refusal_stands_when_no_refresh_can_be_had(self) -> None:
        attempt = SessionAttempt()
        self.assertIsNone(attempt.refusal_stands())
        attempt.logging_in("oauthbearer")
        refusal = ValueError("refused")
        attempt.retry_refused_token(refusal)
        self.assertIs(attempt.refusal_stands(), refusal)
        self.assertFalse(attempt.force_token_refresh)


class ConnectionEndTests(SynchronousTestCase):
    def test_the_end_of_a_connection_takes_its_reason_and_error(self) -> None:
        attempt = SessionAttempt()
        attempt.connected()
        attempt.cause("ProtocolViolation")
        attempt.cause("Throttled")  # the first cause named stays
        attempt.failed("first")
        attempt.failed("second")
        self.assertEqual(attempt.connection_ended(), ("ProtocolViolation", "second"))
        # Nothing sticks to the next connection.
        self.assertEqual(attempt.connection_ended(), (None, None))

    def test_bye_and_quarantine_name_the_reason(self) -> None:
        attempt = SessionAttempt()
        attempt.cause("ProtocolViolation")
        attempt.quarantined()
        self.assertEqual(attempt.reconnect_reason, QUARANTINE)
        attempt.said_bye()
        self.assertEqual(attempt.connection_ended(), (BYE, None))

    def test_a_new_session_forgets_the_old_error(self) -> None:
        attempt = SessionAttempt()
        attempt.failed("old")
        attempt.connected()
        self.assertEqual(attempt.connection_ended(), (None, None))

    def test_fd_exhaustion_is_warned_once_per_streak(self) -> None:
        attempt = SessionAttempt()
        self.assertTrue(attempt.warn_fd_exhaustion())
        self.assertFalse(attempt.warn_fd_exhaustion())
        attempt.connected()
        self.assertTrue(attempt.warn_fd_exhaustion())

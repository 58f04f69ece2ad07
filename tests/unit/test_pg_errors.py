"""Connection failures get the reason that points at the fix."""

from __future__ import annotations

from twisted.trial import unittest

from imapsvc.store.pg_errors import connect_failure

_HEAD = 'connection to server at "127.0.0.1", port 5432 failed: '


class ConnectFailureTests(unittest.TestCase):
    def test_missing_database(self) -> None:
        reason = connect_failure(Exception(_HEAD + 'FATAL:  database "app" does not exist\n'))
        self.assertTrue(reason.startswith('the database "app" does not exist'), reason)
        self.assertIn("createdb app", reason)

    def test_missing_role(self) -> None:
        reason = connect_failure(Exception(_HEAD + 'FATAL:  role "svc" does not exist'))
        self.assertTrue(reason.startswith('the server has no role "svc"'), reason)

    def test_refused_password(self) -> None:
        reason = connect_failure(
            Exception(_HEAD + 'FATAL:  password authentication failed for user "svc"'))
        self.assertTrue(reason.startswith("the database refused the login"), reason)

    def test_unreachable_stays_unreachable(self) -> None:
        reason = connect_failure(Exception(_HEAD + "Connection refused\n\tIs the server running?"))
        self.assertEqual(
            reason,
            "cannot reach the database: " + _HEAD + "Connection refused Is the server running?",
        )

    def test_hostile_names_do_not_backtrack(self) -> None:
        # A database name is user input: a long unterminated quote stays linear.
        text = 'database "' + "x" * 100_000
        self.assertTrue(connect_failure(Exception(text)).startswith("cannot reach"))

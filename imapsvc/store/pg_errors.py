"""One-line reasons for a failed Postgres connection, for the CLI and ``migrate``.

libpq reports every connection problem as ``OperationalError``. "Cannot reach
the database" is right for a refused or timed-out connection, and wrong for a
server that answered but refused the database, role or password: those need
another fix, so they get their own words. libpq's text names host, port,
database and role, never the password.
"""

from __future__ import annotations

import re

_MISSING_DB = re.compile(r'database "([^"]{1,200})" does not exist')
_MISSING_ROLE = re.compile(r'role "([^"]{1,200})" does not exist')
_AUTH = re.compile(r"(password|peer|ident|SCRAM) authentication failed|no password supplied")


def connect_failure(error: BaseException) -> str:
    """The reason a connection attempt failed, as one line."""
    text = " ".join(str(error).split())
    missing = _MISSING_DB.search(text)
    if missing:
        return (
            f'the database "{missing.group(1)}" does not exist on the server: create it'
            f" (createdb {missing.group(1)}), then run `python -m imapsvc migrate`"
        )
    role = _MISSING_ROLE.search(text)
    if role:
        return f'the server has no role "{role.group(1)}": {text}'
    if _AUTH.search(text):
        return f"the database refused the login (check the user and password): {text}"
    return f"cannot reach the database: {text}"

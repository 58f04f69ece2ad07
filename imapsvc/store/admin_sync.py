"""Synchronous store access for the admin CLI (no reactor).

``python -m imapsvc provider ...`` adds, lists, switches and removes
providers, stores their secrets and resets cursors. Those are a handful of
statements run once, so the CLI talks to the database directly: sqlite3
through :class:`imapsvc.store.sqlite.SqliteOps` (the very code the service
uses) or psycopg2 for Postgres
(:class:`imapsvc.store.admin_postgres.PostgresAdmin`), with the same tables
and columns as :class:`imapsvc.store.postgres.PostgresStore`.

Every failure a user can cause or meet is an :class:`AdminError` with a
one-line message (no DSN password, no secret).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import date
from typing import Any, Optional

from imapsvc.model import PoisonMessage, ProviderConfig


class AdminError(Exception):
    """A one-line, user-facing reason an admin operation failed."""


class InputError(AdminError):
    """An argument or a setting is wrong, not the operation: exit status 2,
    like argparse's usage errors (``docs/cli.md``)."""


class NotFound(AdminError):
    """The tenant has no such provider."""


class AdminStore:
    """What the CLI needs from a store, synchronously. Subclasses:
    :class:`SqliteAdmin`, :class:`PostgresAdmin`."""

    #: ``"sqlite"`` or ``"postgres"``.
    kind = ""

    def describe(self) -> str:
        """Where the data is, safe to print."""
        raise NotImplementedError

    def add_provider(self, config: ProviderConfig) -> None:
        raise NotImplementedError

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        """``(config, provider_type)`` of every provider, any state."""
        raise NotImplementedError

    def get_provider(self, tenant: str, provider_id: str) -> ProviderConfig:
        """:raises NotFound:"""
        raise NotImplementedError

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        """:raises NotFound:"""
        raise NotImplementedError

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        """:raises NotFound:"""
        raise NotImplementedError

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str]) -> None:
        """:raises NotFound:"""
        raise NotImplementedError

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> list[str]:
        """Store a pending ``resync --since`` (schema/0008). :raises NotFound:"""
        raise NotImplementedError

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> None:
        """The provider's own first-sync window. :raises NotFound:"""
        raise NotImplementedError

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> None:
        """``imap_provider_options.write_back`` (``None``: the environment
        default). :raises NotFound:"""
        raise NotImplementedError

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> None:
        """``imap_provider_options.oauth_delegate`` (``None``: the mailbox's
        own user consents). :raises NotFound:"""
        raise NotImplementedError

    def clear_auth_pause(self, tenant: str, provider_id: str) -> bool:
        """New credentials were stored: reset the authentication-failure
        counters and lift an ``auth_failure`` pause (never a ``manual`` or
        ``tenant_cancelled`` one). :return: whether a pause was lifted.
        :raises NotFound:"""
        raise NotImplementedError

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        raise NotImplementedError

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        raise NotImplementedError

    def delete_secret(self, tenant: str, name: str) -> None:
        raise NotImplementedError

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        """Messages with failed fetches (:meth:`IStore.list_poison`)."""
        raise NotImplementedError

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        """:meth:`IStore.retry_poison`; ``False`` when unknown."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def missing(tenant: str, provider_id: str) -> NotFound:
    return NotFound(f"tenant {tenant} has no provider {provider_id}")


class SqliteAdmin(AdminStore):
    """The embedded store's file.

    :param create: create the file and its schema when missing (``migrate``,
        ``provider add``); otherwise a missing file is an error, so a typo in
        ``IMAPSVC_SQLITE_PATH`` does not quietly start an empty database.
    """

    kind = "sqlite"

    def __init__(self, path: str, create: bool = False) -> None:
        from imapsvc.store.sqlite import SqliteOps
        from imapsvc.store.sqlite_schema import SchemaTooNew, connect, ensure_schema

        self.path = path
        if not create and not os.path.exists(path):
            raise AdminError(
                f"no SQLite database at {path} (IMAPSVC_SQLITE_PATH): "
                "run `python -m imapsvc migrate` or `provider add` first")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            # SQLite's own words here are "unable to open database file".
            raise AdminError(f"cannot create the SQLite database {path}: no folder {folder}")
        try:
            self.conn = connect(path)
        except sqlite3.Error as e:
            raise AdminError(f"cannot open the SQLite database {path}: {e}") from None
        try:
            self.created = ensure_schema(self.conn)
        except (SchemaTooNew, sqlite3.Error) as e:
            self.conn.close()
            raise AdminError(f"SQLite database {path}: {e}") from None
        self.ops = SqliteOps(self.conn, time.time)

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.IntegrityError as e:
            raise AdminError(integrity_message(str(e))) from None
        except sqlite3.Error as e:
            raise AdminError(f"SQLite database {self.path}: {e}") from None

    def add_provider(self, config: ProviderConfig) -> None:
        self._guard(self.ops.insert_provider, config)

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        result: list[tuple[ProviderConfig, str]] = self._guard(self.ops.list_providers, tenant)
        return result

    def get_provider(self, tenant: str, provider_id: str) -> ProviderConfig:
        config = self._guard(self.ops.get_provider, tenant, provider_id)
        if config is None:
            raise missing(tenant, provider_id)
        return config  # type: ignore[no-any-return]

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        if not self._guard(self.ops.set_active, tenant, provider_id, active):
            raise missing(tenant, provider_id)

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        if not self._guard(self.ops.remove_provider, tenant, provider_id):
            raise missing(tenant, provider_id)

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str]) -> None:
        if not self._guard(self.ops.reset_cursors, tenant, provider_id, folder):
            raise missing(tenant, provider_id)

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> list[str]:
        folders = self._guard(self.ops.request_backfill, tenant, provider_id, folder, since)
        if folders is None:
            raise missing(tenant, provider_id)
        return folders  # type: ignore[no-any-return]

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> None:
        if not self._guard(self.ops.set_first_sync_since_days, tenant, provider_id, days):
            raise missing(tenant, provider_id)

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> None:
        if not self._guard(self.ops.set_write_back, tenant, provider_id, mode):
            raise missing(tenant, provider_id)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> None:
        if not self._guard(self.ops.set_oauth_delegate, tenant, provider_id, delegate):
            raise missing(tenant, provider_id)

    def clear_auth_pause(self, tenant: str, provider_id: str) -> bool:
        def run() -> Optional[str]:
            rows = self.conn.execute(
                "SELECT inbound_pause_reason FROM email_providers WHERE tenant = ? AND id = ?",
                (tenant, provider_id)).fetchall()
            if not rows:
                raise missing(tenant, provider_id)
            self.ops.reset_auth_failures(tenant, provider_id)
            return rows[0][0]  # type: ignore[no-any-return]

        return self._guard(run) == "auth_failure"

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._guard(self.ops.put_secret, tenant, name, ciphertext)

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        return self._guard(self.ops.get_secret, tenant, name)  # type: ignore[no-any-return]

    def delete_secret(self, tenant: str, name: str) -> None:
        self._guard(self.ops.delete_secret, tenant, name)

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        return self._guard(self.ops.list_poison, tenant, provider_id)  # type: ignore[no-any-return]

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        return bool(self._guard(self.ops.retry_poison, tenant, provider_id, folder,
                                uid_validity, uid))

    def close(self) -> None:
        self.conn.close()


def integrity_message(text: str) -> str:
    if "mailbox" in text:
        return "the tenant already has a provider with that mailbox"
    if "email_providers" in text or "pkey" in text or "PRIMARY" in text.upper():
        return "the tenant already has a provider with that id"
    return f"refused by the database: {' '.join(text.split())}"


def open_store(database_url: str, sqlite_path: str, create: bool = False) -> AdminStore:
    """Postgres when ``database_url`` is set, else the SQLite file."""
    if database_url:
        from imapsvc.store.admin_postgres import PostgresAdmin

        return PostgresAdmin(database_url)
    return SqliteAdmin(sqlite_path, create=create)


def folder_state_json(config: ProviderConfig) -> str:
    """The cursors of a provider as compact JSON (for ``provider list --json``)."""
    return json.dumps({k: v.to_json() for k, v in config.folder_state.items()}, sort_keys=True)

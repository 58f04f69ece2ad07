"""The :class:`~imapsvc.interfaces.IStore` contract, run against every store.

A test case mixes in :class:`StoreContractMixin`, sets ``self.store`` in
``setUp`` and implements the few helpers that need to reach under the
interface (inserting provider rows as the main app would, forcing a lease to
expire, reading raw columns). Tenants and provider ids are uuids because the
Postgres columns are.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Optional

import attr
from twisted.internet import defer

from imapsvc.core.event import StreamEntry
from imapsvc.interfaces import LeaseLost
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    OUTCOME_SKIPPED,
    FolderCursor,
    MessageRecord,
    ProviderConfig,
)


def new_id() -> str:
    return str(uuid.uuid4())


def record(uid: int, folder: str = "INBOX", message_id: Optional[str] = None,
           outcome: str = OUTCOME_PUBLISHED, uid_validity: str = "7") -> MessageRecord:
    """A ledger record for message ``uid`` of ``folder``."""
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{folder}/{uid_validity}/{uid}"))
    fields = None
    if outcome == OUTCOME_PUBLISHED:
        fields = {"event_id": event_id, "event_name": "INBOUND_EMAIL_RECEIVED",
                  "payload_json": '{"subject": "h\\u00e9 \u00e9\U0001f600"}', "user_id": ""}
    return MessageRecord(
        dedupe_key=f"imap:{folder}:{uid_validity}:{uid}",
        folder=folder,
        uid_validity=uid_validity,
        uid=uid,
        message_id_key=message_id,
        outcome=outcome,
        event_id=event_id,
        reason="no from address" if outcome == OUTCOME_SKIPPED else None,
        fields=fields,
    )


class StoreContractMixin:
    """Contract tests for an ``IStore``; mix into a ``TestCase``."""

    store: Any

    # -- what a concrete test case provides ---------------------------------

    def insert_provider(self, **kwargs: Any) -> Any:
        """Insert a provider in both tables. Keywords: ProviderConfig fields
        plus ``provider_type`` and ``inbound_pause_reason``.

        :rtype: ProviderConfig or Deferred of it
        """
        raise NotImplementedError

    def expire_lease(self, tenant: str, provider_id: str) -> Any:
        """Make the current lease expired by the store's clock."""
        raise NotImplementedError

    def provider_row(self, tenant: str, provider_id: str) -> Any:
        """Every column of both tables as a dict (or a Deferred of it)."""
        raise NotImplementedError

    def ledger_rows(self, tenant: str, provider_id: str) -> Any:
        """The provider's ledger rows as dicts (or a Deferred of them)."""
        raise NotImplementedError

    def backdate(self, seconds: float) -> Any:
        """Make every ledger and outbox row ``seconds`` older (memory: move
        the clock)."""
        raise NotImplementedError

    def now(self) -> datetime:
        """The store's clock."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------

    @defer.inlineCallbacks
    def provider(self, **kwargs: Any) -> Any:
        kwargs.setdefault("tenant", new_id())
        kwargs.setdefault("provider_id", new_id())
        kwargs.setdefault("provider_name", "Support")
        kwargs.setdefault("mailbox", f"support-{kwargs['provider_id'][:8]}@example.com")
        kwargs.setdefault("host", "imap.example.com")
        kwargs.setdefault("port", 993)
        config = yield defer.maybeDeferred(self.insert_provider, **kwargs)
        return config

    @defer.inlineCallbacks
    def leased(self, owner: str = "worker-a", **kwargs: Any) -> Any:
        p = yield self.provider(**kwargs)
        ok = yield self.store.acquire_lease(p.tenant, p.provider_id, owner, 60000)
        self.assertTrue(ok)
        return p

    def row(self, p: ProviderConfig) -> Any:
        return defer.maybeDeferred(self.provider_row, p.tenant, p.provider_id)

    # -- providers -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_list_active_providers_filters(self) -> Any:
        tenant = new_id()
        good = yield self.provider(tenant=tenant)
        yield self.provider(tenant=tenant, is_active=False)
        yield self.provider(tenant=tenant, inbound_paused_at=self.now(),
                            inbound_pause_reason="manual")
        yield self.provider(tenant=tenant, provider_type="microsoft")
        other = yield self.provider()

        mine = yield self.store.list_active_providers(tenant)
        self.assertEqual([p.provider_id for p in mine], [good.provider_id])
        everyone = yield self.store.list_active_providers()
        self.assertEqual(
            sorted(p.provider_id for p in everyone),
            sorted([good.provider_id, other.provider_id]),
        )

    @defer.inlineCallbacks
    def test_provider_config_round_trip(self) -> Any:
        p = yield self.provider(
            secure=False, allow_starttls=True, auth_type="oauth2", username="u@example.com",
            connection_timeout_ms=5000, socket_keepalive=False, max_emails_per_sync=7,
            folder_filters=("INBOX", "Support/Urgent"),
            folder_state={"INBOX": FolderCursor("11", "42", "2026-01-10T12:00:00.000Z")},
            oauth_token_url="https://login.example.com/token", oauth_client_id="cid",
            oauth_scopes="a b",
        )
        [listed] = yield self.store.list_active_providers(p.tenant)
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        for config in (listed, got):
            self.assertEqual(config.folder_filters, ("INBOX", "Support/Urgent"))
            self.assertEqual(config.folder_state,
                             {"INBOX": FolderCursor("11", "42", "2026-01-10T12:00:00.000Z")})
            self.assertEqual(
                (config.secure, config.allow_starttls, config.auth_type, config.username,
                 config.connection_timeout_ms, config.socket_keepalive,
                 config.max_emails_per_sync, config.oauth_token_url, config.oauth_scopes),
                (False, True, "oauth2", "u@example.com", 5000, False, 7,
                 "https://login.example.com/token", "a b"),
            )
            self.assertEqual(config.key, p.key)
            self.assertEqual(config.port, 993)

    @defer.inlineCallbacks
    def test_get_provider_any_state_and_unknown(self) -> Any:
        p = yield self.provider(is_active=False)
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertFalse(got.is_active)
        missing = yield self.store.get_provider(p.tenant, new_id())
        self.assertIsNone(missing)
        wrong_tenant = yield self.store.get_provider(new_id(), p.provider_id)
        self.assertIsNone(wrong_tenant)

    # -- cursors -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_cursor_round_trip(self) -> Any:
        p = yield self.leased()
        cur = FolderCursor("1735234567", "4242", "2026-01-10T12:00:00.000Z")
        yield self.store.write_cursor(p.tenant, p.provider_id, "INBOX", cur, "worker-a")
        yield self.store.write_cursor(p.tenant, p.provider_id, "Sent",
                                      FolderCursor("9", "3", None), "worker-a")
        got = yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")
        self.assertEqual(got, cur)
        sent = yield self.store.read_cursor(p.tenant, p.provider_id, "Sent")
        self.assertEqual(sent, FolderCursor("9", "3", None))
        none = yield self.store.read_cursor(p.tenant, p.provider_id, "Archive")
        self.assertIsNone(none)
        row = yield self.row(p)
        # The mirror columns follow the last folder written.
        self.assertEqual((row["uid_validity"], row["last_uid"]), ("9", "3"))
        self.assertEqual(row["folder_state"]["INBOX"],
                         {"uid_validity": "1735234567", "last_uid": "4242",
                          "last_seen_at": "2026-01-10T12:00:00.000Z"})

    @defer.inlineCallbacks
    def test_write_cursor_needs_lease(self) -> Any:
        p = yield self.leased()
        yield self.assertFailure(
            self.store.write_cursor(p.tenant, p.provider_id, "INBOX",
                                    FolderCursor("1", "5"), "worker-b"),
            LeaseLost,
        )
        got = yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")
        self.assertIsNone(got)

    @defer.inlineCallbacks
    def test_reset_cursors(self) -> Any:
        p = yield self.leased()
        for folder in ("INBOX", "Sent"):
            yield self.store.write_cursor(p.tenant, p.provider_id, folder,
                                          FolderCursor("1", "5"), "worker-a")
        yield self.store.reset_cursors(p.tenant, p.provider_id, "Sent")
        self.assertIsNone((yield self.store.read_cursor(p.tenant, p.provider_id, "Sent")))
        self.assertEqual((yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")),
                         FolderCursor("1", "5"))
        yield self.store.reset_cursors(p.tenant, p.provider_id)
        self.assertIsNone((yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")))

    # -- leases ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_lease_one_owner_wins(self) -> Any:
        p = yield self.provider()
        a = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-a", 60000)
        b = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-b", 60000)
        self.assertEqual((a, b), (True, False))
        again = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-a", 60000)
        self.assertTrue(again)
        renewed = yield self.store.renew_lease(p.tenant, p.provider_id, "worker-a", 60000)
        self.assertTrue(renewed)
        stolen = yield self.store.renew_lease(p.tenant, p.provider_id, "worker-b", 60000)
        self.assertFalse(stolen)
        unknown = yield self.store.acquire_lease(p.tenant, new_id(), "worker-a", 60000)
        self.assertFalse(unknown)

    @defer.inlineCallbacks
    def test_lease_expiry_hands_over(self) -> Any:
        p = yield self.leased("worker-a")
        yield defer.maybeDeferred(self.expire_lease, p.tenant, p.provider_id)
        b = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-b", 60000)
        self.assertTrue(b)
        renewed = yield self.store.renew_lease(p.tenant, p.provider_id, "worker-a", 60000)
        self.assertFalse(renewed)
        row = yield self.row(p)
        self.assertEqual(row["lease_owner"], "worker-b")

    @defer.inlineCallbacks
    def test_renew_after_expiry_fails_even_for_owner(self) -> Any:
        p = yield self.leased("worker-a")
        yield defer.maybeDeferred(self.expire_lease, p.tenant, p.provider_id)
        renewed = yield self.store.renew_lease(p.tenant, p.provider_id, "worker-a", 60000)
        self.assertFalse(renewed)
        # ...but taking it again while nobody else has is allowed.
        again = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-a", 60000)
        self.assertTrue(again)

    @defer.inlineCallbacks
    def test_release(self) -> Any:
        p = yield self.leased("worker-a")
        yield self.store.release_lease(p.tenant, p.provider_id, "worker-b")  # not b's: no-op
        b = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-b", 60000)
        self.assertFalse(b)
        yield self.store.release_lease(p.tenant, p.provider_id, "worker-a")
        b = yield self.store.acquire_lease(p.tenant, p.provider_id, "worker-b", 60000)
        self.assertTrue(b)

    # -- record_batch -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_record_batch_without_lease_writes_nothing(self) -> Any:
        p = yield self.leased("worker-a")
        yield self.assertFailure(
            self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-b",
                                    [record(1, message_id="<a@x>")], FolderCursor("7", "1")),
            LeaseLost,
        )
        yield defer.maybeDeferred(self.expire_lease, p.tenant, p.provider_id)
        yield self.assertFailure(
            self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                    [record(1, message_id="<a@x>")], FolderCursor("7", "1")),
            LeaseLost,
        )
        self.assertEqual((yield defer.maybeDeferred(self.ledger_rows, p.tenant, p.provider_id)),
                         [])
        self.assertEqual((yield self.store.fetch_outbox(100)), [])
        self.assertIsNone((yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")))

    @defer.inlineCallbacks
    def test_record_batch_writes_ledger_outbox_and_cursor(self) -> Any:
        p = yield self.leased()
        recs = [record(1, message_id="<a@x>"), record(2, outcome=OUTCOME_SKIPPED),
                record(3, message_id="<c@x>")]
        result = yield self.store.record_batch(
            p.tenant, p.provider_id, "INBOX", "worker-a", recs,
            FolderCursor("7", "3", "2026-01-10T12:00:00.000Z"))
        self.assertEqual(result.outcomes, (OUTCOME_PUBLISHED, OUTCOME_SKIPPED, OUTCOME_PUBLISHED))
        self.assertEqual((result.published, result.skipped, result.duplicates), (2, 1, 0))
        outbox = yield self.store.fetch_outbox(10)
        self.assertEqual([r.event_id for r in outbox], [recs[0].event_id, recs[2].event_id])
        self.assertEqual(outbox[0].fields, recs[0].fields)
        self.assertEqual((outbox[0].tenant, outbox[0].provider_id), p.key)
        ledger = yield defer.maybeDeferred(self.ledger_rows, p.tenant, p.provider_id)
        self.assertEqual(sorted(r["uid"] for r in ledger), [1, 2, 3])
        skipped = [r for r in ledger if r["uid"] == 2][0]
        self.assertEqual((skipped["outcome"], skipped["reason"]),
                         (OUTCOME_SKIPPED, "no from address"))
        self.assertEqual((yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")),
                         FolderCursor("7", "3", "2026-01-10T12:00:00.000Z"))
        row = yield self.row(p)
        self.assertEqual(row["last_processed_message_id"], "<c@x>")
        self.assertEqual(row["last_uid"], "3")
        self.assertIsNotNone(row["last_seen_at"])

    @defer.inlineCallbacks
    def test_record_batch_keeps_encoded_entries_exactly(self) -> Any:
        # The pipeline records StreamEntry fields (the payload as the
        # encoder's bytes); every store gives back the same fields, in their
        # order, whatever quotes the texts hold.
        p = yield self.leased()
        plain = record(1)
        head = {"event_id": "e2", "to_state": "it's $$ $imapsvc_entry$ \\ '",
                "event_name": "INBOUND_EMAIL_RECEIVED"}
        payload = '{"s":"\u00e9\\" $imapsvc_entry$ it\'s","n":[1,2]}'
        encoded = attr.evolve(record(2), fields=StreamEntry(head, payload.encode()))
        no_payload = attr.evolve(record(3), fields={"event_id": "e3", "user_id": ""})
        # Ends with what a closing dollar quote would complete.
        tail = {"event_id": "e4", "payload_json": "it's $x$ $imapsvc_entry"}
        tricky = attr.evolve(record(4), fields=tail)
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                      [plain, encoded, no_payload, tricky], None)
        first, second, last, fourth = yield self.store.fetch_outbox(10)
        self.assertEqual(dict(fourth.fields), tail)
        self.assertEqual(first.fields, plain.fields)
        self.assertEqual(dict(second.fields), {**head, "payload_json": payload})
        self.assertEqual(list(second.fields), list(head) + ["payload_json"])
        self.assertEqual(dict(last.fields), {"event_id": "e3", "user_id": ""})

    @defer.inlineCallbacks
    def test_fetch_outbox_for_owner_skips_rows_another_worker_leases(self) -> Any:
        mine = yield self.leased("worker-a")
        theirs = yield self.leased("worker-b")
        for p, owner in ((mine, "worker-a"), (theirs, "worker-b")):
            yield self.store.record_batch(
                p.tenant, p.provider_id, "INBOX", owner,
                [record(1, message_id=f"<{owner}@x>")], FolderCursor("7", "1"))
        orphan = yield self.leased("worker-c")
        yield self.store.add_outbox(orphan.tenant, orphan.provider_id, new_id(), {"k": "v"})
        yield self.store.release_lease(orphan.tenant, orphan.provider_id, "worker-c")

        def keys(rows: Any) -> list[tuple[str, str]]:
            return [(r.tenant, r.provider_id) for r in rows]

        self.assertEqual(len((yield self.store.fetch_outbox(100))), 3)
        self.assertEqual(keys((yield self.store.fetch_outbox(100, "worker-a"))),
                         [mine.key, orphan.key])
        self.assertEqual(keys((yield self.store.fetch_outbox(100, "worker-b"))),
                         [theirs.key, orphan.key])
        # Once worker-b's lease has expired its rows are anybody's.
        yield defer.maybeDeferred(self.expire_lease, theirs.tenant, theirs.provider_id)
        self.assertEqual(keys((yield self.store.fetch_outbox(100, "worker-a"))),
                         [mine.key, theirs.key, orphan.key])

    @defer.inlineCallbacks
    def test_record_batch_duplicates(self) -> Any:
        p = yield self.leased()
        yield self.store.record_batch(
            p.tenant, p.provider_id, "INBOX", "worker-a",
            [record(1, message_id="<a@x>"), record(2)], FolderCursor("7", "2"))
        result = yield self.store.record_batch(
            p.tenant, p.provider_id, "Support", "worker-a",
            [
                record(1, folder="Support"),  # Support/1 is new...
                record(5, folder="INBOX"),  # new by UID
                record(1, folder="INBOX"),  # same UID key as before
                record(9, folder="Support", message_id="<a@x>"),  # same Message-ID, other folder
                record(10, message_id="<n@x>"),  # new
                record(11, message_id="<n@x>"),  # same Message-ID within the batch
                record(5, folder="INBOX", message_id="<z@x>"),  # same UID key within the batch
                record(12, message_id="<z@x>", outcome=OUTCOME_SKIPPED),  # <z@x> never recorded
            ],
            FolderCursor("7", "12"))
        self.assertEqual(result.outcomes, (
            OUTCOME_PUBLISHED, OUTCOME_PUBLISHED, OUTCOME_DUPLICATE, OUTCOME_DUPLICATE,
            OUTCOME_PUBLISHED, OUTCOME_DUPLICATE, OUTCOME_DUPLICATE, OUTCOME_SKIPPED,
        ))
        outbox = yield self.store.fetch_outbox(100)
        self.assertEqual(len(outbox), 2 + 3)
        self.assertEqual(len({r.id for r in outbox}), 5)
        # A replay of the whole batch is all duplicates and adds nothing.
        again = yield self.store.record_batch(
            p.tenant, p.provider_id, "INBOX", "worker-a",
            [record(1, message_id="<a@x>"), record(2)], FolderCursor("7", "2"))
        self.assertEqual(again.outcomes, (OUTCOME_DUPLICATE, OUTCOME_DUPLICATE))
        self.assertEqual(len((yield self.store.fetch_outbox(100))), 5)
        # The ledger is per provider: another provider's same keys are new.
        q = yield self.leased(tenant=p.tenant)
        other = yield self.store.record_batch(
            q.tenant, q.provider_id, "INBOX", "worker-a",
            [record(1, message_id="<a@x>")], FolderCursor("7", "1"))
        self.assertEqual(other.outcomes, (OUTCOME_PUBLISHED,))

    @defer.inlineCallbacks
    def test_cursor_advances_with_each_batch(self) -> Any:
        p = yield self.leased()
        for last in (3, 8):
            yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                          [record(last)], FolderCursor("7", str(last)))
            got = yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")
            self.assertEqual(got.last_uid, str(last))
        # An empty batch still moves the cursor (past skipped UIDs).
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a", [],
                                      FolderCursor("7", "20"))
        got = yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")
        self.assertEqual(got.last_uid, "20")

    # -- outbox -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_outbox_order_and_mark_published(self) -> Any:
        p = yield self.leased()
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                      [record(i) for i in range(1, 5)], FolderCursor("7", "4"))
        yield self.store.add_outbox(p.tenant, p.provider_id, "paused-event", {"event_name": "X"})
        first = yield self.store.fetch_outbox(3)
        self.assertEqual([r.event_id for r in first], [record(i).event_id for i in (1, 2, 3)])
        ids = [r.id for r in first]
        self.assertEqual(ids, sorted(ids))
        yield self.store.mark_published(ids[:2])
        yield self.store.mark_published(ids[:2])  # idempotent
        rest = yield self.store.fetch_outbox(10)
        self.assertEqual([r.event_id for r in rest],
                         [record(3).event_id, record(4).event_id, "paused-event"])
        self.assertEqual(rest[-1].fields, {"event_name": "X"})
        yield self.store.mark_published([r.id for r in rest])
        self.assertEqual((yield self.store.fetch_outbox(10)), [])
        yield self.store.mark_published([])

    @defer.inlineCallbacks
    def test_outbox_stats(self) -> Any:
        self.assertEqual((yield self.store.outbox_stats()), (0, None))
        p = yield self.provider()
        yield self.store.add_outbox(p.tenant, p.provider_id, "e1", {"a": "1"})
        yield self.store.add_outbox(p.tenant, p.provider_id, "e2", {"a": "2"})
        yield defer.maybeDeferred(self.backdate, 120)
        count, age = yield self.store.outbox_stats()
        self.assertEqual(count, 2)
        self.assertGreaterEqual(age, 119)
        self.assertLess(age, 3600)
        [first, _] = yield self.store.fetch_outbox(10)
        yield self.store.mark_published([first.id])
        count, _age = yield self.store.outbox_stats()
        self.assertEqual(count, 1)

    @defer.inlineCallbacks
    def test_purge_ledger(self) -> Any:
        p = yield self.leased()
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                      [record(1), record(2)], FolderCursor("7", "2"))
        [one, _two] = yield self.store.fetch_outbox(10)
        yield self.store.mark_published([one.id])
        yield defer.maybeDeferred(self.backdate, 10 * 86400)
        nothing = yield self.store.purge_ledger(30)
        self.assertEqual(nothing, 0)
        deleted = yield self.store.purge_ledger(7)
        # Two ledger rows and the published outbox row; never an unpublished one.
        self.assertEqual(deleted, 3)
        left = yield self.store.fetch_outbox(10)
        self.assertEqual([r.event_id for r in left], [record(2).event_id])
        self.assertEqual((yield defer.maybeDeferred(self.ledger_rows, p.tenant, p.provider_id)),
                         [])

    # -- secrets ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_secrets_round_trip(self) -> Any:
        tenant = new_id()
        blob = bytes(range(256)) + b"\x00"
        yield self.store.put_secret(tenant, "imap_password_x", blob)
        got = yield self.store.get_secret(tenant, "imap_password_x")
        self.assertIsInstance(got, bytes)
        self.assertEqual(got, blob)
        self.assertIsNone((yield self.store.get_secret(new_id(), "imap_password_x")))
        yield self.store.put_secret(tenant, "imap_password_x", b"second")
        self.assertEqual((yield self.store.get_secret(tenant, "imap_password_x")), b"second")
        yield self.store.delete_secret(tenant, "imap_password_x")
        self.assertIsNone((yield self.store.get_secret(tenant, "imap_password_x")))
        yield self.store.delete_secret(tenant, "imap_password_x")  # absent: fine

    # -- OAuth state --------------------------------------------------------

    @defer.inlineCallbacks
    def test_oauth_state_single_use(self) -> Any:
        tenant = new_id()
        yield self.store.put_oauth_state(tenant, "n1", "verifier-1",
                                         self.now() + timedelta(minutes=10))
        self.assertIsNone((yield self.store.take_oauth_state(new_id(), "n1")))
        self.assertEqual((yield self.store.take_oauth_state(tenant, "n1")), "verifier-1")
        self.assertIsNone((yield self.store.take_oauth_state(tenant, "n1")))
        self.assertIsNone((yield self.store.take_oauth_state(tenant, "unknown")))

    @defer.inlineCallbacks
    def test_oauth_state_expired(self) -> Any:
        tenant = new_id()
        yield self.store.put_oauth_state(tenant, "n2", "verifier-2",
                                         self.now() - timedelta(seconds=1))
        self.assertIsNone((yield self.store.take_oauth_state(tenant, "n2")))

    # -- provider runtime columns -------------------------------------------

    @defer.inlineCallbacks
    def test_auth_failures_pause_at_threshold_and_reset(self) -> Any:
        p = yield self.provider()
        results = []
        for _ in range(4):
            results.append((yield self.store.record_auth_failure(
                p.tenant, p.provider_id, "AUTHENTICATIONFAILED", 3)))
        self.assertEqual(results, [(1, False), (2, False), (3, True), (4, False)])
        row = yield self.row(p)
        self.assertEqual(row["inbound_pause_reason"], "auth_failure")
        self.assertIsNotNone(row["inbound_paused_at"])
        self.assertEqual(row["inbound_auth_failure_code"], "AUTHENTICATIONFAILED")
        self.assertEqual((yield self.store.list_active_providers(p.tenant)), [])
        yield self.store.reset_auth_failures(p.tenant, p.provider_id)
        row = yield self.row(p)
        self.assertEqual(row["inbound_auth_failure_count"], 0)
        self.assertIsNone(row["inbound_paused_at"])
        self.assertEqual(len((yield self.store.list_active_providers(p.tenant))), 1)

    @defer.inlineCallbacks
    def test_reset_auth_failures_keeps_manual_pause(self) -> Any:
        p = yield self.provider(inbound_paused_at=self.now(), inbound_pause_reason="manual")
        n, paused = yield self.store.record_auth_failure(p.tenant, p.provider_id, "X", 1)
        self.assertEqual((n, paused), (1, False))
        yield self.store.reset_auth_failures(p.tenant, p.provider_id)
        row = yield self.row(p)
        self.assertEqual(row["inbound_pause_reason"], "manual")

    @defer.inlineCallbacks
    def test_status_writes(self) -> Any:
        p = yield self.provider()
        yield self.store.set_provider_status(p.tenant, p.provider_id, "error", "login refused")
        row = yield self.row(p)
        self.assertEqual((row["status"], row["error_message"]), ("error", "login refused"))
        yield self.store.set_provider_status(p.tenant, p.provider_id, "connected")
        row = yield self.row(p)
        self.assertEqual((row["status"], row["error_message"]), ("connected", None))
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertEqual(got.status, "connected")
        self.assertIsNone(row["last_sync_at"])
        yield self.store.touch_last_sync(p.tenant, p.provider_id)
        row = yield self.row(p)
        self.assertIsNotNone(row["last_sync_at"])

    @defer.inlineCallbacks
    def test_save_capabilities_sorted(self) -> Any:
        p = yield self.provider()
        yield self.store.save_capabilities(p.tenant, p.provider_id,
                                           ["UIDPLUS", "IDLE", b"IMAP4rev1", "IDLE"])
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertEqual(got.server_capabilities, ("IDLE", "IMAP4rev1", "UIDPLUS"))
        row = yield self.row(p)
        self.assertEqual(list(row["server_capabilities"]), ["IDLE", "IMAP4rev1", "UIDPLUS"])

    @defer.inlineCallbacks
    def test_save_access_token(self) -> Any:
        p = yield self.provider(auth_type="oauth2")
        expires = (self.now() + timedelta(hours=1)).replace(microsecond=0)
        yield self.store.save_access_token(p.tenant, p.provider_id, "enc:token", expires)
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.access_token, got.token_expires_at), ("enc:token", expires))

    @defer.inlineCallbacks
    def test_ping(self) -> Any:
        yield self.store.ping()

"""The :class:`~imapsvc.interfaces.IStore` contract, run against every store.

A test case mixes in :class:`StoreContractMixin`, sets ``self.store`` in
``setUp`` and implements the few helpers that need to reach under the
interface (inserting provider rows as the main app would, forcing a lease to
expire, reading raw columns). Tenants and provider ids are uuids because the
Postgres columns are.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any, Optional

import attr
from twisted.internet import defer
from zope.interface.verify import verifyObject

from imapsvc.core.event import StreamEntry
from imapsvc.interfaces import IStore, LeaseLost
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    OUTCOME_SKIPPED,
    BackfillState,
    FolderCursor,
    FolderStatus,
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

    def set_folder_filters_raw(self, tenant: str, provider_id: str, value: Any) -> Any:
        """Write ``value`` (any JSON value) into ``folder_filters`` as the
        main app could, bypassing ProviderConfig."""
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

    # -- the role interfaces ----------------------------------------------------

    def test_provides_every_role(self) -> None:
        # Components are typed with the role they use: the store must
        # provide each one with every method (and IStore, their union).
        for role in (*IStore.getBases(), IStore):
            self.assertTrue(role.providedBy(self.store), role.__name__)
            self.assertTrue(verifyObject(role, self.store), role.__name__)  # type: ignore[attr-defined]
        self.assertEqual(len(IStore.getBases()), 10)

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
    def test_folder_filters_differing_in_case_are_one_folder(self) -> Any:
        p = yield self.provider(folder_filters=("INBOX", "inbox", "Support", " support", ""))
        self.set_folder_filters_raw(p.tenant, p.provider_id,
                                    ["INBOX", "Inbox", None, "Support", "SUPPORT", "Sent"])
        [listed] = yield self.store.list_active_providers(p.tenant)
        self.assertEqual(listed.folder_filters, ("INBOX", "Support", "Sent"))
        self.assertIsNone(listed.config_error)

    @defer.inlineCallbacks
    def test_unreadable_row_is_listed_with_its_reason(self) -> Any:
        # One bad row must not hide (or break the reading of) the others.
        tenant = new_id()
        rows = []
        for _ in range(4):
            rows.append((yield self.provider(tenant=tenant)))
        self.set_folder_filters_raw(tenant, rows[1].provider_id, "INBOX")
        self.set_folder_filters_raw(tenant, rows[2].provider_id, ["INBOX", 7])
        listed = yield self.store.list_active_providers(tenant)
        by_id = {p.provider_id: p for p in listed}
        self.assertEqual(sorted(by_id), sorted(p.provider_id for p in rows))
        for good in (rows[0], rows[3]):
            self.assertIsNone(by_id[good.provider_id].config_error)
        self.assertIn("folder_filters must be a JSON array",
                      by_id[rows[1].provider_id].config_error)
        self.assertIn("folder_filters[1] is a number", by_id[rows[2].provider_id].config_error)
        bad = by_id[rows[1].provider_id]
        self.assertEqual((bad.tenant, bad.mailbox), (tenant, rows[1].mailbox))
        one = yield self.store.get_provider(tenant, rows[2].provider_id)
        self.assertIn("folder_filters[1]", one.config_error)

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

    # -- backfill (schema/0008) ------------------------------------------------

    @defer.inlineCallbacks
    def test_first_sync_since_days_per_provider(self) -> Any:
        p = yield self.provider()
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["INBOX"])
        self.assertEqual(state, BackfillState(None, None))
        ok = yield self.store.set_first_sync_since_days(p.tenant, p.provider_id, 30)
        self.assertTrue(ok)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["INBOX"])
        self.assertEqual(state.first_sync_since_days, 30)
        yield self.store.set_first_sync_since_days(p.tenant, p.provider_id, 0)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, [])
        self.assertEqual(state.first_sync_since_days, 0)  # 0 (off) is not "unset"
        yield self.store.set_first_sync_since_days(p.tenant, p.provider_id, None)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, [])
        self.assertIsNone(state.first_sync_since_days)
        unknown = yield self.store.set_first_sync_since_days(p.tenant, new_id(), 5)
        self.assertFalse(unknown)
        other = yield self.provider(tenant=p.tenant)
        state = yield self.store.read_backfill(other.tenant, other.provider_id, [])
        self.assertIsNone(state.first_sync_since_days)

    @defer.inlineCallbacks
    def test_backfill_requests(self) -> Any:
        p = yield self.leased(folder_filters=("INBOX", "Support"))
        yield self.store.write_cursor(p.tenant, p.provider_id, "Archive",
                                      FolderCursor("1", "5"), "worker-a")
        jan, feb = date(2026, 1, 1), date(2026, 2, 1)
        folders = yield self.store.request_backfill(p.tenant, p.provider_id, "Support", feb)
        self.assertEqual(folders, ["Support"])
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["Support", "x"])
        self.assertEqual(state.pending_since, feb)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["INBOX"])
        self.assertIsNone(state.pending_since)
        # Every folder: those with a cursor and the configured ones.
        folders = yield self.store.request_backfill(p.tenant, p.provider_id, None, jan)
        self.assertEqual(sorted(folders), ["Archive", "INBOX", "Support"])
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["INBOX", "Support"])
        self.assertEqual(state.pending_since, jan)
        # A pass since February does not satisfy a request since January...
        yield self.store.complete_backfill(p.tenant, p.provider_id, ["INBOX"], feb)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["INBOX"])
        self.assertEqual(state.pending_since, jan)
        # ...a pass since January does, for the folders it names only.
        yield self.store.complete_backfill(p.tenant, p.provider_id, ["INBOX", "Support"], jan)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["INBOX", "Support"])
        self.assertIsNone(state.pending_since)
        state = yield self.store.read_backfill(p.tenant, p.provider_id, ["Archive"])
        self.assertEqual(state.pending_since, jan)
        unknown = yield self.store.request_backfill(p.tenant, new_id(), None, jan)
        self.assertIsNone(unknown)

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
    def test_fetch_outbox_for_tenants_leaves_the_others(self) -> Any:
        # An unleased provider's rows go to any relay, but only one serving
        # its tenant (IMAPSVC_TENANTS) when the relay names tenants.
        first = yield self.provider()
        second = yield self.provider()
        third = yield self.provider()
        for p in (first, second, third):
            yield self.store.add_outbox(p.tenant, p.provider_id, new_id(), {"k": "v"})

        def tenants(rows: Any) -> list[str]:
            return [r.tenant for r in rows]

        self.assertEqual(tenants((yield self.store.fetch_outbox(100, "worker-a", ()))),
                         [first.tenant, second.tenant, third.tenant])
        self.assertEqual(
            tenants((yield self.store.fetch_outbox(100, "worker-a",
                                                   (third.tenant, first.tenant)))),
            [first.tenant, third.tenant])
        self.assertEqual(
            tenants((yield self.store.fetch_outbox(100, None, (second.tenant,)))),
            [second.tenant])
        self.assertEqual(
            tenants((yield self.store.fetch_outbox(1, "worker-a", (third.tenant,)))),
            [third.tenant])

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
        # Per tenant (a replica serving IMAPSVC_TENANTS counts only theirs).
        other = yield self.provider()
        yield self.store.add_outbox(other.tenant, other.provider_id, "e3", {"a": "3"})
        self.assertEqual((yield self.store.outbox_stats((other.tenant,)))[0], 1)
        self.assertEqual((yield self.store.outbox_stats((p.tenant,)))[0], 1)
        self.assertEqual((yield self.store.outbox_stats((p.tenant, other.tenant)))[0], 2)
        self.assertEqual((yield self.store.outbox_stats(()))[0], 2)

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

    # -- provider options and the write-back sweep (issue 13 item 3) ---------------

    @defer.inlineCallbacks
    def test_write_back_option_is_read_with_the_provider(self) -> Any:
        p = yield self.provider()
        other = yield self.provider(tenant=p.tenant)
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertIsNone(got.write_back)
        self.assertTrue((yield self.store.set_write_back(p.tenant, p.provider_id,
                                                         "move:Processed/Ä")))
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertEqual(got.write_back, "move:Processed/Ä")
        active = yield self.store.list_active_providers(p.tenant)
        by_id = {c.provider_id: c for c in active}
        self.assertEqual(by_id[p.provider_id].write_back, "move:Processed/Ä")
        self.assertIsNone(by_id[other.provider_id].write_back)
        # A change is a change of the config discovery compares.
        self.assertNotEqual(got, p)
        yield self.store.set_write_back(p.tenant, p.provider_id, "seen")
        self.assertEqual((yield self.store.get_provider(p.tenant, p.provider_id)).write_back,
                         "seen")
        yield self.store.set_write_back(p.tenant, p.provider_id, None)
        self.assertIsNone((yield self.store.get_provider(p.tenant, p.provider_id)).write_back)
        # Another tenant's id, or an unknown one: nothing written.
        self.assertFalse((yield self.store.set_write_back(new_id(), p.provider_id, "seen")))
        self.assertFalse((yield self.store.set_write_back(p.tenant, new_id(), "seen")))

    @defer.inlineCallbacks
    def test_modseq_is_kept_per_folder_and_fenced(self) -> Any:
        # schema/0010 (CONDSTORE/QRESYNC): the largest mod-sequence fits.
        p = yield self.leased()
        self.assertIsNone((yield self.store.read_modseq(p.tenant, p.provider_id, "INBOX")))
        yield self.store.save_modseq(p.tenant, p.provider_id, "INBOX", "1735234567",
                                     2**63 - 1, "worker-a")
        yield self.store.save_modseq(p.tenant, p.provider_id, "Sent", "7", 12, "worker-a")
        self.assertEqual((yield self.store.read_modseq(p.tenant, p.provider_id, "INBOX")),
                         ("1735234567", 2**63 - 1))
        yield self.store.save_modseq(p.tenant, p.provider_id, "INBOX", "1735234568", 5,
                                     "worker-a")
        self.assertEqual((yield self.store.read_modseq(p.tenant, p.provider_id, "INBOX")),
                         ("1735234568", 5))
        # Another owner's write is refused and changes nothing.
        yield self.assertFailure(self.store.save_modseq(
            p.tenant, p.provider_id, "INBOX", "1", 9, "worker-b"), LeaseLost)
        self.assertEqual((yield self.store.read_modseq(p.tenant, p.provider_id, "INBOX")),
                         ("1735234568", 5))
        # None forgets it (NOMODSEQ); the other folder keeps its own.
        yield self.store.save_modseq(p.tenant, p.provider_id, "INBOX", "1", None, "worker-a")
        self.assertIsNone((yield self.store.read_modseq(p.tenant, p.provider_id, "INBOX")))
        self.assertEqual((yield self.store.read_modseq(p.tenant, p.provider_id, "Sent")),
                         ("7", 12))
        self.assertIsNone((yield self.store.read_modseq(new_id(), p.provider_id, "Sent")))

    @defer.inlineCallbacks
    def test_oauth_delegate_option_beside_write_back(self) -> Any:
        p = yield self.provider()
        self.assertIsNone((yield self.store.get_provider(p.tenant, p.provider_id)).oauth_delegate)
        yield self.store.set_write_back(p.tenant, p.provider_id, "seen")
        self.assertTrue((yield self.store.set_oauth_delegate(p.tenant, p.provider_id,
                                                             "alice@example.com")))
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        # Each setter leaves the other option as it was.
        self.assertEqual((got.write_back, got.oauth_delegate), ("seen", "alice@example.com"))
        yield self.store.set_write_back(p.tenant, p.provider_id, None)
        active = yield self.store.list_active_providers(p.tenant)
        self.assertEqual([c.oauth_delegate for c in active if c.provider_id == p.provider_id],
                         ["alice@example.com"])
        yield self.store.set_oauth_delegate(p.tenant, p.provider_id, None)
        self.assertIsNone((yield self.store.get_provider(p.tenant, p.provider_id)).oauth_delegate)
        self.assertFalse((yield self.store.set_oauth_delegate(new_id(), p.provider_id, "a@b.c")))

    @defer.inlineCallbacks
    def test_recorded_uids(self) -> Any:
        p = yield self.leased()
        yield self.store.record_batch(
            p.tenant, p.provider_id, "INBOX", "worker-a",
            [record(1), record(2), record(5), record(7, outcome=OUTCOME_SKIPPED),
             record(3, uid_validity="8")],
            FolderCursor("7", "7"))
        yield self.store.record_batch(p.tenant, p.provider_id, "Other", "worker-a",
                                      [record(4, folder="Other")], FolderCursor("7", "4"))
        got = yield self.store.recorded_uids(p.tenant, p.provider_id, "INBOX", "7", 1, 10)
        self.assertEqual(got, [1, 2, 5, 7])
        got = yield self.store.recorded_uids(p.tenant, p.provider_id, "INBOX", "7", 2, 5)
        self.assertEqual(got, [2, 5])
        got = yield self.store.recorded_uids(p.tenant, p.provider_id, "INBOX", "8", 1, 10)
        self.assertEqual(got, [3])
        got = yield self.store.recorded_uids(p.tenant, p.provider_id, "Other", "7", 1, 10)
        self.assertEqual(got, [4])
        got = yield self.store.recorded_uids(new_id(), p.provider_id, "INBOX", "7", 1, 10)
        self.assertEqual(got, [])

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
    def test_reset_auth_failures_lifts_only_an_auth_failure_pause(self) -> Any:
        # What a successful login, `provider set-password` and a completed
        # OAuth callback do: counters go, an auth_failure pause goes, a manual
        # or tenant_cancelled pause stays.
        for reason in ("auth_failure", "manual", "tenant_cancelled"):
            p = yield self.provider(inbound_paused_at=self.now(), inbound_pause_reason=reason)
            yield self.store.record_auth_failure(p.tenant, p.provider_id, "AUTHENTICATIONFAILED", 9)
            yield self.store.reset_auth_failures(p.tenant, p.provider_id)
            row = yield self.row(p)
            self.assertEqual(row["inbound_auth_failure_count"], 0, reason)
            self.assertIsNone(row["inbound_auth_failure_code"], reason)
            if reason == "auth_failure":
                self.assertIsNone(row["inbound_paused_at"])
                self.assertIsNone(row["inbound_pause_reason"])
            else:
                self.assertIsNotNone(row["inbound_paused_at"], reason)
                self.assertEqual(row["inbound_pause_reason"], reason)
                self.assertEqual((yield self.store.list_active_providers(p.tenant)), [])

    @defer.inlineCallbacks
    def test_last_error_written_and_cleared(self) -> Any:
        p = yield self.provider()
        other = yield self.provider(tenant=p.tenant)
        yield self.store.set_last_error(p.tenant, p.provider_id, "INBOX: login refused")
        row = yield self.row(p)
        self.assertEqual(row["last_error"], "INBOX: login refused")
        self.assertIsNone((yield self.row(other))["last_error"])
        yield self.store.set_last_error(p.tenant, p.provider_id, None)
        self.assertIsNone((yield self.row(p))["last_error"])
        # Unknown provider: nothing happens.
        yield self.store.set_last_error(p.tenant, new_id(), "x")

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

    # -- fenced runtime writes (issue 10) ---------------------------------------

    @defer.inlineCallbacks
    def test_status_capability_token_writes_fenced_by_lease(self) -> Any:
        p = yield self.leased("worker-a", auth_type="oauth2")
        expires = (self.now() + timedelta(hours=1)).replace(microsecond=0)
        yield self.store.set_provider_status(p.tenant, p.provider_id, "connected",
                                             owner="worker-a")
        yield self.store.save_capabilities(p.tenant, p.provider_id, ["IDLE"], owner="worker-a")
        yield self.store.save_access_token(p.tenant, p.provider_id, "enc:a", expires,
                                           owner="worker-a")
        # worker-b does not hold the lease: none of its writes land.
        yield self.assertFailure(self.store.set_provider_status(
            p.tenant, p.provider_id, "error", "stale", owner="worker-b"), LeaseLost)
        yield self.assertFailure(self.store.save_capabilities(
            p.tenant, p.provider_id, ["X"], owner="worker-b"), LeaseLost)
        yield self.assertFailure(self.store.save_access_token(
            p.tenant, p.provider_id, "enc:b", expires, owner="worker-b"), LeaseLost)
        # A provider nobody leases: a refreshed token (connection test) lands.
        free = yield self.provider(auth_type="oauth2")
        yield self.store.save_access_token(free.tenant, free.provider_id, "enc:f", expires,
                                           owner="worker-b")
        got = yield self.store.get_provider(free.tenant, free.provider_id)
        self.assertEqual(got.access_token, "enc:f")
        # Nor do a's once its lease expired.
        yield defer.maybeDeferred(self.expire_lease, p.tenant, p.provider_id)
        yield self.assertFailure(self.store.set_provider_status(
            p.tenant, p.provider_id, "error", "late", owner="worker-a"), LeaseLost)
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.status, got.server_capabilities, got.access_token),
                         ("connected", ("IDLE",), "enc:a"))

    # -- the per-tenant cap, counted in the store ------------------------------

    @defer.inlineCallbacks
    def test_capped_lease_counts_connections_of_the_tenant(self) -> Any:
        tenant = new_id()
        p1 = yield self.provider(tenant=tenant, folder_filters=("Archive", "INBOX"))
        p2 = yield self.provider(tenant=tenant, folder_filters=("INBOX", "Sent"))
        p3 = yield self.provider(tenant=tenant)
        g1 = yield self.store.acquire_lease_capped(tenant, p1.provider_id, "worker-a", 60000,
                                                   p1.folders, 3)
        self.assertTrue(g1.acquired)
        self.assertEqual((g1.folders, g1.waiting, g1.in_use, g1.error),
                         (("INBOX", "Archive"), (), 0, None))
        # Another worker: one connection left, INBOX first, the cap named.
        g2 = yield self.store.acquire_lease_capped(tenant, p2.provider_id, "worker-b", 60000,
                                                   p2.folders, 3)
        self.assertTrue(g2.acquired)
        self.assertEqual((g2.folders, g2.waiting, g2.in_use), (("INBOX",), ("Sent",), 2))
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=3", g2.error)
        row = yield self.row(p2)
        self.assertEqual(row["status"], "error")
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=3", row["error_message"])
        # Full: refused, with the error, and no lease taken.
        g3 = yield self.store.acquire_lease_capped(tenant, p3.provider_id, "worker-a", 60000,
                                                   p3.folders, 3)
        self.assertFalse(g3.acquired)
        self.assertEqual((g3.folders, g3.waiting, g3.in_use), ((), ("INBOX",), 3))
        row = yield self.row(p3)
        self.assertEqual(row["status"], "error")
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=3", row["error_message"])
        self.assertIsNone(row["lease_owner"])
        # An expired lease frees its connections; a released one too.
        yield defer.maybeDeferred(self.expire_lease, tenant, p1.provider_id)
        g3 = yield self.store.acquire_lease_capped(tenant, p3.provider_id, "worker-a", 60000,
                                                   p3.folders, 3)
        self.assertEqual((g3.acquired, g3.in_use), (True, 1))
        yield self.store.release_lease(tenant, p2.provider_id, "worker-b")
        g1 = yield self.store.acquire_lease_capped(tenant, p1.provider_id, "worker-b", 60000,
                                                   p1.folders, 3)
        self.assertEqual((g1.folders, g1.in_use), (("INBOX", "Archive"), 1))
        # Another tenant is not counted; a held lease is not taken.
        other = yield self.provider()
        g = yield self.store.acquire_lease_capped(other.tenant, other.provider_id, "w", 60000,
                                                  other.folders, 1)
        self.assertEqual(g.folders, ("INBOX",))
        g = yield self.store.acquire_lease_capped(tenant, p1.provider_id, "worker-c", 60000,
                                                  p1.folders, 10)
        self.assertFalse(g.acquired)
        self.assertEqual(g.waiting, ())

    @defer.inlineCallbacks
    def test_capped_lease_with_a_budget_counts_the_shared_connection_once(self) -> Any:
        tenant = new_id()
        labels = tuple(f"L{i}" for i in range(7))
        p = yield self.provider(tenant=tenant, folder_filters=(*labels, "INBOX"))
        q = yield self.provider(tenant=tenant, folder_filters=("INBOX", "Sent", "Drafts"))
        # Eight folders, budget 3, cap 5: INBOX and L0 own, L1..L6 shared.
        g = yield self.store.acquire_lease_capped(tenant, p.provider_id, "worker-a", 60000,
                                                  p.folders, 5, 3)
        self.assertEqual((g.acquired, g.folders, g.waiting, g.error),
                         (True, ("INBOX", *labels), (), None))
        doc = yield self.store.read_deployment([tenant])
        holds = {f["folder"] for f in doc["folders"] if f["holds_connection"]}
        self.assertEqual(holds, {"INBOX", "L0", "L1"})
        # Another provider of the tenant sees 3 in use, not 8.
        g2 = yield self.store.acquire_lease_capped(tenant, q.provider_id, "worker-b", 60000,
                                                   q.folders, 5)
        self.assertEqual((g2.folders, g2.waiting, g2.in_use), (("INBOX", "Sent"), ("Drafts",), 3))
        # Re-taken by its owner with less room than the budget: one each.
        g = yield self.store.acquire_lease_capped(tenant, p.provider_id, "worker-a", 60000,
                                                  p.folders, 4, 3)
        self.assertEqual((g.folders, g.in_use), (("INBOX", "L0"), 2))
        doc = yield self.store.read_deployment([tenant])
        holds = {f["folder"] for f in doc["folders"]
                 if f["holds_connection"] and f["provider_id"] == p.provider_id}
        self.assertEqual(holds, {"INBOX", "L0"})

    # -- folder status and replicas -------------------------------------------

    @defer.inlineCallbacks
    def test_folder_status_fenced_and_read_back(self) -> Any:
        tenant = new_id()
        p = yield self.provider(tenant=tenant, folder_filters=("INBOX", "Sent"))
        yield self.store.acquire_lease_capped(tenant, p.provider_id, "worker-a", 60000,
                                              p.folders, None)
        since = self.now().replace(microsecond=0)
        st = FolderStatus("INBOX", "Idling", since, since, None, {"reconnects": 2})
        yield self.store.write_folder_status(tenant, p.provider_id, "worker-a", [st])
        yield self.assertFailure(self.store.write_folder_status(
            tenant, p.provider_id, "worker-b",
            [FolderStatus("INBOX", "Backoff", since, None, "stale")]), LeaseLost)
        yield self.store.heartbeat_replica("worker-a", {"version": "x"})
        doc = yield self.store.read_deployment([tenant])
        self.assertEqual([(r["tenant"], r["provider_id"]) for r in doc["providers"]],
                         [(tenant, p.provider_id)])
        self.assertEqual(doc["providers"][0]["lease_owner"], "worker-a")
        folders = {f["folder"]: f for f in doc["folders"]}
        self.assertEqual(sorted(folders), ["INBOX", "Sent"])
        inbox = folders["INBOX"]
        self.assertEqual((inbox["state"], inbox["owner"], inbox["holds_connection"],
                          inbox["counters"], inbox["since"], inbox["last_error"]),
                         ("Idling", "worker-a", True, {"reconnects": 2}, since, None))
        self.assertEqual(folders["Sent"]["state"], "Disconnected")
        self.assertIn("worker-a", [r["owner"] for r in doc["replicas"]])
        self.assertIsNotNone(doc["now"])
        # Taken again by the same owner (a discovery retry): states survive.
        g = yield self.store.acquire_lease_capped(tenant, p.provider_id, "worker-a", 60000,
                                                  p.folders, None)
        self.assertEqual(g.folders, ("INBOX", "Sent"))
        doc = yield self.store.read_deployment([tenant])
        self.assertEqual({f["folder"]: f["state"] for f in doc["folders"]},
                         {"INBOX": "Idling", "Sent": "Disconnected"})
        # Released: the folders stop holding connections.
        yield self.store.release_lease(tenant, p.provider_id, "worker-a")
        doc = yield self.store.read_deployment([tenant])
        self.assertEqual({f["folder"]: (f["state"], f["holds_connection"])
                          for f in doc["folders"]},
                         {"INBOX": ("Stopped", False), "Sent": ("Stopped", False)})
        yield self.store.forget_replica("worker-a")
        doc = yield self.store.read_deployment([tenant])
        self.assertNotIn("worker-a", [r["owner"] for r in doc["replicas"]])

    # -- admin requests ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_admin_requests_go_to_the_lease_holder(self) -> Any:
        owned = yield self.leased("worker-a")
        free = yield self.provider()
        r1 = yield self.store.add_admin_request(owned.tenant, owned.provider_id, "reconnect",
                                                None, "worker-b")
        r2 = yield self.store.add_admin_request(free.tenant, free.provider_id, "resync",
                                                "INBOX", "worker-b")
        self.assertEqual((r1.action, r1.requested_by, r1.applied_at), ("reconnect", "worker-b",
                                                                       None))
        # b does not own `owned`: it may take only the unowned provider's request.
        got = yield self.store.claim_admin_requests("worker-b", 10, 60)
        self.assertEqual([r.id for r in got if r.tenant in (owned.tenant, free.tenant)], [r2.id])
        self.assertEqual(got[0].folder, "INBOX") if len(got) == 1 else None
        got = yield self.store.claim_admin_requests("worker-a", 10, 60)
        self.assertEqual([r.id for r in got if r.tenant in (owned.tenant, free.tenant)], [r1.id])
        # Claimed: nobody claims it again (until the claim is stale).
        got = yield self.store.claim_admin_requests("worker-a", 10, 60)
        self.assertEqual([r.id for r in got if r.tenant in (owned.tenant, free.tenant)], [])
        yield self.store.complete_admin_request(owned.tenant, r1.id, "worker-a",
                                                {"success": True, "reconnected": 1})
        done = yield self.store.get_admin_request(owned.tenant, r1.id)
        self.assertEqual((done.applied_by, done.result), ("worker-a",
                                                          {"success": True, "reconnected": 1}))
        self.assertIsNotNone(done.applied_at)
        pending = yield self.store.get_admin_request(free.tenant, r2.id)
        self.assertIsNone(pending.applied_at)
        self.assertIsNone((yield self.store.get_admin_request(owned.tenant, new_id())))

    @defer.inlineCallbacks
    def test_pause_and_resume(self) -> Any:
        p = yield self.provider()
        self.assertTrue((yield self.store.set_inbound_pause(p.tenant, p.provider_id, True)))
        row = yield self.row(p)
        self.assertEqual(row["inbound_pause_reason"], "manual")
        self.assertIsNotNone(row["inbound_paused_at"])
        active = yield self.store.list_active_providers(p.tenant)
        self.assertEqual(active, [])
        yield self.store.record_auth_failure(p.tenant, p.provider_id, "X", 99)
        self.assertTrue((yield self.store.set_inbound_pause(p.tenant, p.provider_id, False)))
        row = yield self.row(p)
        self.assertEqual((row["inbound_paused_at"], row["inbound_pause_reason"],
                          row["inbound_auth_failure_count"]), (None, None, 0))
        self.assertFalse((yield self.store.set_inbound_pause(p.tenant, new_id(), True)))

    @defer.inlineCallbacks
    def test_app_plaintext_token_columns_read_never_written(self) -> Any:
        # The main app writes these in plaintext (CONTRACT section 3): the
        # credential lookup reads them; no store write touches them.
        p = yield self.provider(auth_type="oauth2", oauth_client_secret="app-cs",
                                refresh_token="app-rt", access_token="app-at")
        got = yield self.store.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.oauth_client_secret, got.refresh_token), ("app-cs", "app-rt"))
        [listed] = yield self.store.list_active_providers(p.tenant)
        self.assertEqual((listed.oauth_client_secret, listed.refresh_token), ("app-cs", "app-rt"))
        self.assertNotIn("app-rt", repr(got))
        self.assertNotIn("app-cs", repr(got))
        yield self.store.save_access_token(p.tenant, p.provider_id, "sealed", self.now())
        row = yield self.row(p)
        self.assertEqual((row["oauth_client_secret"], row["refresh_token"]), ("app-cs", "app-rt"))

    # -- poison messages ------------------------------------------------------

    @defer.inlineCallbacks
    def test_message_failures_count_and_list(self) -> Any:
        p = yield self.leased()
        other = yield self.leased()
        args = (p.tenant, p.provider_id, "INBOX", "7", 3)
        self.assertEqual((yield self.store.note_message_failure(*args, "CommandFailed: NO")), 1)
        self.assertEqual((yield self.store.note_message_failure(*args, "ProtocolViolation")), 2)
        yield self.store.note_message_failure(other.tenant, other.provider_id, "INBOX", "7", 3,
                                              "x")
        [one] = yield self.store.list_poison(p.tenant, p.provider_id)
        self.assertEqual((one.tenant, one.provider_id, one.folder, one.uid_validity, one.uid),
                         (p.tenant, p.provider_id, "INBOX", "7", 3))
        self.assertEqual((one.failures, one.reason, one.skipped_at),
                         (2, "ProtocolViolation", None))
        everything = yield self.store.list_poison()
        self.assertEqual(len(everything), 2)
        yield self.store.mark_poison_skipped(*args)
        [one] = yield self.store.list_poison(p.tenant)
        self.assertIsNotNone(one.skipped_at)

    @defer.inlineCallbacks
    def test_retry_poison_forgets_skip_and_rewinds_cursor(self) -> Any:
        p = yield self.leased()
        skipped = record(5, outcome=OUTCOME_SKIPPED)
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                      [record(4), skipped, record(6)], FolderCursor("7", "6"))
        yield self.store.note_message_failure(p.tenant, p.provider_id, "INBOX", "7", 5, "NO")
        yield self.store.mark_poison_skipped(p.tenant, p.provider_id, "INBOX", "7", 5)
        unknown = yield self.store.retry_poison(p.tenant, p.provider_id, "INBOX", "7", 99)
        self.assertFalse(unknown)
        ok = yield self.store.retry_poison(p.tenant, p.provider_id, "INBOX", "7", 5)
        self.assertTrue(ok)
        self.assertEqual((yield self.store.list_poison(p.tenant)), [])
        rows = yield defer.maybeDeferred(self.ledger_rows, p.tenant, p.provider_id)
        self.assertEqual(sorted(int(r["uid"]) for r in rows), [4, 6])
        cursor = yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")
        self.assertEqual((cursor.uid_validity, cursor.last_uid), ("7", "4"))
        # Fetched again: 5 is new, 6 a duplicate (never re-published).
        result = yield self.store.record_batch(
            p.tenant, p.provider_id, "INBOX", "worker-a", [record(5), record(6)],
            FolderCursor("7", "6"))
        self.assertEqual(result.outcomes, (OUTCOME_PUBLISHED, OUTCOME_DUPLICATE))

    @defer.inlineCallbacks
    def test_clear_message_failures_keeps_skipped_ones(self) -> Any:
        p = yield self.leased()
        for uid in (1, 2, 3):
            yield self.store.note_message_failure(p.tenant, p.provider_id, "INBOX", "7", uid,
                                                  "CommandTimeout")
        yield self.store.mark_poison_skipped(p.tenant, p.provider_id, "INBOX", "7", 3)
        yield self.store.clear_message_failures(p.tenant, p.provider_id, "INBOX", "7",
                                                [1, 3, 9])
        left = yield self.store.list_poison(p.tenant)
        self.assertEqual(sorted(m.uid for m in left), [2, 3])

    @defer.inlineCallbacks
    def test_purge_forgets_old_message_failures(self) -> Any:
        p = yield self.leased()
        yield self.store.note_message_failure(p.tenant, p.provider_id, "INBOX", "7", 1, "x")
        yield defer.maybeDeferred(self.backdate, 10 * 86400)
        self.assertEqual((yield self.store.purge_ledger(30)), 0)
        self.assertEqual((yield self.store.purge_ledger(7)), 1)
        self.assertEqual((yield self.store.list_poison(p.tenant)), [])

    @defer.inlineCallbacks
    def test_retry_poison_keeps_cursor_of_another_uidvalidity(self) -> Any:
        p = yield self.leased()
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                      [record(1, uid_validity="8")], FolderCursor("8", "9"))
        yield self.store.note_message_failure(p.tenant, p.provider_id, "INBOX", "7", 5, "NO")
        self.assertTrue((yield self.store.retry_poison(p.tenant, p.provider_id, "INBOX", "7", 5)))
        cursor = yield self.store.read_cursor(p.tenant, p.provider_id, "INBOX")
        self.assertEqual((cursor.uid_validity, cursor.last_uid), ("8", "9"))

    @defer.inlineCallbacks
    def test_ping(self) -> Any:
        yield self.store.ping()

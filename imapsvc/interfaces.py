"""The seams of imapsvc.

Every method that does I/O returns a :class:`~twisted.internet.defer.Deferred`.
Each interface has a real implementation and an in-memory fake; one contract
test suite per interface runs against both (``tests/test_*_contract.py``).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

# The folder's seams live in their own module; named here like every seam.
from imapsvc.session_interfaces import IConnectionEvents as IConnectionEvents
from imapsvc.session_interfaces import IFolderHooks as IFolderHooks
from imapsvc.session_interfaces import IIMAPSession as IIMAPSession


class LeaseLost(Exception):
    """A fenced write was refused: this worker no longer holds the provider's
    lease (or it expired by the database clock)."""


class StoreUnavailable(Exception):
    """The store could not be reached (connection refused, dropped, timed out)."""


class IProviderStore(Interface):
    """Providers and their per-provider columns: what discovery, the
    supervisor and the OAuth flow read and write about a provider."""

    def list_active_providers(tenant=None):
        """Providers with ``provider_type='imap'``, ``is_active``, not paused,
        joined with their config. Optionally for one tenant.

        :rtype: Deferred[list[imapsvc.model.ProviderConfig]]
        """

    def get_provider(tenant, provider_id):
        """One provider whatever its state, or ``None``.

        :rtype: Deferred[Optional[ProviderConfig]]
        """

    def set_provider_status(tenant, provider_id, status, error_message=None, owner=None):
        """Write ``email_providers.status``/``error_message``. With ``owner``
        fenced by the lease like a cursor write (:class:`LeaseLost`)."""

    def set_last_error(tenant, provider_id, last_error):
        """Write ``imap_email_provider_config.last_error`` (``None`` clears
        it): the provider's latest error, secret-free, as the app shows it."""

    def save_capabilities(tenant, provider_id, capabilities, owner=None):
        """Write ``server_capabilities`` as a sorted list of strings (fenced
        by ``owner``'s lease when given)."""

    def save_access_token(tenant, provider_id, access_token, expires_at, owner=None):
        """Store the (already encrypted, text) access token and its expiry in
        ``access_token``/``token_expires_at``. With ``owner``: refused
        (:class:`LeaseLost`) while another worker holds a live lease."""

    def set_write_back(tenant, provider_id, mode):
        """Store the provider's write-back option (``imap_provider_options``;
        ``None`` clears it: the environment default applies). The mode is
        validated by the caller (:func:`imapsvc.core.write_back.parse_mode`).
        :rtype: Deferred[bool]: ``False`` when the provider is unknown."""

    def set_oauth_delegate(tenant, provider_id, delegate):
        """Store the account that consents for a shared mailbox
        (``imap_provider_options.oauth_delegate``; ``None`` clears it).
        :rtype: Deferred[bool]: ``False`` when the provider is unknown."""

    def record_auth_failure(tenant, provider_id, code, pause_after):
        """Count one authentication failure; when the count reaches
        ``pause_after`` pause the provider (``inbound_paused_at`` = now,
        ``inbound_pause_reason='auth_failure'``).

        :rtype: Deferred[tuple[int, bool]]: the new count, and whether this
            call paused the provider.
        """

    def reset_auth_failures(tenant, provider_id):
        """A login succeeded: clear the count (and an ``auth_failure`` pause)."""

    def set_inbound_pause(tenant, provider_id, paused):
        """Pause (``manual``, an existing pause is kept as it is) or resume
        (any pause, and the auth-failure count cleared).
        :rtype: Deferred[bool] ``False`` for an unknown provider."""

    def touch_last_sync(tenant, provider_id):
        """Set ``email_providers.last_sync_at`` to now."""


class ICursorStore(Interface):
    """Folder cursors and pending backfills (``resync --since``)."""

    def read_cursor(tenant, provider_id, folder):
        """:rtype: Deferred[Optional[imapsvc.model.FolderCursor]]"""

    def write_cursor(tenant, provider_id, folder, cursor, owner):
        """Write one folder's cursor (and the top-level mirror columns),
        fenced by the lease held by ``owner``.

        :raises LeaseLost: (in the Deferred) when ``owner`` does not hold a
            live lease.
        """

    def read_modseq(tenant, provider_id, folder):
        """The folder's stored HIGHESTMODSEQ (RFC 7162, schema/0010) with the
        UIDVALIDITY it belongs to.
        :rtype: Deferred[Optional[tuple[str, int]]]"""

    def save_modseq(tenant, provider_id, folder, uid_validity, modseq, owner):
        """Store (``modseq`` ``None``: forget) the HIGHESTMODSEQ a committed
        sync pass saw, fenced by the lease like a cursor.
        :raises LeaseLost:"""

    def reset_cursors(tenant, provider_id, folder=None):
        """Resync: drop the cursor of ``folder`` (or of every folder), so the
        next sync starts at the recent window. Not fenced (admin action)."""

    def read_backfill(tenant, provider_id, folders):
        """The provider's own first-sync window (``first_sync_since_days``)
        and the earliest pending ``resync --since`` of any of ``folders``
        (a folder passes its server name and its configured filter).

        :rtype: Deferred[imapsvc.model.BackfillState]
        """

    def set_first_sync_since_days(tenant, provider_id, days):
        """Set the provider's first-sync window in days (``None``: the
        environment default; ``0``: off).

        :rtype: Deferred[bool]: ``False`` for an unknown provider.
        """

    def request_backfill(tenant, provider_id, folder, since):
        """Schedule ``resync --since`` (a :class:`datetime.date`) for
        ``folder``, or (``None``) for every folder with a cursor and every
        configured filter. Not fenced (admin action).

        :rtype: Deferred[Optional[list[str]]]: the folders; ``None`` for
            an unknown provider.
        """

    def complete_backfill(tenant, provider_id, folders, since):
        """Drop the pending requests of ``folders`` that a pass reading
        since ``since`` covered (those for ``since`` or later)."""


class ILeaseStore(Interface):
    """Provider leases, measured by the store's clock: one worker runs a
    provider at a time, and fenced writes check the lease."""

    def acquire_lease(tenant, provider_id, owner, ttl_ms):
        """Take the lease if it is free, expired or already ``owner``'s,
        measured by the database clock.

        :rtype: Deferred[bool]
        """

    def renew_lease(tenant, provider_id, owner, ttl_ms):
        """Extend a lease ``owner`` still holds.

        :rtype: Deferred[bool]: ``False`` when it was lost.
        """

    def release_lease(tenant, provider_id, owner):
        """Give the lease up if ``owner`` holds it."""

    def acquire_lease_capped(tenant, provider_id, owner, ttl_ms, folders, max_connections,
                             budget=None):
        """Take the lease (as :meth:`acquire_lease`) with connections for the
        first ``folders`` (INBOX first) that fit in ``max_connections`` minus
        the tenant's connections held under other live leases, counted in the
        database in the same transaction. Rewrites the provider's
        ``imap_folder_status`` rows; folders left out, or a provider refused
        for the cap, get ``status = error`` with an error naming the cap.

        ``budget`` is a Gmail provider's connection budget (``None``: none):
        the folders past it share one connection, so only the rows of
        :func:`imapsvc.core.cluster.connection_holders` hold a connection and
        the provider needs at most ``budget`` of the cap.

        :rtype: Deferred[imapsvc.model.LeaseGrant]
        """


class ILedgerStore(Interface):
    """The message ledger: the fenced batch (ledger rows, outbox rows and
    cursor in one transaction), the write-back sweep and retention."""

    def record_batch(tenant, provider_id, folder, owner, records, cursor):
        """In one transaction fenced by the lease: for each
        :class:`~imapsvc.model.MessageRecord` a ledger row (a record whose
        dedupe key or Message-ID key is already known becomes a duplicate),
        an outbox row for each new published record, and the folder cursor.

        :rtype: Deferred[imapsvc.model.BatchResult]
        :raises LeaseLost: nothing is written.
        """

    def recorded_uids(tenant, provider_id, folder, uid_validity, first_uid, last_uid):
        """UIDs of ``folder`` (this UIDVALIDITY) in ``first_uid..last_uid``
        that the ledger holds (the write-back sweep after a restart).
        :rtype: Deferred[list[int]] sorted."""

    def purge_ledger(older_than_days):
        """Delete ledger rows, published outbox rows and message-failure
        rows (last touched) older than the retention.
        :rtype: Deferred[int] rows deleted."""


class IOutboxStore(Interface):
    """The outbox as the relay reads it (CONTRACT section 2: events leave
    only through it, in commit order)."""

    def add_outbox(tenant, provider_id, event_id, fields):
        """Queue one stream entry that belongs to no message (e.g.
        ``INBOUND_EMAIL_PROVIDER_AUTO_PAUSED``)."""

    def fetch_outbox(limit, owner=None, tenants=()):
        """The oldest unpublished outbox rows, in commit order. With
        ``owner``: only rows of providers that ``owner`` leases or that no
        worker holds a live lease for (released, expired, deleted). With
        ``tenants`` (UUID strings; empty: every tenant): only their rows, so
        a replica serving some tenants (``IMAPSVC_TENANTS``) never publishes
        another's rows to its stream.

        :rtype: Deferred[list[imapsvc.model.OutboxRow]]
        """

    def mark_published(ids):
        """Mark outbox rows as published (idempotent)."""

    def outbox_stats(tenants=()):
        """:rtype: Deferred[tuple[int, Optional[float]]]: backlog count and
        age in seconds of the oldest unpublished row (of ``tenants`` only,
        when given, as :meth:`fetch_outbox`)."""


class IPoisonStore(Interface):
    """Per-message fetch failures (poison candidates) and the operator's
    view of them."""

    def note_message_failure(tenant, provider_id, folder, uid_validity, uid, reason):
        """Count one failed fetch of a message (a poison candidate); keeps
        ``reason`` (secret-free, short). Not fenced: bookkeeping only.

        :rtype: Deferred[int]: the count after this failure.
        """

    def clear_message_failures(tenant, provider_id, folder, uid_validity, uids):
        """Messages that were fetched after all: forget their failure counts
        (rows already skipped stay, for the operator)."""

    def mark_poison_skipped(tenant, provider_id, folder, uid_validity, uid):
        """The message was recorded as skipped (ledger): set ``skipped_at``."""

    def list_poison(tenant=None, provider_id=None):
        """Messages with failed fetches, skipped or still counting, oldest
        first. :rtype: Deferred[list[imapsvc.model.PoisonMessage]]"""

    def retry_poison(tenant, provider_id, folder, uid_validity, uid):
        """Operator retry: forget the failures and the skipped ledger row,
        and move the folder's cursor back below ``uid`` (when it is on the
        same UIDVALIDITY) so the next sync fetches it again; later messages
        come back as duplicates of the ledger, never re-published.

        :rtype: Deferred[bool]: whether such a message was known.
        """


class IClusterStore(Interface):
    """Persisted folder status and live replicas (one service across
    replicas, schema/0004)."""

    def write_folder_status(tenant, provider_id, owner, statuses):
        """Persist :class:`~imapsvc.model.FolderStatus` rows, fenced by the
        lease (:class:`LeaseLost`)."""

    def heartbeat_replica(owner, info=None):
        """Record that replica ``owner`` is alive (``imap_replicas``)."""

    def forget_replica(owner):
        """Remove a replica that stops cleanly."""

    def read_deployment(tenants=None):
        """Every imap provider, persisted folder state and replica (see
        :func:`imapsvc.core.cluster.deployment_status`), with the store's
        ``now``. :rtype: Deferred[dict]"""


class IAdminRequestStore(Interface):
    """Queued admin actions for a provider's owner (any replica can take an
    operator's request; the owner applies it)."""

    def add_admin_request(tenant, provider_id, action, folder=None, requested_by=None):
        """Queue an admin action for the provider's owner (and NOTIFY
        ``imapsvc_admin`` where the store can).
        :rtype: Deferred[imapsvc.model.AdminRequest]"""

    def claim_admin_requests(owner, limit=10, stale_s=60.0):
        """Claim pending requests of providers ``owner`` leases or that no
        live lease holds (a claim older than ``stale_s`` may be taken over).
        :rtype: Deferred[list[imapsvc.model.AdminRequest]]"""

    def complete_admin_request(tenant, request_id, owner, result):
        """Store the result (a JSON object) and ``applied_at``."""

    def get_admin_request(tenant, request_id):
        """:rtype: Deferred[Optional[imapsvc.model.AdminRequest]]"""


class ICiphertextStore(Interface):
    """Encrypted secrets as bytes, sealed and opened by the
    :class:`ISecretStore` above them."""

    def put_secret(tenant, name, ciphertext):
        """Store an encrypted secret (bytes) under ``name``."""

    def get_secret(tenant, name):
        """:rtype: Deferred[Optional[bytes]]"""

    def delete_secret(tenant, name):
        """Remove a secret if present."""


class IOAuthStateStore(Interface):
    """Single-use OAuth ``state`` nonces with their PKCE verifiers."""

    def put_oauth_state(tenant, nonce, verifier, expires_at):
        """Remember an OAuth ``state`` nonce with its PKCE verifier (the
        verifier stays server-side)."""

    def take_oauth_state(tenant, nonce):
        """Consume a nonce once: the verifier the first time, ``None`` after
        that or when expired/unknown (single use).

        :rtype: Deferred[Optional[str]]
        """


class IStore(IProviderStore, ICursorStore, ILeaseStore, ILedgerStore, IOutboxStore,
             IPoisonStore, IClusterStore, IAdminRequestStore, ICiphertextStore,
             IOAuthStateStore):
    """Durable state: every role interface above, plus readiness. The
    stores (:mod:`imapsvc.store`) implement all of it; a component takes the
    role it uses.

    Tenancy: every operation names the tenant; implementations filter every
    query by it (the tables are distributed by tenant on Citus).
    """

    def ping():
        """Answer when the database answers (readiness)."""


class ISink(Interface):
    """Where stream entries go: a Redis stream, or a JSON Lines file."""

    def publish(entries):
        """Append entries in order, each at most once within the sink's
        dedupe window: an entry whose ``event_id`` the sink already took
        within it is not appended again (a re-publish after a crash or a
        lease change), and its first stream id is answered for it.

        :param entries: a list of ``(event_id, fields)`` with ``fields`` a
            mapping of flat strings.
        :rtype: Deferred[list[str]]: the stream ids, in order, once every
            entry is durably appended; fails (and may have appended a prefix)
            otherwise.
        """

    def ping():
        """Answer when the sink is reachable (readiness)."""


class IMessagePipeline(Interface):
    """What the folder engine hands fetched messages to."""

    def handle_batch(provider, folder, owner, messages, cursor):
        """Parse, dedupe and record one batch.

        :param provider: :class:`~imapsvc.model.ProviderConfig`
        :param messages: list of :class:`~imapsvc.model.FetchedMessage`, UID order
        :param cursor: the :class:`~imapsvc.model.FolderCursor` to store with
            the batch (last UID of the batch)
        :rtype: Deferred[imapsvc.model.BatchResult]; a failure means nothing
            was recorded and the cursor must not advance.
        """


class ISecretStore(Interface):
    """Named per-provider secrets (CONTRACT section 3), encrypted at rest."""

    def get(tenant, name):
        """:rtype: Deferred[Optional[str]]"""

    def put(tenant, name, value):
        """Store ``value`` encrypted."""

    def delete(tenant, name):
        """Remove."""


class ICredentialSource(Interface):
    """Gives the folder engine what it needs to log in."""

    def credentials(provider, force_refresh=False):
        """:rtype: Deferred[imapsvc.model.Credentials]: the login
        (password or a fresh OAuth2 access token). ``force_refresh=True``
        (only passed after the server refused an access token) refreshes the
        token even when it has not expired."""


class IClock(Interface):
    """The part of the reactor the pure-ish services use (``IReactorTime``)."""

    seconds = Attribute("callable returning the current time in seconds")


class IAdmin(Interface):
    """Operator actions (the supervisor implements them; the web routes and
    the CLI call them)."""

    def reconnect(tenant, provider_id):
        """Drop the provider's connections, keep cursors. :rtype: Deferred[dict]"""

    def resync(tenant, provider_id, folder=None):
        """Reset cursors to the recent window, seen by the running worker.
        :rtype: Deferred[dict]"""

    def test_connection(tenant, provider_id):
        """Log in and out once. :rtype: Deferred[dict] ``{"ok": bool, "error": str?}``"""

    def pause(tenant, provider_id):
        """Pause the provider (``manual``) and stop it. :rtype: Deferred[dict]"""

    def resume(tenant, provider_id):
        """Clear the provider's pause. :rtype: Deferred[dict]"""

    def status():
        """This replica's providers and folders, redacted. :rtype: dict"""

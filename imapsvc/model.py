"""Plain value types that cross the seams between the store, the folder
engine, the pipeline and the sink.

Everything here is a frozen ``attrs`` class with no I/O, so the pure core can
build and compare them and every store implementation returns the same
shapes.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Mapping, Optional, Sequence

import attr

from imapsvc.core.folders import unique_folders
from imapsvc.core.gmail import is_gmail

#: ``email_providers.status`` values.
STATUS_CONNECTED = "connected"
STATUS_DISCONNECTED = "disconnected"
STATUS_ERROR = "error"
STATUS_CONFIGURING = "configuring"

#: Ledger outcomes of one fetched message.
OUTCOME_PUBLISHED = "published"  # new message, an outbox row was written
OUTCOME_SKIPPED = "skipped"  # new message, deliberately not published
OUTCOME_DUPLICATE = "duplicate"  # already in the ledger (UID or Message-ID)


@attr.s(frozen=True, auto_attribs=True)
class FolderCursor:
    """Where one folder's ingestion stands (CONTRACT section 1, ``folder_state``).

    Values are strings, as stored; ``None`` means "absent" (start in the
    recent window).
    """

    uid_validity: Optional[str] = None
    last_uid: Optional[str] = None
    last_seen_at: Optional[str] = None

    def to_json(self) -> dict[str, str]:
        out = {}
        for key in ("uid_validity", "last_uid", "last_seen_at"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> Optional[FolderCursor]:
        if not data:
            return None

        def text(key: str) -> Optional[str]:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(text("uid_validity"), text("last_uid"), text("last_seen_at"))


@attr.s(frozen=True, auto_attribs=True)
class ProviderConfig:
    """One active IMAP provider: an ``email_providers`` row joined with its
    ``imap_email_provider_config`` row. The service's own secrets are not
    here: they live in the secret store under the CONTRACT section 3 names;
    the app's plaintext token columns are (``repr`` leaves them out)."""

    tenant: str
    provider_id: str
    provider_name: str
    mailbox: str
    host: str
    port: int
    secure: bool = True
    allow_starttls: bool = False
    auth_type: str = "password"  # password | oauth2
    username: str = ""
    connection_timeout_ms: Optional[int] = None
    socket_keepalive: Optional[bool] = None
    max_emails_per_sync: int = 50
    folder_filters: tuple[str, ...] = ()
    oauth_authorize_url: Optional[str] = None
    oauth_token_url: Optional[str] = None
    oauth_client_id: Optional[str] = None
    oauth_scopes: Optional[str] = None
    access_token: Optional[str] = attr.ib(default=None, repr=False)
    token_expires_at: Optional[datetime] = None
    #: The main app's plaintext columns (CONTRACT section 3): read as the
    #: last place of the credential lookup, never written by the service.
    oauth_client_secret: Optional[str] = attr.ib(default=None, repr=False)
    refresh_token: Optional[str] = attr.ib(default=None, repr=False)
    folder_state: Mapping[str, FolderCursor] = attr.Factory(dict)
    server_capabilities: tuple[str, ...] = ()
    lease_owner: Optional[str] = None
    lease_expires_at: Optional[datetime] = None
    status: str = STATUS_CONFIGURING
    is_active: bool = True
    inbound_paused_at: Optional[datetime] = None
    inbound_auth_failure_count: int = 0
    updated_at: Optional[datetime] = None
    #: ``imap_provider_options.write_back`` (issue 13 item 3): ``none``,
    #: ``seen``, ``delete``, ``move:<folder>``; ``None``: IMAP_WRITE_BACK.
    write_back: Optional[str] = None
    #: ``imap_provider_options.oauth_delegate`` (schema/0009): the account
    #: that consents for a shared mailbox; the login name stays ``username``.
    oauth_delegate: Optional[str] = None
    #: Set by a store when the row could not be read faithfully (say, a
    #: ``folder_filters`` that is not a list of strings): the supervisor
    #: marks such a provider ``error`` with this reason instead of running it.
    #: Not a column.
    config_error: Optional[str] = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.provider_id)

    @property
    def folders(self) -> tuple[str, ...]:
        """The configured folder paths, one per connection; empty
        configuration means INBOX. Filters that differ only in case (or
        surrounding blanks) are one folder: the first spelling wins (see
        :func:`imapsvc.core.folders.unique_folders`)."""
        return unique_folders(self.folder_filters) or ("INBOX",)

    def connection_signature(self) -> tuple[Any, ...]:
        """What forces a restart of the provider's connections when it changes."""
        return (
            self.host,
            self.port,
            self.secure,
            self.allow_starttls,
            self.auth_type,
            self.username,
            self.folder_filters,
            # Gmail's connection budget changes how folders are connected:
            # learning it from a login's capabilities restarts the provider.
            is_gmail(self.host, self.server_capabilities),
        )


@attr.s(frozen=True, auto_attribs=True)
class MessageRecord:
    """The durable outcome of one fetched message, written by
    :meth:`IStore.record_batch` in the same transaction as the cursor.

    :ivar dedupe_key: ``imap:<mailbox>:<uidvalidity>:<uid>`` (or
        ``gmail:<X-GM-MSGID>`` for a Gmail message), unique per provider.
    :ivar message_id_key: the normalised Message-ID (lower-cased, brackets
        kept), unique per provider when not ``None``.
    :ivar outcome: :data:`OUTCOME_PUBLISHED` or :data:`OUTCOME_SKIPPED` as the
        pipeline decided; the store turns either into
        :data:`OUTCOME_DUPLICATE` when the ledger already knows the message.
    :ivar event_id: the deterministic event id (also for skipped messages, for
        traceability).
    :ivar fields: the complete stream entry (flat string fields) for a
        published message; ``None`` otherwise.
        The pipeline gives a :class:`~imapsvc.core.event.StreamEntry`,
        whose payload stays the encoder's UTF-8 bytes on the way to the
        outbox and the stream.
    """

    dedupe_key: str
    folder: str
    uid_validity: str
    uid: int
    message_id_key: Optional[str]
    outcome: str
    event_id: str
    reason: Optional[str] = None
    fields: Optional[Mapping[str, str]] = None


@attr.s(frozen=True, auto_attribs=True)
class BatchResult:
    """What :meth:`IStore.record_batch` did, in the order of the input."""

    outcomes: tuple[str, ...]
    #: The outbox rows this batch queued (:class:`OutboxRow`, commit order),
    #: when the store reports them (empty otherwise). The relay publishes
    #: them from memory instead of reading them back; not part of equality.
    outbox: tuple[Any, ...] = attr.ib(default=(), eq=False, repr=False)

    @property
    def published(self) -> int:
        return self.outcomes.count(OUTCOME_PUBLISHED)

    @property
    def duplicates(self) -> int:
        return self.outcomes.count(OUTCOME_DUPLICATE)

    @property
    def skipped(self) -> int:
        return self.outcomes.count(OUTCOME_SKIPPED)


#: ``reason`` prefix of a ledger row for a message skipped as poison.
POISON_REASON_PREFIX = "poison: "


@attr.s(frozen=True, auto_attribs=True)
class PoisonMessage:
    """A message whose fetch failed (``imap_message_failures``): counted,
    and once ``skipped_at`` is set, recorded as skipped in the ledger."""

    tenant: str
    provider_id: str
    folder: str
    uid_validity: str
    uid: int
    failures: int
    reason: Optional[str]
    skipped_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None


@attr.s(frozen=True, auto_attribs=True)
class OutboxRow:
    """One stream entry waiting to be (or already) published, in commit order."""

    id: int
    tenant: str
    provider_id: str
    event_id: str
    fields: Mapping[str, str]
    created_at: datetime


@attr.s(frozen=True, auto_attribs=True)
class BodyPart:
    """One leaf of a BODYSTRUCTURE, normalised (see ``imapsvc.core.bodystructure``).

    :ivar section: the IMAP part specifier, ``"1"``, ``"1.2"``, ...; ``"TEXT"``
        for a single-part message's body.
    :ivar size: the encoded octet count the server reports.
    :ivar decoded_size: the estimated decoded size (base64 maths, or the
        ``size=`` disposition parameter when present).
    """

    section: str
    content_type: str  # lower-cased "type/subtype"
    params: Mapping[str, str]
    encoding: str  # lower-cased Content-Transfer-Encoding
    size: int
    decoded_size: int
    content_id: Optional[str] = None
    disposition: Optional[str] = None  # "inline" | "attachment" | None
    filename: Optional[str] = None
    lines: Optional[int] = None
    is_body_text: bool = False  # a text/plain or text/html part that is the message body
    #: The part sits directly inside a multipart/related (an inline image of an HTML body).
    in_related: bool = False


@attr.s(frozen=True, auto_attribs=True)
class FetchedMessage:
    """What the folder engine hands to the pipeline for one message.

    On the structure path ``parts`` is the normalised BODYSTRUCTURE,
    ``header`` the exact header bytes and ``texts`` maps a part section to
    the exact (still transfer-encoded) bytes of that body part; ``raw`` is
    ``None``. On the fallback path ``raw`` holds the whole message and
    ``parts``/``texts`` are empty.
    """

    mailbox: str
    uid_validity: str
    uid: int
    size: int
    internal_date: Optional[str]  # ISO-8601 "Z"; None when the server gave none
    header: bytes = b""
    parts: Sequence[BodyPart] = ()
    texts: Mapping[str, bytes] = attr.Factory(dict)
    raw: Optional[bytes] = None
    #: Sections of text parts not downloaded because of a size cap.
    truncated: Sequence[str] = ()
    #: ``IMAP_ATTACHMENT_MODE`` inline/store, structure path: attachment
    #: section -> its exact (still transfer-encoded) bytes, for the
    #: attachments within the caps (see ``imapsvc.core.attachment_content``).
    contents: Mapping[str, bytes] = attr.Factory(dict)
    #: ``store`` mode, after the upload: section (or
    #: :data:`RAW_MIME_SECTION`) -> ``{"storageKey", "sha256", "size"}``.
    #: The pipeline fills it and drops ``contents`` before mapping.
    stored: Mapping[str, Mapping[str, Any]] = attr.Factory(dict)
    #: Gmail (``X-GM-EXT-1``): the message's ``X-GM-MSGID`` (decimal), the
    #: same in every folder (label) that shows it; ``None`` elsewhere.
    gm_msgid: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class Credentials:
    """One login: ``mechanism`` is ``"password"`` (LOGIN, over TLS only),
    ``"xoauth2"`` or ``"oauthbearer"``. The secret never appears in repr."""

    mechanism: str
    username: str
    secret: str = attr.ib(repr=False)


MIB = 1024 * 1024


@attr.s(frozen=True, auto_attribs=True)
class Limits:
    """Size caps of CONTRACT section 2 (``IMAP_MAX_*``), in bytes / counts."""

    max_attachment_bytes: int = 10 * MIB
    max_total_attachment_bytes: int = 25 * MIB
    max_attachment_count: int = 25
    max_raw_mime_bytes: int = 25 * MIB
    #: A text/plain or text/html body part larger than this is fetched only
    #: up to this many bytes (and reported in ``ingressSkipReasons``).
    max_text_part_bytes: int = 2 * MIB
    #: ``IMAP_EXPAND_TNEF``: list the files inside ``winmail.dat`` parts
    #: within ``max_attachment_bytes`` (see ``imapsvc.core.tnef``).
    expand_tnef: bool = False
    #: ``IMAP_ATTACHMENT_MODE``: :data:`ATTACHMENT_MODE_METADATA`,
    #: :data:`ATTACHMENT_MODE_INLINE` or :data:`ATTACHMENT_MODE_STORE`. It
    #: rides on the limits because it decides, like them, what is fetched
    #: and what the mapping puts in ``emailData.attachments``.
    attachment_mode: str = "metadata"
    #: ``IMAP_STORE_RAW_MIME`` (``store`` mode only): also store the whole
    #: message (fetched whole when within ``max_raw_mime_bytes``).
    store_raw_mime: bool = False


#: ``IMAP_ATTACHMENT_MODE`` values (CONTRACT section 2).
ATTACHMENT_MODE_METADATA = "metadata"
ATTACHMENT_MODE_INLINE = "inline"
ATTACHMENT_MODE_STORE = "store"
ATTACHMENT_MODES = (ATTACHMENT_MODE_METADATA, ATTACHMENT_MODE_INLINE, ATTACHMENT_MODE_STORE)
#: The :attr:`FetchedMessage.stored` key of the whole message
#: (``IMAP_STORE_RAW_MIME``).
RAW_MIME_SECTION = "raw"


# -- one service across replicas (schema/0004) --------------------------------


@attr.s(frozen=True, auto_attribs=True)
class LeaseGrant:
    """What :meth:`IStore.acquire_lease_capped` did.

    :ivar acquired: the lease is ``owner``'s now.
    :ivar folders: the folders granted a connection, INBOX first (empty
        when not acquired).
    :ivar waiting: folders left without a connection by the tenant cap.
    :ivar in_use: connections of the tenant held under other live leases
        when the lease was taken (or refused).
    :ivar error: the cap error written to the provider (``None`` when every
        folder got its connection or the lease is someone else's).
    """

    acquired: bool
    folders: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    in_use: int = 0
    error: Optional[str] = None

    def __bool__(self) -> bool:
        return self.acquired


@attr.s(frozen=True, auto_attribs=True)
class FolderStatus:
    """One folder's state as a replica persists it for ``/status``
    (``imap_folder_status``); times are aware UTC datetimes."""

    folder: str
    state: str
    since: Optional[datetime] = None
    last_sync_at: Optional[datetime] = None
    last_error: Optional[str] = None
    counters: Mapping[str, Any] = attr.Factory(dict)


@attr.s(frozen=True, auto_attribs=True)
class AdminRequest:
    """One admin action routed to the provider's owner (``imap_admin_requests``)."""

    tenant: str
    id: str
    provider_id: str
    action: str
    folder: Optional[str] = None
    requested_by: Optional[str] = None
    created_at: Optional[datetime] = None
    claimed_by: Optional[str] = None
    applied_by: Optional[str] = None
    applied_at: Optional[datetime] = None
    result: Optional[Mapping[str, Any]] = None


@attr.s(frozen=True, auto_attribs=True)
class BackfillState:
    """What a folder's sync needs to know about backfills (schema/0008).

    :ivar first_sync_since_days: the provider's own first-sync window in
        days (``None``: ``IMAP_FIRST_SYNC_SINCE_DAYS``; ``0``: off).
    :ivar pending_since: the earliest pending ``resync --since`` date of the
        folder, or ``None``.
    """

    first_sync_since_days: Optional[int] = None
    pending_since: Optional[date] = None

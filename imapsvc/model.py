"""Plain value types that cross the seams between the store, the folder
engine, the pipeline and the sink.

Everything here is a frozen ``attrs`` class with no I/O, so the pure core can
build and compare them and every store implementation returns the same
shapes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

import attr

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
    ``imap_email_provider_config`` row. Secrets are not here: they live in
    the secret store under the CONTRACT section 3 names."""

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
    folder_state: Mapping[str, FolderCursor] = attr.Factory(dict)
    server_capabilities: tuple[str, ...] = ()
    lease_owner: Optional[str] = None
    lease_expires_at: Optional[datetime] = None
    status: str = STATUS_CONFIGURING
    is_active: bool = True
    inbound_paused_at: Optional[datetime] = None
    inbound_auth_failure_count: int = 0
    updated_at: Optional[datetime] = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.provider_id)

    @property
    def folders(self) -> tuple[str, ...]:
        """The configured folder paths; empty configuration means INBOX."""
        return self.folder_filters or ("INBOX",)

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
        )


@attr.s(frozen=True, auto_attribs=True)
class MessageRecord:
    """The durable outcome of one fetched message, written by
    :meth:`IStore.record_batch` in the same transaction as the cursor.

    :ivar dedupe_key: ``imap:<mailbox>:<uidvalidity>:<uid>``, unique per provider.
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

"""The pipeline's ``store`` step: upload a batch's attachments (and, with
``IMAP_STORE_RAW_MIME``, whole messages) before the batch is recorded.

Order of events for one batch:

1. every attachment within the caps is decoded slice by slice and written to
   its deterministic key (:func:`imapsvc.core.attachment_content.object_key`),
   its SHA-256 computed on the way;
2. each message comes back with :attr:`FetchedMessage.stored` filled in and
   its fetched ``contents`` dropped (the mapping needs only the references);
3. only then does the pipeline map and record the batch (ledger, outbox,
   cursor in one transaction).

A failure in 1 fails the batch before anything is recorded: the cursor does
not move, the folder fetches the messages again and the retry writes the
same keys, so no key is missing and no event is duplicated. Uploads run one
after the other, so one message's parts are in flight at most.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator, Sequence

import attr
from twisted.internet import defer
from twisted.logger import Logger

from imapsvc.core.attachment_content import decoded_chunks, message_contents, object_key
from imapsvc.model import RAW_MIME_SECTION, FetchedMessage, Limits

_log = Logger()

RAW_CONTENT_TYPE = "message/rfc822"


class _Hashing:
    """Wraps a chunk iterator; counts and hashes what passes through."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


class ObjectUploader:
    """:param store: an :class:`~imapsvc.objectstore.IObjectStore`.
    :param limits: the caps and mode (``store_raw_mime``).
    :param prefix: ``IMAP_OBJECT_STORE_PREFIX``.

    :ivar stats: ``objects`` and ``bytes`` written, ``failures``.
    """

    def __init__(self, store: Any, limits: Limits, prefix: str = "") -> None:
        self.store = store
        self.limits = limits
        self.prefix = prefix
        self.stats = {"objects": 0, "bytes": 0, "failures": 0}

    @defer.inlineCallbacks
    def store_batch(  # type: ignore[no-untyped-def]
        self, tenant: str, provider_id: str, folder: str, messages: Sequence[FetchedMessage]
    ):
        """Upload every message's objects; fires with the messages carrying
        ``stored`` (and no ``contents``), in the same order."""
        out = []
        try:
            for msg in messages:
                stored = yield self._store_message(tenant, provider_id, folder, msg)
                out.append(attr.evolve(msg, contents={}, stored=stored))
        except Exception:
            self.stats["failures"] += 1
            raise
        return out

    @defer.inlineCallbacks
    def _store_message(self, tenant: str, provider_id: str, folder: str, msg: FetchedMessage):  # type: ignore[no-untyped-def]
        stored: dict[str, dict[str, Any]] = {}
        contents = message_contents(msg, self.limits)
        for section, (encoding, data, content_type) in contents.items():
            key = object_key(
                self.prefix, tenant, provider_id, folder, msg.uid_validity, msg.uid, section
            )
            stored[section] = yield self._put(key, decoded_chunks(encoding, data), content_type)
        if self.limits.store_raw_mime and msg.raw is not None:
            key = object_key(
                self.prefix,
                tenant,
                provider_id,
                folder,
                msg.uid_validity,
                msg.uid,
                RAW_MIME_SECTION,
            )
            raw = memoryview(msg.raw)
            step = 1024 * 1024
            chunks = (bytes(raw[i : i + step]) for i in range(0, len(raw), step))
            stored[RAW_MIME_SECTION] = yield self._put(key, chunks, RAW_CONTENT_TYPE)
        return stored

    @defer.inlineCallbacks
    def _put(self, key: str, chunks: Iterable[bytes], content_type: Any):  # type: ignore[no-untyped-def]
        hashing = _Hashing(chunks)
        yield self.store.put(key, hashing, content_type or "application/octet-stream")
        self.stats["objects"] += 1
        self.stats["bytes"] += hashing.size
        return {"storageKey": key, "sha256": hashing.sha.hexdigest(), "size": hashing.size}

"""An S3-compatible :class:`~imapsvc.objectstore.IObjectStore` over treq.

- Addressing is path-style (``<endpoint>/<bucket>/<key>``), which every
  S3-compatible server (MinIO, Ceph, moto, AWS itself) accepts.
- Requests are signed with botocore's ``S3SigV4Auth`` (the payload hash is
  signed too); botocore does no I/O here.
- Credentials come from the standard AWS environment variables
  (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional
  ``AWS_SESSION_TOKEN``), read once at start; they never appear in a log
  line or an error message.
- An object up to ``part_bytes`` goes in one ``PUT``; a bigger one in a
  multipart upload of ``part_bytes`` parts (S3's minimum is 5 MiB). At most
  one part is held in memory; a failed multipart upload is aborted so no
  orphan parts stay behind, and nothing is visible under the key until the
  upload completes. A retry writes the same key again (S3 overwrites).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from zope.interface import implementer

from imapsvc.objectstore import IObjectStore, ObjectStoreError

MIB = 1024 * 1024
#: S3's smallest multipart part (all but the last).
MIN_PART_BYTES = 5 * MIB
DEFAULT_PART_BYTES = 8 * MIB
DEFAULT_TIMEOUT = 60.0

_UPLOAD_ID = re.compile(rb"<UploadId>([^<]{1,1024})</UploadId>")
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9_.-]{1,100})</Code>")


class _SignPayload:
    """botocore's client config stand-in: sign the payload hash also over
    https (S3SigV4Auth leaves it UNSIGNED there by default)."""

    s3 = {"payload_signing_enabled": True}


def _signed_headers(creds: Any, region: str, method: str, url: str, body: bytes,
                    headers: Optional[dict] = None) -> dict[str, str]:  # fmt: skip
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    req.context["client_config"] = _SignPayload()
    S3SigV4Auth(creds, "s3", region).add_auth(req)
    return {k: v for k, v in req.headers.items()}


#: The AWS variables read for credentials and region.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def credentials_from_env(environ: Optional[dict[str, str]] = None) -> Any:
    """botocore ``Credentials`` from the AWS environment variables."""
    from botocore.credentials import Credentials

    env = os.environ if environ is None else environ
    key = env.get("AWS_ACCESS_KEY_ID", "")
    secret = env.get("AWS_SECRET_ACCESS_KEY", "")
    if not key or not secret:
        raise ObjectStoreError(
            "IMAP_OBJECT_STORE_URL is set but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not"
        )
    return Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)


def region_from_env(environ: Optional[dict[str, str]] = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup ``chunks`` into pieces of exactly ``size`` bytes (the last
    one shorter), holding at most one piece."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            with memoryview(buf) as view:
                piece = bytes(view[:size])  # one copy, not a bytearray slice and then bytes
            del buf[:size]
            yield piece
            del piece
    if buf:
        yield bytes(buf)


@implementer(IObjectStore)
class S3ObjectStore:
    """:param endpoint: ``http(s)://host[:port]`` of the S3 API.
    :param http: a treq ``HTTPClient`` (default: one on ``reactor``)."""

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        bucket: str,
        credentials: Any,
        region: str = "us-east-1",
        part_bytes: int = DEFAULT_PART_BYTES,
        http: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        runner: Optional[Callable[..., defer.Deferred[Any]]] = None,
    ) -> None:
        if not bucket:
            raise ObjectStoreError(
                "IMAP_OBJECT_STORE_BUCKET is required with IMAP_OBJECT_STORE_URL"
            )
        self._reactor = reactor
        parts = urlsplit(endpoint)
        self._base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._bucket = bucket
        self._creds = credentials
        self._region = region
        self._part_bytes = max(MIN_PART_BYTES, int(part_bytes))
        self._timeout = timeout
        if http is None:
            import treq

            http = treq
        self._http = http
        # Decoding and hashing a part (CPU work of tens of milliseconds for
        # a part at the caps) runs through ``runner``: the reactor's thread
        # pool in the service, so IDLE connections are not held up.
        self._runner = runner or defer.maybeDeferred

    def describe(self) -> str:
        return f"s3 {self._base}/{self._bucket}"

    def _url(self, key: str, query: str = "") -> str:
        url = f"{self._base}/{quote(self._bucket, safe='')}/{quote(key, safe='/-_.~')}"
        return f"{url}?{query}" if query else url

    @defer.inlineCallbacks
    def _request(self, method: str, url: str, body: bytes = b"", headers: Optional[dict] = None):  # type: ignore[no-untyped-def]
        sent = _signed_headers(self._creds, self._region, method, url, body, headers)
        d = self._http.request(
            method,
            url,
            data=body or None,
            headers=sent,
            reactor=self._reactor,
            allow_redirects=False,
        )
        # One deadline for the answer and its body: a server that stalls
        # mid-body fails the upload instead of hanging the folder.
        d.addCallback(lambda r: r.content().addCallback(lambda c: (r, c)))
        d.addTimeout(self._timeout, self._reactor)
        try:
            response, content = yield d
        except defer.TimeoutError:
            raise ObjectStoreError(f"{method} to the object store timed out") from None
        except ObjectStoreError:
            raise
        except Exception as e:
            raise ObjectStoreError(
                f"{method} to the object store failed: {type(e).__name__}"
            ) from None
        if (
            not 200 <= response.code < 300
            or content.lstrip().startswith(b"<Error>")
            or (b"<Error>" in content[:512] and method == "POST")
        ):
            code = _ERROR_CODE.search(content or b"")
            what = code.group(1).decode("ascii") if code else ""
            raise ObjectStoreError(
                f"{method} to the object store answered {response.code} {what}".rstrip()
            )
        return response, content

    def create_bucket(self) -> defer.Deferred[Any]:
        """``PUT /<bucket>`` (tests and first-run set-up)."""
        return self._request("PUT", f"{self._base}/{quote(self._bucket, safe='')}")

    @defer.inlineCallbacks
    def put(self, key: str, chunks: Iterable[bytes], content_type: str):  # type: ignore[no-untyped-def]
        pieces = _parts(chunks, self._part_bytes)
        first = yield self._runner(next, pieces, b"")
        second = yield self._runner(next, pieces, None)
        headers = {"Content-Type": content_type or "application/octet-stream"}
        if second is None:
            yield self._request("PUT", self._url(key), first, headers)
            return None
        _resp, content = yield self._request("POST", self._url(key, "uploads"), b"", headers)
        found = _UPLOAD_ID.search(content)
        if not found:
            raise ObjectStoreError("the object store gave no multipart UploadId")
        upload_id = found.group(1).decode("utf-8")
        qid = quote(upload_id, safe="")
        etags: list[str] = []
        try:
            number = 0
            piece: Optional[bytes] = first
            while piece is not None:
                number += 1
                resp, _ = yield self._request(
                    "PUT", self._url(key, f"partNumber={number}&uploadId={qid}"), piece
                )
                etag = resp.headers.getRawHeaders(b"etag", [b""])[0].decode("ascii", "replace")
                etags.append(etag)
                piece = second if number == 1 else (yield self._runner(next, pieces, None))
                second = None
            body = "".join(
                f"<Part><PartNumber>{i}</PartNumber><ETag>{tag}</ETag></Part>"
                for i, tag in enumerate(etags, 1)
            )
            xml = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
            yield self._request("POST", self._url(key, f"uploadId={qid}"), xml)
        except BaseException:
            try:
                yield self._request("DELETE", self._url(key, f"uploadId={qid}"))
            except Exception:
                pass  # the bucket's lifecycle rule cleans up what is left
            raise
        return None

    @defer.inlineCallbacks
    def get(self, key: str):  # type: ignore[no-untyped-def]
        url = self._url(key)
        sent = _signed_headers(self._creds, self._region, "GET", url, b"")
        d = self._http.request(
            "GET", url, headers=sent, reactor=self._reactor, allow_redirects=False
        )
        d.addCallback(lambda r: r.content().addCallback(lambda c: (r, c)))
        d.addTimeout(self._timeout, self._reactor)
        response, content = yield d
        if response.code == 404:
            return None
        if not 200 <= response.code < 300:
            raise ObjectStoreError(f"GET from the object store answered {response.code}")
        return content

"""The S3 store's request logic against a scripted HTTP client: what is
signed, the multipart sequence and its abort, errors and the deadline."""

from __future__ import annotations

from typing import Any, Optional

from botocore.credentials import Credentials
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from imapsvc.objectstore import ObjectStoreError
from imapsvc.objectstore.s3 import MIN_PART_BYTES, S3ObjectStore

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class FakeResponse:
    def __init__(self, code: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
        self.code = code
        self._body = body
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})

    def content(self) -> defer.Deferred[bytes]:
        return defer.succeed(self._body)


class ScriptedHttp:
    """Answers requests from a list of (method, query substring, response)
    rules, first match wins; records every request."""

    def __init__(self, rules: list[tuple[str, str, Any]]) -> None:
        self.rules = rules
        self.requests: list[tuple[str, str, dict, Optional[bytes]]] = []

    def request(self, method: str, url: str, data: Any = None, headers: Any = None,
                reactor: Any = None, allow_redirects: bool = True) -> Any:  # fmt: skip
        self.requests.append((method, url, dict(headers or {}), data))
        for m, fragment, answer in self.rules:
            if m == method and fragment in url:
                if isinstance(answer, Exception):
                    return defer.fail(answer)
                if answer == "hang":
                    return defer.Deferred()
                return defer.succeed(answer)
        return defer.succeed(FakeResponse(200))


def store(http: ScriptedHttp, clock: Any = None) -> S3ObjectStore:
    return S3ObjectStore(
        clock or Clock(), "https://s3.example.com", "mail", Credentials("AKID", SECRET),
        "eu-west-1", part_bytes=MIN_PART_BYTES, http=http, timeout=30,
    )  # fmt: skip


class S3ClientTests(unittest.TestCase):
    def test_small_object_is_one_signed_put(self) -> None:
        http = ScriptedHttp([])
        self.successResultOf(store(http).put("t/p/INBOX/1/2/3", iter([b"abc"]), "image/png"))
        [(method, url, headers, data)] = http.requests
        self.assertEqual((method, data), ("PUT", b"abc"))
        self.assertEqual(url, "https://s3.example.com/mail/t/p/INBOX/1/2/3")
        self.assertTrue(headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/"))
        self.assertIn("/eu-west-1/s3/aws4_request", headers["Authorization"])
        # The payload hash is signed, also over https.
        self.assertEqual(
            headers["X-Amz-Content-SHA256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )
        self.assertEqual(headers["Content-Type"], "image/png")
        self.assertNotIn(SECRET, repr(http.requests))

    def test_big_object_goes_up_in_parts_and_is_completed(self) -> None:
        init = FakeResponse(200, b"<InitiateMultipartUploadResult><UploadId>u+1/x</UploadId>")
        http = ScriptedHttp([("POST", "?uploads", init)])
        data = b"x" * (2 * MIN_PART_BYTES + 10)
        self.successResultOf(store(http).put("k", iter([data]), "application/zip"))
        methods = [(m, u.split("?", 1)[1] if "?" in u else "") for m, u, _h, _d in http.requests]
        self.assertEqual(
            methods,
            [
                ("POST", "uploads"),
                ("PUT", "partNumber=1&uploadId=u%2B1%2Fx"),
                ("PUT", "partNumber=2&uploadId=u%2B1%2Fx"),
                ("PUT", "partNumber=3&uploadId=u%2B1%2Fx"),
                ("POST", "uploadId=u%2B1%2Fx"),
            ],
        )
        sizes = [len(d) for m, _u, _h, d in http.requests if m == "PUT"]
        self.assertEqual(sizes, [MIN_PART_BYTES, MIN_PART_BYTES, 10])
        self.assertEqual(http.requests[-1][3].count(b"<PartNumber>"), 3)

    def test_a_failed_part_aborts_the_upload(self) -> None:
        init = FakeResponse(200, b"<UploadId>abc</UploadId>")
        error = FakeResponse(500, b"<Error><Code>InternalError</Code></Error>")
        http = ScriptedHttp([("POST", "?uploads", init), ("PUT", "partNumber=2", error)])
        f = self.failureResultOf(
            store(http).put("k", iter([b"y" * (2 * MIN_PART_BYTES)]), "x"), ObjectStoreError
        )
        self.assertIn("500 InternalError", str(f.value))
        last = http.requests[-1][0:2]
        self.assertEqual(last, ("DELETE", "https://s3.example.com/mail/k?uploadId=abc"))

    def test_an_error_inside_a_200_completion_fails(self) -> None:
        init = FakeResponse(200, b"<UploadId>abc</UploadId>")
        bad = FakeResponse(200, b'<?xml version="1.0"?>\n<Error><Code>SlowDown</Code></Error>')
        http = ScriptedHttp([("POST", "?uploads", init), ("POST", "?uploadId=", bad)])
        f = self.failureResultOf(
            store(http).put("k", iter([b"y" * (MIN_PART_BYTES + 1)]), "x"), ObjectStoreError
        )
        self.assertIn("SlowDown", str(f.value))

    def test_refusal_and_connection_errors_carry_no_secret(self) -> None:
        http = ScriptedHttp([("PUT", "", ConnectionRefusedError("refused"))])
        f = self.failureResultOf(store(http).put("k", iter([b"a"]), "x"), ObjectStoreError)
        self.assertIn("ConnectionRefusedError", str(f.value))
        self.assertNotIn(SECRET, str(f.value))

    def test_a_silent_server_times_out(self) -> None:
        clock = Clock()
        http = ScriptedHttp([("PUT", "", "hang")])
        d = store(http, clock).put("k", iter([b"a"]), "x")
        self.assertNoResult(d)
        clock.advance(31)
        f = self.failureResultOf(d, ObjectStoreError)
        self.assertIn("timed out", str(f.value))

    def test_get_missing_is_none(self) -> None:
        http = ScriptedHttp([("GET", "", FakeResponse(404, b"<Error/>"))])
        self.assertIsNone(self.successResultOf(store(http).get("k")))

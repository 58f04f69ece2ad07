"""A real S3-compatible server for tests: moto's server mode, on a loopback
port, in a thread of the test process (one per process; moto's state is
global). Request signing is checked: the server starts with IAM
authentication on and one user whose access key the tests use, so a badly
signed request is refused as it would be by AWS."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import attr

REGION = "us-east-1"
USER = "imapsvc-test"


@attr.s(frozen=True, auto_attribs=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str = attr.ib(repr=False)

    def environ(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
        }

    def credentials(self) -> Any:
        from botocore.credentials import Credentials

        return Credentials(self.access_key_id, self.secret_access_key)


_server: Optional[S3Server] = None


def moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


def s3_server() -> S3Server:
    """Start (once) and return the server."""
    global _server
    if _server is not None:
        return _server
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.server import ThreadedMotoServer

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["global"]
    iam.create_user(region_name=REGION, user_name=USER)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(USER, "s3-all", json.dumps(policy))
    key = iam.create_access_key(USER)
    # Every request from now on is authenticated and its signature checked.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    # werkzeug logs every request on stderr: keep the test output readable.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _server = S3Server(f"http://{host}:{port}", key.access_key_id, key.secret_access_key)
    return _server

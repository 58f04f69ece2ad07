"""Packaging for imapsvc.

The Twisted plugin lives in ``twisted/plugins`` with no ``__init__.py`` next
to it (it is a namespace that Twisted's plugin loader scans), so it is listed
by hand rather than found by ``find_packages``.
"""

from glob import glob

from setuptools import find_packages, setup

setup(
    name="imapsvc",
    version="0.1.0",
    description="Turns mail arriving in IMAP folders into workflow events",
    python_requires=">=3.11",
    packages=find_packages(include=["imapsvc", "imapsvc.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["imapsvc_plugin.py"], "imapsvc": ["py.typed"]},
    include_package_data=True,
    # The SQL migrations ship beside the package so `python -m imapsvc migrate`
    # works from an installed wheel as well as from a checkout.
    data_files=[("share/imapsvc/schema", sorted(glob("schema/*.sql")))],
    install_requires=[
        "twisted[tls]>=24.7",
        "txredisapi>=1.4.10",
        "txpostgres>=1.7.0",
        "psycopg2-binary>=2.9",
        "treq>=23.11",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "klein>=24.8",
        # Authenticated encryption of secrets at rest (AES-GCM / Fernet).
        "cryptography>=42",
        # /metrics in the Prometheus text format.
        "prometheus-client>=0.20",
        # Frozen, validated value types (settings, store records).
        "attrs>=23.1",
        # winmail.dat (TNEF) -> the files inside (IMAP_EXPAND_TNEF): pure Python,
        # no dependencies; the one Python TNEF reader in use (its format is frozen).
        "tnefparse>=1.4,<2",
        # IMAP_ATTACHMENT_MODE=store on S3-compatible storage: only its SigV4
        # signer (botocore.auth.S3SigV4Auth) is used; the requests go through
        # treq. Signing by hand is easy to get subtly wrong (canonical URI
        # quoting, payload hash header, session tokens); botocore is the
        # reference implementation and maintained by AWS.
        "botocore>=1.34",
        # Each stream entry is encoded once, off the reactor; the stdlib
        # encoder was the largest single cost of mapping a small message.
        "orjson>=3.9",
        # txredisapi's C reply parser (used automatically when importable):
        # without it one pipelined reply is parsed per reactor turn.
        "hiredis>=2.0",
        # `python -m imapsvc events tail`: the CLI runs no reactor, so it
        # reads the stream with redis-py's blocking client (maintained by
        # Redis; uses hiredis too) rather than a RESP reader of our own.
        "redis>=5.0",
    ],
    extras_require={
        # moto[server]: a real S3-compatible HTTP server for the object store tests.
        "test": ["hypothesis>=6.100", "moto[server]>=5.0"],
        "dev": ["hypothesis>=6.100", "ruff", "mypy"],
    },
    zip_safe=False,
)

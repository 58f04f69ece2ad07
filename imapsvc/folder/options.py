"""The settings of one watched folder and the small helpers its modules share."""

from __future__ import annotations

from typing import Any, Callable, Optional

import attr

from imapsvc.core import plan as P
from imapsvc.model import Limits
from imapsvc.settings_table import SETTINGS

#: The settings table's defaults by attribute name: a folder built without
#: settings (tests, tools) behaves as the service does by default.
_DEFAULTS = {s.name: s.default for s in SETTINGS}


def _d(name: str) -> Any:
    return _DEFAULTS[name]


class FolderNotFound(Exception):
    """No selectable folder on the server matches the configured filter."""


class Stopping(Exception):
    """The folder is stopping: the pass and the session loop end quietly."""


@attr.s(frozen=True, auto_attribs=True)
class FolderOptions:
    """The settings one folder needs (explicit values, no global settings).

    Durations in milliseconds, as configured (CONTRACT section 5).
    """

    max_emails_per_sync: int = _d("max_emails_per_sync")
    poll_interval_ms: int = _d("poll_interval_ms")
    idle_restart_ms: int = _d("idle_restart_ms")
    idle_keepalive_ms: int = _d("idle_keepalive_ms")
    timer_jitter_pct: float = _d("timer_jitter_pct")
    startup_stagger_ms: int = _d("startup_stagger_ms")
    reconnect_base_ms: int = _d("reconnect_base_ms")
    reconnect_max_ms: int = _d("reconnect_max_ms")
    reconnect_jitter_pct: float = _d("reconnect_jitter_pct")
    connection_timeout_ms: int = _d("connection_timeout_ms")
    socket_keepalive: bool = _d("socket_keepalive")
    command_timeout_ms: int = _d("command_timeout_ms")
    inactivity_timeout_ms: int = _d("inactivity_timeout_ms")
    shutdown_timeout_ms: int = _d("shutdown_timeout_ms")
    fetch_chunk: int = _d("fetch_chunk")
    fetch_bytes: int = P.DEFAULT_FETCH_BYTES
    limits: Limits = attr.Factory(Limits)
    broken_bodystructure_hosts: tuple[str, ...] = _d("broken_bodystructure_hosts")
    tls_ca_file: Optional[str] = None
    tls_insecure: bool = _d("tls_insecure")
    oauth_auth_mechanism: str = _d("oauth_auth_mechanism")
    #: ``IMAP_ENABLE_UTF8``: ``ENABLE UTF8=ACCEPT`` when offered (RFC 6855).
    enable_utf8: bool = _d("enable_utf8")
    #: ``IMAP_MODSEQ``: CONDSTORE/QRESYNC use (``condstore``, ``qresync``, ``off``).
    modseq: str = _d("modseq")
    #: ``IMAP_COMPRESS``: COMPRESS=DEFLATE after login (auto/off/always).
    compress: str = _d("compress")
    #: Per-connection byte caps (:class:`imapsvc.core.wire_caps.WireCaps`);
    #: ``None`` keeps the protocol's defaults.
    wire_caps: Any = None
    #: The process-wide :class:`imapsvc.imap.budget.ByteBudget` (or ``None``).
    budget: Any = attr.ib(default=None, eq=False)
    #: The process-wide :class:`imapsvc.imap.connect_gate.ConnectGate` (or
    #: ``None``: no limit on sessions being set up at once).
    connect_gate: Any = attr.ib(default=None, eq=False)
    #: Failed fetches of one UID before it is skipped as poison.
    poison_after: int = _d("poison_after")
    #: Sessions in a row ended by a protocol-limit violation before the
    #: provider is quarantined, and for how long.
    quarantine_after: int = _d("quarantine_after")
    quarantine_ms: int = _d("quarantine_ms")
    #: ``IMAP_FIRST_SYNC_SINCE_DAYS``: a first sync by date (0: the window).
    first_sync_since_days: int = _d("first_sync_since_days")
    #: ``IMAP_WRITE_BACK``: the mode of providers without their own option.
    write_back: str = _d("write_back")

    @classmethod
    def from_settings(cls, settings: Any) -> FolderOptions:
        """Build from an :class:`imapsvc.config.Settings`-like object."""
        from imapsvc.core.wire_caps import derive_caps

        skip = ("limits", "fetch_bytes", "wire_caps", "budget", "connect_gate")
        names = [f.name for f in attr.fields(cls) if f.name not in skip]
        values = {n: getattr(settings, n) for n in names if hasattr(settings, n)}
        if hasattr(settings, "fetch_chunk"):
            values["fetch_chunk"] = settings.fetch_chunk
        if values.get("tls_ca_file") == "":
            values["tls_ca_file"] = None
        limits = settings.limits() if hasattr(settings, "limits") else Limits()
        if limits.attachment_mode != "metadata" and hasattr(settings, "attachment_fetch_chunk"):
            # Attachment bytes are held per chunk: fewer UIDs bound memory.
            values["fetch_chunk"] = min(values["fetch_chunk"], settings.attachment_fetch_chunk)
        caps = derive_caps(
            limits.max_raw_mime_bytes,
            limits.max_text_part_bytes,
            values.get("fetch_chunk", P.DEFAULT_FETCH_CHUNK),
            P.DEFAULT_FETCH_BYTES,
        )
        return cls(limits=limits, wire_caps=caps, **values)


def caps_names(caps: Any) -> list[str]:
    """Capability names (``str``, upper case) from a caps dict/list whose
    keys may be bytes (Twisted) or str."""
    out = set()
    for key in caps or ():
        name = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        values = caps[key] if isinstance(caps, dict) else None
        if values:
            for v in values:
                v = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
                out.add(f"{name}={v}".upper())
        else:
            out.add(name.upper())
    return sorted(out)


def default_protocol_factory(clock: Any, options: FolderOptions) -> Callable[[], Any]:
    def build() -> Any:
        from imapsvc.imap.protocol import FolderIMAPClient

        return FolderIMAPClient(
            clock,
            options.command_timeout_ms / 1000.0,
            inactivity_timeout=options.inactivity_timeout_ms / 1000.0,
            caps=options.wire_caps,
            budget=options.budget,
        )

    return build


def default_tls(options: FolderOptions) -> Callable[[str], Any]:
    def make(host: str) -> Any:
        from imapsvc.imap.tls import client_tls_options

        return client_tls_options(host, ca_file=options.tls_ca_file, insecure=options.tls_insecure)

    return make


def describe(err: Any, limit: int = 300) -> str:
    """A short, secret-free description of an error (exception class and
    message; our errors never carry secrets)."""
    message = str(err)
    if len(message) > limit:
        message = message[:limit] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__

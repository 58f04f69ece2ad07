"""``twistd imapsvc``: options and the service tree.

This is wiring only, and the one module that imports the global reactor
(inside :func:`makeService`, so importing it for ``--help`` or tests does not
install one).

Settings are validated while the options are parsed (:meth:`Options.postOptions`):
a bad value prints ``imapsvc: <one line>`` on stderr and exits with status 2,
before twistd daemonizes or writes a pid file, and without a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from imapsvc import logging as imapsvc_logging
from imapsvc.config import SETTINGS, ConfigError, Settings, load_settings

log = Logger(namespace="imapsvc.tap")

#: Exit status for a configuration error (as argparse uses for usage errors).
EXIT_CONFIG = 2


def _option_help(setting: Any) -> str:
    secret = " Secret: prefer the environment." if setting.sensitive else ""
    return f"[{setting.env}, default {setting.default_text()}] {setting.help}.{secret}"


class Options(usage.Options):
    """One ``--option`` per setting (``--provider-refresh-ms`` for
    ``IMAP_PROVIDER_REFRESH_MS``); an option given wins over the environment.

    No option has a default here: an unset option means "use the
    environment", and ``--help`` never shows a current (possibly secret) value.
    """

    synopsis = "[options]"
    longdesc = (
        "Watches IMAP folders and publishes INBOUND_EMAIL_RECEIVED events. Every option "
        "is also an environment variable, named in its help; options win."
    )
    optParameters = [[s.option, None, None, _option_help(s)] for s in SETTINGS]

    #: The validated settings, set by :meth:`postOptions`.
    settings: Optional[Settings] = None

    #: Where errors go and which environment is read; tests replace them.
    environ: Optional[Mapping[str, str]] = None
    stderr: Any = None

    def overrides(self) -> dict[str, Optional[str]]:
        """The options given on the command line, keyed by variable name."""
        return {s.env: self[s.option] for s in SETTINGS}

    def postOptions(self) -> None:
        self.settings = settings_or_exit(self.environ, self.overrides(), self.stderr)
        self._choose_logger(self.settings)

    def _choose_logger(self, settings: Settings) -> None:
        """Make twistd log through the redacting observer of
        ``IMAPSVC_LOG_FORMAT`` unless ``--logger`` was given.

        twistd builds its log observer from ``--logger`` after parsing the
        options and before :func:`makeService`, so setting it on the parent
        twistd options here is the point where the choice still counts.
        """
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("logger"):
            return
        logfile = parent.get("logfile")
        if not logfile:
            logfile = "-" if parent.get("nodaemon") else "twistd.log"
        imapsvc_logging.set_twistd_target(settings.log_format, logfile)
        # twistd resolves the dotted name itself after this method returns.
        parent["logger"] = "imapsvc.logging.twistd_observer"


def settings_or_exit(
    environ: Optional[Mapping[str, str]],
    overrides: Mapping[str, Optional[str]],
    stderr: Any = None,
) -> Settings:
    """:func:`load_settings`, or one line on stderr and ``SystemExit(2)``.

    twistd prints a traceback for most exceptions escaping plugin code, but
    lets ``SystemExit`` through untouched.
    """
    try:
        return load_settings(os.environ if environ is None else environ, overrides)
    except ConfigError as e:
        out = stderr if stderr is not None else sys.stderr
        out.write(f"imapsvc: {e}\n")
        out.flush()
        raise SystemExit(EXIT_CONFIG) from None


def makeService(options: Options) -> MultiService:
    """The ``twistd imapsvc`` service tree (see :func:`build_service`)."""
    settings = options.settings
    if settings is None:  # Options built by hand, postOptions not run
        settings = settings_or_exit(options.environ, options.overrides(), options.stderr)
    from twisted.internet import reactor

    return build_service(settings, reactor)


# -- the tree --------------------------------------------------------------
#
# Each make_* builds one component from the settings and returns it (an
# IService is attached to the tree; anything else is passed on as a
# dependency) or None when that part of the service is not available yet.
# The integrator finishes these as the store, sink, supervisor and web land.


def make_store(settings: Settings, reactor: Any) -> Any:
    """The :class:`~imapsvc.interfaces.IStore`: Postgres when
    ``DATABASE_URL`` is set, else SQLite at ``IMAPSVC_SQLITE_PATH``."""
    # TODO(integrator): imapsvc.store.postgres / imapsvc.store.sqlite.
    return None


def make_sink(settings: Settings, reactor: Any) -> Any:
    """The :class:`~imapsvc.interfaces.ISink`: a Redis stream when
    ``REDIS_URL`` is set, else JSON Lines in ``IMAPSVC_EVENTS_FILE``."""
    if settings.redis_url:
        from imapsvc.sink.redis_stream import RedisStreamSink

        return RedisStreamSink(
            reactor,
            settings.redis_url,
            settings.event_stream,
            timeout_s=settings.redis_timeout_ms / 1000.0,
            maxlen=settings.event_stream_maxlen,
        )
    from imapsvc.sink.jsonl import JsonLinesSink

    return JsonLinesSink(settings.events_file, stream=settings.event_stream, clock=reactor)


def make_secret_store(settings: Settings, store: Any) -> Any:
    """The :class:`~imapsvc.interfaces.ISecretStore` over ``store``, or
    None without a store or without ``IMAPSVC_SECRET_KEY``."""
    if store is None or not settings.secret_key:
        return None
    from imapsvc.secrets import SecretBox, SecretStore, parse_key

    box = SecretBox([parse_key(k) for k in settings.secret_key])
    return SecretStore(store, box, settings.secrets_dir or None)


def make_supervisor(settings: Settings, reactor: Any, store: Any, sink: Any, secrets: Any) -> Any:
    """The provider supervisor (discovery, leases, folders)."""
    # TODO(integrator): imapsvc.supervisor.
    return None


def make_web(settings: Settings, reactor: Any, **deps: Any) -> Any:
    """The HTTP service on ``PORT``. Until :mod:`imapsvc.web` is wired in,
    a placeholder answering ``/healthz`` and ``/health``."""
    # TODO(integrator): the Klein app of imapsvc.web, given deps.
    site: Any = Site(placeholder_resource())
    return strports.service(f"tcp:{settings.port}", site, reactor=reactor)


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok\n"


def placeholder_resource() -> Resource:
    """A root answering ``GET /healthz`` and ``GET /health`` with ``ok``."""
    root = Resource()
    health: Any = _Health()
    root.putChild(b"healthz", health)
    root.putChild(b"health", health)
    return root


class _StartStop(Service):
    """Runs a component's ``start()``/``stop()`` (if it has them) with the tree."""

    def __init__(self, name: str, component: Any) -> None:
        self.setName(name)
        self.component = component

    def startService(self) -> None:
        super().startService()
        start = getattr(self.component, "start", None)
        if start is not None:
            from twisted.internet import defer

            defer.maybeDeferred(start).addErrback(
                lambda f: log.failure("starting {name} failed", f, name=self.name)
            )

    def stopService(self) -> Any:
        super().stopService()
        stop = getattr(self.component, "stop", None) or getattr(self.component, "close", None)
        if stop is not None:
            from twisted.internet import defer

            return defer.maybeDeferred(stop)
        return None


def _attach(parent: MultiService, name: str, component: Any) -> None:
    if component is None:
        return
    service = component if IService.providedBy(component) else _StartStop(name, component)
    if service.name is None:
        service.setName(name)
    service.setServiceParent(parent)


def build_service(settings: Settings, reactor: Any) -> MultiService:
    """``MultiService("imapsvc")``: store, sink, supervisor, web, in that
    start order (and reverse stop order)."""
    top = MultiService()
    top.setName("imapsvc")
    store = make_store(settings, reactor)
    _attach(top, "store", store)
    sink = make_sink(settings, reactor)
    _attach(top, "sink", sink)
    secrets = make_secret_store(settings, store)
    supervisor = make_supervisor(settings, reactor, store, sink, secrets)
    _attach(top, "supervisor", supervisor)
    web = make_web(
        settings, reactor, store=store, sink=sink, secrets=secrets, supervisor=supervisor
    )
    _attach(top, "web", web)
    missing = [
        n for n, c in (("store", store), ("sink", sink), ("supervisor", supervisor)) if c is None
    ]
    if missing:
        log.warn("imapsvc started without {missing}: not wired yet", missing=", ".join(missing))
    return top

"""What the supervisor should do after a discovery pass (pure).

Given the providers the database says are wanted and the ones this replica
runs, :func:`plan_discovery` returns the actions, in an order that frees
capacity before it is used: stops first, then restarts, then starts. A
provider whose row cannot work (:func:`provider_problem`) is set apart with
its reason, so it never stops the others.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping, Optional

import attr

from imapsvc.core import folder_machine as FS
from imapsvc.model import ProviderConfig

try:  # what Twisted's TLS (optionsForClientTLS) encodes the host with
    import idna as _idna
except ImportError:  # pragma: no cover - idna comes with twisted[tls]
    _idna = None  # type: ignore[assignment]

Key = tuple[str, str]

#: ``auth_type`` values the service can log in with.
AUTH_TYPES = ("password", "oauth2")
#: A host name is cut to this many characters in an error message.
_HOST_SHOWN = 80


def _shown(host: str) -> str:
    return repr(host if len(host) <= _HOST_SHOWN else host[:_HOST_SHOWN] + "...")


def host_problem(host: str, tls: bool) -> Optional[str]:
    """Why ``host`` cannot be connected to, or ``None``.

    With TLS (implicit or STARTTLS) the name must pass IDNA encoding, as the
    certificate check and SNI need it: a label over 63 characters, an empty
    label, an ``xn--`` label that is no valid Punycode or a character such
    as ``_`` or a blank fails there. IP addresses are not encoded.
    """
    if not isinstance(host, str) or not host.strip():
        return "host is empty"
    if host != host.strip():
        return f"host {_shown(host)} has leading or trailing blanks"
    if len(host.rstrip(".")) > 253:
        return f"host {_shown(host)} is longer than 253 characters"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not tls:
        return None
    try:
        if _idna is not None:
            _idna.encode(host)
        else:  # pragma: no cover
            host.encode("idna")
    except (UnicodeError, ValueError) as e:
        return f"host {_shown(host)} is not a valid host name for TLS (IDNA: {e})"
    return None


def provider_problem(provider: ProviderConfig) -> Optional[str]:
    """Why this provider cannot be started, or ``None``: a row its store
    could not read, a host TLS cannot use, a port out of range, an unknown
    ``auth_type``. The reason is shown in ``error_message``: no secrets."""
    if provider.config_error:
        return provider.config_error
    problem = host_problem(provider.host, provider.secure or provider.allow_starttls)
    if problem:
        return problem
    if not isinstance(provider.port, int) or not 0 < provider.port < 65536:
        return f"port {provider.port!r} is not between 1 and 65535"
    if provider.auth_type not in AUTH_TYPES:
        return f"auth_type {provider.auth_type!r} is not one of {', '.join(AUTH_TYPES)}"
    return None


@attr.s(frozen=True, auto_attribs=True)
class DiscoveryPlan:
    #: Running providers no longer wanted (inactive, paused, deleted, other tenant).
    stop: tuple[Key, ...] = ()
    #: Running providers whose connection signature changed.
    restart: tuple[ProviderConfig, ...] = ()
    #: Running providers whose other settings changed (credentials, caps, ...):
    #: handed the new row without dropping connections.
    update: tuple[ProviderConfig, ...] = ()
    #: Providers to try to lease and start, within the per-tenant limit.
    start: tuple[ProviderConfig, ...] = ()
    #: Providers that must wait, with the reason shown in /status.
    waiting: tuple[tuple[Key, str], ...] = ()
    #: Wanted providers that cannot run (:func:`provider_problem`), with the
    #: reason for ``error_message``; stopped when running, never started.
    invalid: tuple[tuple[Key, str], ...] = ()


def plan_discovery(
    wanted: Iterable[ProviderConfig],
    running: Mapping[Key, ProviderConfig],
    connections_per_tenant: Mapping[str, int],
    max_connections_per_tenant: Optional[int],
    tenants: frozenset[str] = frozenset(),
) -> DiscoveryPlan:
    """Decide starts, stops and restarts.

    :param running: the config each running provider was started (or last
        updated) with.
    :param connections_per_tenant: IMAP connections (folders) this replica
        holds per tenant now.
    :param max_connections_per_tenant: ``None`` when the store counts the
        cap across replicas as leases are taken (the supervisor does that);
        a number applies it to this replica's connections only.
    :param tenants: when not empty, only these tenants are served.
    """
    wanted_by_key: dict[Key, ProviderConfig] = {}
    invalid: dict[Key, str] = {}
    for provider in wanted:
        if tenants and provider.tenant not in tenants:
            continue
        problem = provider_problem(provider)
        if problem is not None:
            invalid[provider.key] = problem
            continue
        wanted_by_key[provider.key] = provider

    stop = tuple(sorted(key for key in running if key not in wanted_by_key))
    restart = []
    update = []
    used = dict(connections_per_tenant)
    for key in stop:
        tenant = key[0]
        used[tenant] = used.get(tenant, 0) - len(running[key].folders)
    for key, provider in sorted(wanted_by_key.items()):
        current = running.get(key)
        if current is None:
            continue
        if current.connection_signature() != provider.connection_signature():
            restart.append(provider)
            used[key[0]] = used.get(key[0], 0) - len(current.folders) + len(provider.folders)
        elif current != provider:
            update.append(provider)

    start = []
    waiting = []
    for key, provider in sorted(wanted_by_key.items()):
        if key in running:
            continue
        need = len(provider.folders)
        have = used.get(provider.tenant, 0)
        if max_connections_per_tenant is not None and have + need > max_connections_per_tenant:
            waiting.append(
                (
                    key,
                    f"tenant connection limit: {have} of {max_connections_per_tenant} in use, "
                    f"this provider needs {need}",
                )
            )
            continue
        used[provider.tenant] = have + need
        start.append(provider)
    return DiscoveryPlan(
        tuple(stop),
        tuple(restart),
        tuple(update),
        tuple(start),
        tuple(waiting),
        tuple(sorted(invalid.items())),
    )


#: States whose error makes the provider's status an error ("needs_reauth":
#: an older spelling).
_ERROR_STATES = (FS.NEEDS_REAUTH.lower(), "needs_reauth", FS.BACKOFF.lower(), FS.WAITING.lower())


def aggregate_status(folder_states: Mapping[str, tuple[str, str | None]]) -> tuple[str, str | None]:
    """Provider status from its folders' ``(state, last_error)``.

    ``connected`` when every folder is past login (selected, syncing or
    idling); ``error`` with the first folder's error (by folder name) when a
    folder needs re-authentication or is backing off after an error;
    ``disconnected`` otherwise (still connecting).
    """
    if not folder_states:
        return ("disconnected", None)
    healthy = {state.lower() for state in FS.HEALTHY_STATES}
    for folder in sorted(folder_states):
        state, error = folder_states[folder]
        # waiting: a folder the tenant connection cap left without a connection.
        if state.lower() in _ERROR_STATES and error:
            return ("error", f"{folder}: {error}")
    if all(state.lower() in healthy for state, _ in folder_states.values()):
        return ("connected", None)
    return ("disconnected", None)

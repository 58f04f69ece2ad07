"""What the supervisor should do after a discovery pass (pure).

Given the providers the database says are wanted and the ones this replica
runs, :func:`plan_discovery` returns the actions, in an order that frees
capacity before it is used: stops first, then restarts, then starts.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import attr

from imapsvc.model import ProviderConfig

Key = tuple[str, str]


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
    for provider in wanted:
        if tenants and provider.tenant not in tenants:
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
    return DiscoveryPlan(tuple(stop), tuple(restart), tuple(update), tuple(start), tuple(waiting))


def aggregate_status(folder_states: Mapping[str, tuple[str, str | None]]) -> tuple[str, str | None]:
    """Provider status from its folders' ``(state, last_error)``.

    ``connected`` when every folder is past login (selected, syncing or
    idling); ``error`` with the first folder's error (by folder name) when a
    folder needs re-authentication or is backing off after an error;
    ``disconnected`` otherwise (still connecting).
    """
    if not folder_states:
        return ("disconnected", None)
    healthy = {"selected", "syncing", "idling"}
    for folder in sorted(folder_states):
        state, error = folder_states[folder]
        # waiting: a folder the tenant connection cap left without a connection.
        if state.lower() in ("needsreauth", "needs_reauth", "backoff", "waiting") and error:
            return ("error", f"{folder}: {error}")
    if all(state.lower() in healthy for state, _ in folder_states.values()):
        return ("connected", None)
    return ("disconnected", None)

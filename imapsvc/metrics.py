"""Prometheus metrics, collected at scrape time from the components' own
counters (folder snapshots, relay stats, pipeline stats), so the components
stay free of a metrics dependency and a test can read the same numbers.

A private :class:`~prometheus_client.CollectorRegistry` per process (not the
global one), so tests can build as many as they like.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class ServiceCollector(Collector):
    """Reads ``status()`` of the supervisor, ``stats`` of the relay and of
    the pipeline. Any of them may be ``None`` (not wired)."""

    def __init__(
        self,
        status: Callable[[], dict],
        relay_stats: Optional[Callable[[], dict]] = None,
        pipeline_stats: Optional[Callable[[], dict]] = None,
        detailed: bool = True,
        lag_stats: Any = None,
        gc_policy: Any = None,
    ):
        self._status = status
        self._relay = relay_stats
        self._pipeline = pipeline_stats
        # Without detail, per-folder series are summed: tenant and provider
        # ids and folder names are not for unauthenticated scrapers.
        self._detailed = detailed
        self._lag = lag_stats
        self._gc = gc_policy

    def collect(self) -> Iterable[Any]:
        status = self._status() or {}
        providers = status.get("providers", [])
        leases = GaugeMetricFamily(
            "imapsvc_leases_held", "Providers this replica holds a lease for"
        )
        leases.add_metric([], len(providers))
        yield leases
        waiting = GaugeMetricFamily(
            "imapsvc_providers_waiting", "Providers waiting for capacity on this replica"
        )
        waiting.add_metric([], len(status.get("waiting", [])))
        yield waiting

        labels = ["tenant", "provider", "folder"] if self._detailed else []
        syncs = CounterMetricFamily("imapsvc_folder_syncs", "Folder syncs run", labels=labels)
        handed = CounterMetricFamily(
            "imapsvc_messages_fetched", "Messages fetched and handed to the pipeline",
            labels=labels,
        )
        bytes_ = CounterMetricFamily(
            "imapsvc_bytes_fetched", "Message bytes read from IMAP", labels=labels
        )
        wakeups = CounterMetricFamily(
            "imapsvc_idle_wakeups", "IDLE wake-ups (EXISTS)", labels=labels
        )
        reconnects = CounterMetricFamily(
            "imapsvc_reconnects", "Reconnects by reason", labels=labels + ["reason"]
        )
        lag = GaugeMetricFamily(
            "imapsvc_folder_cursor_lag", "UIDNEXT - 1 - last_uid of a folder", labels=labels
        )
        state = GaugeMetricFamily(
            "imapsvc_folder_state", "1 for the state a folder is in", labels=labels + ["state"]
        )
        quarantined = GaugeMetricFamily(
            "imapsvc_folder_quarantined",
            "1 while a folder's server is quarantined for breaking protocol limits",
            labels=labels,
        )
        poison = CounterMetricFamily(
            "imapsvc_poison_skipped", "Messages skipped as poison (failed fetches)", labels=labels
        )
        if self._detailed:
            for p in providers:
                for name, f in (p.get("folders") or {}).items():
                    key = [p.get("tenant", ""), p.get("providerId", ""), name]
                    syncs.add_metric(key, _num(f.get("syncs")))
                    handed.add_metric(key, _num(f.get("handedOff")))
                    bytes_.add_metric(key, _num(f.get("bytesFetched")))
                    wakeups.add_metric(key, _num(f.get("idleWakeups")))
                    for reason, n in (f.get("reconnects") or {}).items():
                        reconnects.add_metric(key + [str(reason)], _num(n))
                    if f.get("lag") is not None:
                        lag.add_metric(key, _num(f.get("lag")))
                    state.add_metric(key + [str(f.get("state", ""))], 1)
                    quarantined.add_metric(key, 1 if f.get("quarantinedUntil") else 0)
                    poison.add_metric(key, _num(f.get("poisonSkipped")))
        else:
            self._add_totals(providers, syncs, handed, bytes_, wakeups, reconnects, lag, state)
            # Without labels: folders quarantined now, messages skipped as poison.
            folders = [f for p in providers for f in (p.get("folders") or {}).values()]
            quarantined.add_metric([], sum(1 for f in folders if f.get("quarantinedUntil")))
            poison.add_metric([], sum(_num(f.get("poisonSkipped")) for f in folders))
        yield from (syncs, handed, bytes_, wakeups, reconnects, lag, state, quarantined, poison)
        yield from self._write_backs(providers, labels)
        quarantines = CounterMetricFamily(
            "imapsvc_quarantines", "Times a provider's server was quarantined"
        )
        quarantines.add_metric([], _num(status.get("quarantines")))
        yield quarantines
        budget = status.get("imapBudget") or {}
        for name, doc, kind in (
            ("used", "IMAP bytes in flight (process-wide budget)", GaugeMetricFamily),
            ("capacity", "The process-wide budget for IMAP bytes in flight", GaugeMetricFamily),
            ("paused", "IMAP connections paused by the budget", GaugeMetricFamily),
            ("pauses", "Times an IMAP connection was paused by the budget", CounterMetricFamily),
        ):
            family = kind(f"imapsvc_imap_budget_{name}", doc)
            family.add_metric([], _num(budget.get(name)))
            yield family

        pipe = self._pipeline() if self._pipeline else {}
        outcomes = CounterMetricFamily(
            "imapsvc_messages", "Messages recorded, by outcome", labels=["outcome"]
        )
        # Label values are the ledger outcomes; the pipeline counts them
        # under its own stat names.
        for outcome, stat in (
            ("published", "published"),
            ("skipped", "skipped"),
            ("duplicate", "duplicates"),
        ):
            outcomes.add_metric([outcome], _num(pipe.get(stat)))
        yield outcomes
        # IMAP_ATTACHMENT_MODE=store (imapsvc.objectstore.upload stats).
        for name, stat, words in (
            ("imapsvc_objects_stored", "stored_objects", "Objects written to the object store"),
            ("imapsvc_object_bytes_stored", "stored_bytes", "Bytes written to the object store"),
            ("imapsvc_object_store_failures", "stored_failures",
             "Batches not recorded because an object could not be stored"),
        ):  # fmt: skip
            family = CounterMetricFamily(name, words)
            family.add_metric([], _num(pipe.get(stat)))
            yield family
        auth = CounterMetricFamily("imapsvc_auth_failures", "Authentication failures")
        auth.add_metric([], _num(status.get("authFailures")))
        yield auth

        relay = self._relay() if self._relay else {}
        published = CounterMetricFamily(
            "imapsvc_events_published", "Stream entries acknowledged by the sink"
        )
        published.add_metric([], _num(relay.get("published")))
        yield published
        dedup = CounterMetricFamily(
            "imapsvc_events_deduplicated",
            "Re-published entries the stream already held within its dedupe window",
        )
        dedup.add_metric([], _num(relay.get("deduplicated")))
        yield dedup
        errors = CounterMetricFamily("imapsvc_relay_errors", "Failed relay runs")
        errors.add_metric([], _num(relay.get("errors")))
        yield errors
        backlog = GaugeMetricFamily("imapsvc_outbox_backlog", "Unpublished outbox rows")
        backlog.add_metric([], _num(relay.get("backlog")))
        yield backlog
        age = GaugeMetricFamily(
            "imapsvc_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row"
        )
        age.add_metric([], _num(relay.get("oldest_age_s")))
        yield age
        yield from self._capacity(status.get("capacity") or {})
        if self._lag is not None:
            yield from self._reactor_lag(self._lag)
        if self._gc is not None:
            yield from self._collector(self._gc)

    @staticmethod
    def _collector(policy: Any) -> Iterable[Any]:
        """The cyclic collector's frozen set (imapsvc/gc_policy.py): it
        should follow the folder count; growing beyond it between full
        passes means lost sessions leave cycles behind."""
        frozen = GaugeMetricFamily(
            "imapsvc_gc_frozen_objects", "Objects kept out of the cyclic collector's passes"
        )
        frozen.add_metric([], policy.frozen())
        yield frozen
        passes = CounterMetricFamily(
            "imapsvc_gc_full_passes", "Scheduled full passes of the cyclic collector"
        )
        passes.add_metric([], policy.full_passes)
        yield passes

    @staticmethod
    def _capacity(cap: dict) -> Iterable[Any]:
        """The open-file limit and the folders it leaves room for (absent
        when unlimited)."""
        for name, key, text in (
            ("imapsvc_open_files_limit", "openFilesLimit", "Soft RLIMIT_NOFILE of the process"),
            ("imapsvc_folder_capacity", "folderCapacity",
             "Folders this replica may hold open (open-file limit minus the reserve)"),
        ):
            if cap.get(key) is not None:
                g = GaugeMetricFamily(name, text)
                g.add_metric([], _num(cap.get(key)))
                yield g
        if "foldersOpen" in cap:
            g = GaugeMetricFamily("imapsvc_folders_open", "Folders of the providers running here")
            g.add_metric([], _num(cap.get("foldersOpen")))
            yield g

    @staticmethod
    def _reactor_lag(stats: Any) -> Iterable[Any]:
        hist = HistogramMetricFamily(
            "imapsvc_reactor_lag_seconds", "How late a 100 ms reactor tick ran"
        )
        hist.add_metric([], stats.cumulative_buckets(), sum_value=stats.total)
        yield hist
        for name, value, text in (
            ("imapsvc_reactor_lag_max_seconds", stats.max, "Largest reactor lag since start"),
            ("imapsvc_reactor_lag_recent_max_seconds", stats.window_max(),
             "Largest reactor lag in the last minute"),
            ("imapsvc_reactor_lag_p99_seconds", stats.window_quantile(0.99),
             "99th percentile reactor lag in the last minute"),
        ):
            g = GaugeMetricFamily(name, text)
            g.add_metric([], value)
            yield g


    def _write_backs(self, providers: list, labels: list) -> Iterable[Any]:
        """Write-back after the commit (issue 13 item 3), from each folder
        snapshot's ``writeBack``."""
        applied = CounterMetricFamily(
            "imapsvc_write_backs_applied",
            "Messages flagged, moved or deleted after their event was committed", labels=labels,
        )
        failed = CounterMetricFamily(
            "imapsvc_write_backs_failed",
            "Write-backs refused or impossible (the events stand)", labels=labels,
        )
        totals = [0.0, 0.0]
        for p in providers:
            for name, f in (p.get("folders") or {}).items():
                wb = f.get("writeBack") or {}
                if self._detailed:
                    key = [p.get("tenant", ""), p.get("providerId", ""), name]
                    applied.add_metric(key, _num(wb.get("applied")))
                    failed.add_metric(key, _num(wb.get("failed")))
                totals[0] += _num(wb.get("applied"))
                totals[1] += _num(wb.get("failed"))
        if not self._detailed:
            applied.add_metric([], totals[0])
            failed.add_metric([], totals[1])
        yield from (applied, failed)

    @staticmethod
    def _add_totals(providers, syncs, handed, bytes_, wakeups, reconnects, lag, state) -> None:
        """Per-folder series summed over folders (state: folders per state)."""
        totals = {"syncs": 0.0, "handedOff": 0.0, "bytesFetched": 0.0, "idleWakeups": 0.0,
                  "lag": 0.0}
        by_reason: dict[str, float] = {}
        by_state: dict[str, float] = {}
        for p in providers:
            for f in (p.get("folders") or {}).values():
                for k in totals:
                    totals[k] += _num(f.get(k))
                for reason, n in (f.get("reconnects") or {}).items():
                    by_reason[str(reason)] = by_reason.get(str(reason), 0.0) + _num(n)
                name = str(f.get("state", ""))
                by_state[name] = by_state.get(name, 0.0) + 1
        syncs.add_metric([], totals["syncs"])
        handed.add_metric([], totals["handedOff"])
        bytes_.add_metric([], totals["bytesFetched"])
        wakeups.add_metric([], totals["idleWakeups"])
        lag.add_metric([], totals["lag"])
        for reason, n in sorted(by_reason.items()):
            reconnects.add_metric([reason], n)
        for name, n in sorted(by_state.items()):
            state.add_metric([name], n)


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

"""Prometheus metrics for ``GET /metrics``, cheap enough for the ingestion path.

One :class:`Metrics` object per server process is handed to the parts that
count. The ingestion path only increments pre-bound children (found in a dict
for dropped events): labels are formatted only the first time a site drops an
event for a reason, never per request.

With ``--workers N`` a scrape reaches one worker but must show them all, so
each worker keeps its values in memory-mapped files (prometheus_client's
multiprocess mode) in a folder per supervisor run,
``data_dir/tmp/metrics/<supervisor pid>/``, and the worker that answers sums
every worker's files. A worker that dies leaves its counters there (so the sums
never go back); its buffered-events gauge is dropped when the next one starts.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import choose_encoder

from mallard.ingest.dropped import REASONS
from mallard.storage.layout import DataLayout, remove_dead_process_folders, running

MAX_SITE_LABELS = 1000  # distinct site label values per process; further sites share one
OTHER_SITES = "(other)"
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every figure ``/metrics`` shows; ``shared`` is the multiprocess folder of workers."""

    def __init__(self, shared: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        own = None if shared else self.registry  # shared values are read back from the files
        if shared:
            multiprocess.MultiProcessCollector(self.registry, str(shared))
        self._shared = shared
        self.accepted = Counter(
            "mallard_events_accepted", "Events accepted and stored (answered 202).", registry=own
        )
        self._dropped = Counter(
            "mallard_events_dropped",
            "Events not stored, by reason; site is empty when the request named no valid site.",
            ("reason", "site"),
            registry=own,
        )
        self._dropped_children = {
            (reason, ""): self._dropped.labels(reason=reason, site="") for reason in REASONS
        }
        self._sites: set[str] = {""}
        self.buffered = Gauge(
            "mallard_buffered_events",
            "Accepted events not yet written to Parquet.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.flush_seconds = Histogram(
            "mallard_flush_duration_seconds",
            "Time to write one batch to Parquet.",
            registry=own,
            buckets=SECONDS,
        )
        self.flushed_events = Counter(
            "mallard_flushed_events", "Events written to Parquet.", registry=own
        )
        self.parquet_files = Counter(
            "mallard_parquet_files_written", "Parquet event files written.", registry=own
        )
        self.parquet_bytes = Counter(
            "mallard_parquet_bytes_written", "Bytes of Parquet event files written.", registry=own
        )
        self.wal_fsync_seconds = Histogram(
            "mallard_wal_fsync_duration_seconds",
            "Time to fsync one write-ahead log append (one group commit).",
            registry=own,
            buckets=SECONDS,
        )
        self._query_seconds = Histogram(
            "mallard_query_duration_seconds",
            "Time until a stats endpoint starts its answer, by route.",
            ("endpoint",),
            registry=own,
            buckets=SECONDS,
        )
        compactions = Counter(
            "mallard_compaction_runs", "Compaction runs, by outcome.", ("outcome",), registry=own
        )
        self.compactions_done = compactions.labels(outcome="ok")
        self.compactions_failed = compactions.labels(outcome="failed")

    def dropped(self, reason: str, site: str = "", count: int = 1) -> None:
        """Count dropped events; ``site`` is empty when they named no valid site id."""
        child = self._dropped_children.get((reason, site))
        if child is None:
            child = self._bind_dropped(reason, site)
        child.inc(count)

    def _bind_dropped(self, reason: str, site: str) -> Counter:
        """The child of a new (reason, site); past MAX_SITE_LABELS sites share one label."""
        if site not in self._sites:
            if len(self._sites) >= MAX_SITE_LABELS:
                return self._dropped.labels(reason=reason, site=OTHER_SITES)
            self._sites.add(site)
        child = self._dropped.labels(reason=reason, site=site)
        self._dropped_children[(reason, site)] = child
        return child

    def observe_query(self, endpoint: str, seconds: float) -> None:
        self._query_seconds.labels(endpoint=endpoint).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every metric and its content type, in the format an ``Accept`` header asks for.

        Prometheus text unless OpenMetrics is asked for. Blocking with workers
        (it reads their files): run it in a thread.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def close(self) -> None:
        """At a worker's clean exit: its buffered-events gauge no longer counts."""
        if self._shared:
            multiprocess.mark_process_dead(os.getpid(), str(self._shared))


def worker_metrics(layout: DataLayout) -> Metrics:
    """Metrics of one of ``--workers`` processes, summed with its siblings' at each scrape.

    prometheus_client chooses where values live when it is imported, from an
    environment variable; a worker sets it and switches before any metric exists.
    """
    folder = _run_folder(layout.tmp / "metrics", os.getppid())
    os.environ[MULTIPROCESS_ENV] = str(folder)
    values.ValueClass = values.get_value_class()
    return Metrics(folder)


def _run_folder(base: Path, supervisor: int) -> Path:
    """This run's folder; folders of finished runs and gauges of dead workers go."""
    remove_dead_process_folders(base)  # our supervisor runs: its folder stays
    folder = base / str(supervisor)
    folder.mkdir(parents=True, exist_ok=True)
    for gauge in folder.glob("gauge_live*_*.db"):
        pid = gauge.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not running(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(folder))
    return folder


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )

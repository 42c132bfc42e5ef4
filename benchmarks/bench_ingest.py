"""Ingestion benchmark: Mallard's ``POST /api/event`` against a bare quart-trio baseline.

    python benchmarks/bench_ingest.py [--duration 10] [--concurrency 1,16,64] [--quick]

For every load point (a closed-loop concurrency, or an open-loop rate with ``--rates``)
and every target, a *fresh* server is started in a subprocess, loaded with
:mod:`loadgen`, and stopped with SIGTERM. Targets at the same load point run back to
back, so a disturbance on the machine hits them alike. Per run it records throughput,
latency percentiles, errors and non-202 answers, the server's peak RSS (its whole
process tree), how long the SIGTERM shutdown took and the exit code; for targets that
store events it then counts the Parquet rows with DuckDB and checks that they equal the
number of 202 answers (``OK`` / ``MISMATCH``; the load generator sends no bot traffic,
so every 202 must be a row).

Results go to stdout as a table, to ``benchmarks/results/ingest-<timestamp>.json`` and,
when matplotlib is importable, to a bar chart next to it. Progress goes to stderr.

Targets are plain data (:data:`TARGETS`): a name, a command, environment variables.
To compare a variant, add one, e.g.::

    Target(
        "mallard-big-batches",
        MALLARD_COMMAND,
        env={"MALLARD_FLUSH_INTERVAL": "1", "MALLARD_FLUSH_COUNT": "10000"},
        stores_events=True,
    )

then ``--targets bare,mallard,mallard-big-batches``. A multi-process target (say a worker
count flag) needs nothing else: RSS is summed over the server's process tree.
Inherited ``MALLARD_*`` variables are removed from the servers' environment, so a
target's ``env`` is all the configuration it gets besides its command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from loadgen import LoadResult, run_load  # noqa: E402

READY = re.compile(r"(?:listening on|Running on) (http://\S+)")
PROBLEM = re.compile(r"\b(?:ERROR|WARNING|CRITICAL)\b|Traceback")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A server to benchmark.

    ``command`` may use ``{python}`` (this interpreter), ``{data_dir}`` (a fresh
    temporary directory per run) and ``{bench_dir}`` (this folder); it must bind a free
    port (port 0) and log a line with ``listening on http://HOST:PORT`` (or hypercorn's
    ``Running on http://HOST:PORT``). It runs in the server root (``--server-root``, by
    default this repository), which is also put first on ``PYTHONPATH``, so ``-m mallard``
    imports the Mallard found there.
    """

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    stores_events: bool = False  # count Parquet rows under {data_dir}/events after SIGTERM
    baseline: bool = False  # the others' req/s are shown as a ratio to this one's
    default: bool = True  # run unless --targets names others
    description: str = ""


MALLARD_COMMAND = ("{python}", "-m", "mallard", "serve", "--port", "0", "--data-dir", "{data_dir}")

TARGETS: dict[str, Target] = {
    target.name: target
    for target in [
        Target(
            "bare",
            ("{python}", "{bench_dir}/bare_app.py", "--port", "0"),
            baseline=True,
            description="quart-trio on hypercorn.trio.serve: parse the JSON body, answer 202",
        ),
        Target(
            "bare-2w",
            ("{python}", "{bench_dir}/bare_app.py", "--port", "0", "--workers", "2"),
            default=False,
            description="the bare quart-trio app in two processes on one socket",
        ),
        Target(
            "bare-asgi",
            ("{python}", "{bench_dir}/bare_app.py", "--port", "0", "--app", "asgi"),
            default=False,
            description="the same as a raw ASGI callable: hypercorn + json.loads, no framework",
        ),
        Target(
            "mallard",
            MALLARD_COMMAND,
            env={"MALLARD_FLUSH_INTERVAL": "1"},
            stores_events=True,
            description="python -m mallard serve with its defaults (durability=wal since "
            "c58a32e), flush every second",
        ),
        Target(
            "mallard-memory",
            MALLARD_COMMAND,
            env={"MALLARD_FLUSH_INTERVAL": "1", "MALLARD_DURABILITY": "memory"},
            stores_events=True,
            description="durability=memory: 202 once queued, no write-ahead log",
        ),
        Target(
            "mallard-wal",
            MALLARD_COMMAND,
            env={"MALLARD_FLUSH_INTERVAL": "1", "MALLARD_DURABILITY": "wal"},
            stores_events=True,
            default=False,  # the same as "mallard" while wal is the default
            description="durability=wal, explicitly: 202 after the group fsync",
        ),
        Target(
            "mallard-2w",
            (*MALLARD_COMMAND, "--workers", "2"),
            env={"MALLARD_FLUSH_INTERVAL": "1"},
            stores_events=True,
            default=False,
            description="mallard serve --workers 2: two processes on one socket",
        ),
        Target(
            "mallard-memory-2w",
            (*MALLARD_COMMAND, "--workers", "2"),
            env={"MALLARD_FLUSH_INTERVAL": "1", "MALLARD_DURABILITY": "memory"},
            stores_events=True,
            default=False,
            description="durability=memory, --workers 2",
        ),
    ]
}


# ---------------------------------------------------------------------------------------
# Helpers: progress, memory, the server process
# ---------------------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are still alive."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree until stopped.

    ``peak`` is the larger of the highest sampled sum of VmRSS and the sum of each
    process's own high-water mark (VmHWM, last seen); for a single process that is
    exactly its peak RSS, sampling or not.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_sampled = 0
        self.hwm: dict[int, int] = {}
        self.first: int | None = None
        self._stop_event = threading.Event()

    def sample(self) -> None:
        total = 0
        for pid in process_tree(self.pid):
            memory = memory_kib(pid)
            if memory is not None:
                total += memory[0]
                self.hwm[pid] = max(self.hwm.get(pid, 0), memory[1])
        if total:
            self.peak_sampled = max(self.peak_sampled, total)
            if self.first is None:
                self.first = total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    @property
    def peak_mib(self) -> float:
        return max(self.peak_sampled, sum(self.hwm.values())) / 1024

    @property
    def start_mib(self) -> float:
        return (self.first or 0) / 1024


class Server:
    """A target's server process: started, waited for, stopped with SIGTERM."""

    def __init__(self, target: Target, workdir: Path, root: Path = REPO) -> None:
        self.target = target
        self.root = root
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.shutdown_seconds: float | None = None
        self.exit_code: int | None = None

    def command(self) -> list[str]:
        values = {
            "python": sys.executable,
            "data_dir": str(self.data_dir),
            "bench_dir": str(BENCH_DIR),
        }
        return [part.format(**values) for part in self.target.command]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MALLARD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        env.update(self.target.env)
        return env

    def start(self) -> str:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.root,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = READY.search(self.log_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1).rstrip("/")
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"{self.target.name} did not start (exit code {self.process.returncode}):\n"
            + self.log_tail()
        )

    def stop(self) -> None:
        """SIGTERM, then wait for the exit; records the time it took and the code."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(STOP_TIMEOUT)
            self.shutdown_seconds = time.monotonic() - started
        except subprocess.TimeoutExpired:
            self.kill()
            self.exit_code = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self, limit: int = 20) -> tuple[int, list[str]]:
        """Log lines that are warnings, errors or tracebacks: how many, and the first ones."""
        found = [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if PROBLEM.search(line)
        ]
        return len(found), found[:limit]


def count_parquet_rows(data_dir: Path) -> int:
    import duckdb

    pattern = str(data_dir / "events" / "**" / "*.parquet")
    if not list((data_dir / "events").glob("**/*.parquet")):
        return 0
    with duckdb.connect() as connection:
        row = connection.execute(
            "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)", [pattern]
        ).fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadPoint:
    connections: int
    rate: float | None = None  # None: closed loop

    @property
    def label(self) -> str:
        return f"{self.rate:g}/s" if self.rate else f"c={self.connections}"


def run_one(target: Target, point: LoadPoint, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh server of ``target`` under one load point; returns the run's record."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mallard-bench-{target.name}-", dir=args.data_root))
    server = Server(target, workdir, args.server_root)
    record: dict[str, Any] = {"target": target.name, "load": point.label}
    record.update(connections=point.connections, rate=point.rate, workdir=str(workdir))
    sampler: RssSampler | None = None
    finished = False
    try:
        url = server.start()
        assert server.process is not None
        sampler = RssSampler(server.process.pid)
        sampler.start()
        progress(f"  {target.name} {point.label}: listening on {url}; loading for "
                 f"{args.warmup:g}s warm-up + {args.duration:g}s")  # fmt: skip
        result: LoadResult = run_load(
            url,
            connections=point.connections,
            duration=args.duration,
            rate=point.rate,
            processes=args.processes,
            warmup=args.warmup,
            timeout=args.timeout,
        )
        sampler.sample()
        server.stop()
        finished = True
    finally:
        if sampler is not None:
            sampler.stop()
        server.kill()
        if not finished and not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    problem_count, problem_lines = server.problems()
    record.update(
        requests_per_s=result.throughput,
        latency_ms=result.latency_ms,
        sent=result.sent,
        completed=result.completed,
        status_counts={str(k): v for k, v in result.status_counts.items()},
        non_202=result.non_202,
        errors=result.errors,
        error_kinds=result.error_kinds,
        unsent=result.unsent,
        accepted_total=result.accepted_total,
        client_cpu=result.client_cpu,
        client_saturated=result.client_saturated,
        loadgen_processes=result.processes,
        rss_start_mib=round(sampler.start_mib, 1) if sampler else None,
        rss_peak_mib=round(sampler.peak_mib, 1) if sampler else None,
        shutdown_s=server.shutdown_seconds,
        exit_code=server.exit_code,
        log_problem_count=problem_count,
        log_problems=problem_lines,
    )
    summary = (
        f"  {target.name} {point.label}: {result.throughput:,.0f} req/s, "
        f"p99 {result.latency_ms['p99']:.1f} ms, 202s {result.ok}, non-202 {result.non_202}, "
        f"errors {result.errors}{_unsent(result)}, RSS peak {record['rss_peak_mib']} MiB, "
        f"shutdown {_seconds(server.shutdown_seconds)}, exit {server.exit_code}"
    )
    if target.stores_events:
        rows = count_parquet_rows(server.data_dir)
        record["parquet_rows"] = rows
        record["parquet_check"] = "OK" if rows == result.accepted_total else "MISMATCH"
        summary += (
            f"; Parquet rows {rows} vs 202s {result.accepted_total}: {record['parquet_check']}"
        )
    progress(summary)
    if result.client_saturated:
        progress(f"  WARNING: a load generator process was saturated ({result.client_cpu})")
    if problem_count:
        progress(f"  server log has {problem_count} warning/error lines, e.g. {problem_lines[0]}")
    if not args.keep_data:
        shutil.rmtree(workdir, ignore_errors=True)
        record["workdir"] = None
    return record


def _unsent(result: LoadResult) -> str:
    return f", unsent {result.unsent} (server fell behind the rate)" if result.unsent else ""


def _seconds(value: float | None) -> str:
    return "TIMEOUT" if value is None else f"{value:.2f}s"


def summarize(runs: list[dict[str, Any]], targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One row per (target, load point): the median run by req/s when repeated.

    Errors and non-202 answers are summed over the repeats, RSS is the highest, and the
    Parquet check is OK only when every repeat was.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["load"]), []).append(run)
    rows = []
    for (name, load), group in groups.items():
        median = sorted(group, key=lambda run: run["requests_per_s"])[(len(group) - 1) // 2]
        checks = [run["parquet_check"] for run in group if "parquet_check" in run]
        row = {
            "target": name,
            "load": load,
            "repeats": len(group),
            "requests_per_s": median["requests_per_s"],
            "requests_per_s_all": [run["requests_per_s"] for run in group],
            "latency_ms": median["latency_ms"],
            "errors": sum(run["errors"] for run in group),
            "non_202": sum(run["non_202"] for run in group),
            "rss_peak_mib": max(run["rss_peak_mib"] or 0.0 for run in group),
        }
        if checks:
            row["parquet_check"] = "OK" if all(c == "OK" for c in checks) else "MISMATCH"
        rows.append(row)
    baselines = {target.name for target in targets if target.baseline}
    base = {row["load"]: row["requests_per_s"] for row in rows if row["target"] in baselines}
    for row in rows:
        reference = base.get(row["load"])
        row["vs_baseline"] = row["requests_per_s"] / reference if reference else None
    return rows


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

COLUMNS = [
    ("target", "<", 12),
    ("load", ">", 8),
    ("req/s", ">", 8),
    ("p50 ms", ">", 8),
    ("p99 ms", ">", 8),
    ("p99.9 ms", ">", 9),
    ("errors", ">", 7),
    ("non-202", ">", 8),
    ("RSS MiB", ">", 8),
    ("vs bare", ">", 8),
    ("parquet", "<", 9),
]


RANGE_COLUMN = ("req/s range", ">", 13)


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    width = max([len(row["target"]) for row in rows] + [COLUMNS[0][2]])
    columns = [("target", "<", width), *COLUMNS[1:]]
    repeated = any(row["repeats"] > 1 for row in rows)
    return [*columns[:3], RANGE_COLUMN, *columns[3:]] if repeated else columns


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    repeated = any(row["repeats"] > 1 for row in summary)
    rows = []
    for run in summary:
        lat = run["latency_ms"]
        ratio = run.get("vs_baseline")
        spread = run["requests_per_s_all"]
        rows.append(
            [
                run["target"],
                run["load"],
                f"{run['requests_per_s']:,.0f}",
                *([f"{min(spread):,.0f}-{max(spread):,.0f}"] if repeated else []),
                f"{lat['p50']:.2f}",
                f"{lat['p99']:.2f}",
                f"{lat['p99.9']:.2f}",
                str(run["errors"]),
                str(run["non_202"]),
                f"{run['rss_peak_mib']:.0f}",
                f"{ratio:.2f}x" if ratio is not None else "-",
                run.get("parquet_check", "-"),
            ]
        )
    return rows


def format_table(summary: list[dict[str, Any]]) -> str:
    columns = _columns(summary)
    lines = [" ".join(f"{name:{align}{width}}" for name, align, width in columns)]
    lines.append(" ".join("-" * width for _, _, width in columns))
    for row in table_rows(summary):
        cells = zip(row, columns, strict=True)
        lines.append(" ".join(f"{cell:{align}{width}}" for cell, (_, align, width) in cells))
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(summary: list[dict[str, Any]]) -> str:
    columns = _columns(summary)
    lines = ["| " + " | ".join(name for name, _, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if a == "<" else "--:" for _, a, _ in columns) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


def git_describe(path: Path) -> str | None:
    """Short commit of the checkout at ``path``, ``+dirty`` when mallard/ has changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "mallard"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def export_revision(revision: str, destination: Path) -> str:
    """Extract ``mallard/`` as committed at ``revision`` into ``destination``.

    Returns the short commit id. Reads the repository only (``git archive``).
    """
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{revision}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "mallard"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")
    return commit


def filesystem_of(path: Path) -> str | None:
    """The type of the file system holding ``path`` (ext4, tmpfs, ...), from /proc/mounts."""
    path = path.resolve()
    best, kind = "", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1]
            inside = path == Path(mount) or Path(mount) in path.parents
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0]
        info["memory_gib"] = round(int(meminfo.split()[1]) / 1024 / 1024, 1)
    versions = {}
    for package in ("mallard", "hypercorn", "quart", "quart-trio", "trio", "pyarrow", "duckdb"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    info["packages"] = versions
    return info


def write_chart(runs: list[dict[str, Any]], path: Path) -> bool:
    """A grouped bar chart of req/s per load point and target; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    loads = list(dict.fromkeys(run["load"] for run in runs))
    names = list(dict.fromkeys(run["target"] for run in runs))
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(max(6, 1.8 * len(loads) + 2), 4.5))
    for index, name in enumerate(names):
        values = {run["load"]: run["requests_per_s"] for run in runs if run["target"] == name}
        xs = [i + (index - (len(names) - 1) / 2) * width for i in range(len(loads))]
        bars = axes.bar(xs, [values.get(load, 0) for load in loads], width, label=name)
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks(range(len(loads)), loads)
    axes.set_ylabel("answered requests / s")
    axes.set_title("POST /api/event throughput")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def _float_list(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds measured per run (10)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load first (1)")
    parser.add_argument(
        "--concurrency", type=_int_list, help="closed-loop connections, comma list (1,16,64)"
    )
    parser.add_argument(
        "--rates",
        type=_float_list,
        default=[],
        help="also run open loop at these requests/s (latency at a given rate)",
    )
    parser.add_argument(
        "--rate-connections", type=int, default=64, help="max in flight in open-loop runs"
    )
    parser.add_argument(
        "--targets",
        default=",".join(name for name, target in TARGETS.items() if target.default),
        help=f"comma list of {', '.join(TARGETS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per target and load point; median shown"
    )
    parser.add_argument("--processes", type=int, help="load generator processes (default: nproc)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run; defaults become 3 s, concurrency 1,16, 0.5 s warm-up",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    served = parser.add_mutually_exclusive_group()
    served.add_argument(
        "--server-root",
        type=Path,
        default=REPO,
        help="checkout whose mallard/ is served (default: this repository's working tree)",
    )
    served.add_argument(
        "--server-rev",
        metavar="REV",
        help="serve mallard/ as committed at this git revision of this repository",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where each run's data directory is made (default: %(default)s); fsync cost "
        "depends on its file system",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep each run's data and log")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    defaults = {"duration": 3.0, "warmup": 0.5, "concurrency": [1, 16]} if args.quick else {}
    defaults = {"duration": 10.0, "warmup": 1.0, "concurrency": [1, 16, 64]} | defaults
    for name, value in defaults.items():
        if getattr(args, name) is None:  # an explicit flag wins over --quick
            setattr(args, name, value)
    unknown = [name for name in args.targets.split(",") if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    args.target_list = [TARGETS[name] for name in args.targets.split(",")]
    args.server_root = args.server_root.resolve()
    args.server_commit = None
    if args.server_rev:
        args.server_root = Path(tempfile.mkdtemp(prefix="mallard-bench-rev-"))
        try:
            args.server_commit = export_revision(args.server_rev, args.server_root)
        except subprocess.CalledProcessError as error:
            shutil.rmtree(args.server_root, ignore_errors=True)
            reason = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr
            parser.error(f"cannot export {args.server_rev!r}: {reason.strip()}")
    else:
        args.server_commit = git_describe(args.server_root)
    if not (args.server_root / "mallard").is_dir():
        parser.error(f"{args.server_root} has no mallard/ package")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    points = [LoadPoint(c) for c in args.concurrency]
    points += [LoadPoint(args.rate_connections, rate) for rate in args.rates]
    started = dt.datetime.now(dt.UTC)
    machine = machine_info()
    progress(
        f"{len(points)} load points x {len(args.target_list)} targets, "
        f"{args.warmup:g}s + {args.duration:g}s each; nproc {machine['nproc']}, "
        f"Python {machine['python']}; serving mallard from {args.server_root} "
        f"({args.server_commit or 'not a git checkout'}); data under {args.data_root} "
        f"({filesystem_of(args.data_root)})"
    )
    try:
        return _run_all(args, points, started, machine)
    finally:
        if args.server_rev:
            shutil.rmtree(args.server_root, ignore_errors=True)


def _run_all(
    args: argparse.Namespace,
    points: list[LoadPoint],
    started: dt.datetime,
    machine: dict[str, Any],
) -> int:
    runs: list[dict[str, Any]] = []
    step, steps = 0, len(points) * args.repeat * len(args.target_list)
    for point in points:
        for repeat in range(args.repeat):
            for target in args.target_list:
                step += 1
                again = f" (repeat {repeat + 1}/{args.repeat})" if args.repeat > 1 else ""
                progress(
                    f"[{step}/{steps}] {target.name} at {point.label}{again}: starting the server"
                )
                try:
                    run = run_one(target, point, args)
                except RuntimeError as error:
                    progress(f"  FAILED: {error}")
                    return 2
                run["repeat"] = repeat
                runs.append(run)
    summary = summarize(runs, args.target_list)

    print()
    print(format_table(summary))
    mismatches = [run for run in runs if run.get("parquet_check") == "MISMATCH"]
    bad_exits = [run for run in runs if run["exit_code"] != 0]
    checked = [run for run in runs if run.get("parquet_check")]
    for run in checked if args.repeat == 1 else mismatches:
        print(
            f"{run['target']} {run['load']}: Parquet rows {run['parquet_rows']} "
            f"vs 202 answers {run['accepted_total']}: {run['parquet_check']}"
        )
    if checked:
        verdict = "OK" if not mismatches else "MISMATCH"
        print(
            f"Parquet rows = 202 answers in {len(checked) - len(mismatches)} of "
            f"{len(checked)} runs: {verdict}"
        )
    for run in bad_exits:
        print(f"{run['target']} {run['load']}: server exit code {run['exit_code']} after SIGTERM")

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    json_path = args.results_dir / f"ingest-{stamp}.json"
    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "rates": args.rates,
            "rate_connections": args.rate_connections,
            "loadgen_processes": args.processes or os.cpu_count(),
            "timeout_s": args.timeout,
            "repeat": args.repeat,
            "server_root": str(args.server_root),
            "server_commit": args.server_commit,
            "data_root": str(args.data_root),
            "data_filesystem": filesystem_of(args.data_root),
        },
        "targets": [
            {
                "name": target.name,
                "command": list(target.command),
                "env": dict(target.env),
                "stores_events": target.stores_events,
                "baseline": target.baseline,
                "description": target.description,
            }
            for target in args.target_list
        ],
        "summary": summary,
        "runs": runs,
        "table_markdown": format_markdown(summary),
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {json_path}")
    if not args.no_chart:
        chart = json_path.with_suffix(".png")
        if write_chart(summary, chart):
            print(f"chart:   {chart}")
    return 1 if mismatches or bad_exits else 0


if __name__ == "__main__":
    sys.exit(main())

"""Test, lint and benchmark sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against real servers, real Parquet, real DuckDB and real Chromium."""
    if shutil.which("chromium") is None and shutil.which("apt-get") is not None:
        # The tracking-script tests drive Debian's Chromium (CI: a clean Debian machine, as root).
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", external=True, env=env)
        session.run("apt-get", "install", "-y", "chromium", external=True, env=env)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


BENCHMARKS = {
    "ingest": "benchmarks/bench_ingest.py",
    "batch": "benchmarks/bench_batch.py",
    "query": "benchmarks/bench_query.py",
    "soak": "benchmarks/soak.py",
    "profile": "benchmarks/profile_ingest.py",
}


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each against a baseline in the same run on this machine.

    ``nox -s bench`` runs ingest, batch and query with their defaults;
    ``nox -s bench -- query --sizes 10k,1m`` runs one with its own options.
    """
    session.install("-e", ".[test]", "matplotlib", "py-spy")
    if session.posargs:
        name, *options = session.posargs
        if name not in BENCHMARKS:
            session.error(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        session.run("python", BENCHMARKS[name], *options)
        return
    for name in ("ingest", "batch", "query"):
        session.run("python", BENCHMARKS[name])

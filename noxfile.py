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


@nox.session
def bench(session: nox.Session) -> None:
    """Ingestion benchmark: bare quart-trio baseline vs Mallard, one run, one machine."""
    session.install("-e", ".[test]", "matplotlib")
    session.run("python", "benchmarks/bench_ingest.py", *session.posargs)

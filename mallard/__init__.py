"""Mallard: self-hosted, privacy-first web analytics over Parquet and DuckDB."""

__version__ = "0.1.0"

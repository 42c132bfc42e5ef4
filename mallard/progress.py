"""One progress bar for long commands: generation, compaction, benchmarks."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

BAR_WIDTH = 30


def progress_bar(label: str, unit: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback drawing one ``\\r``-updated line on stderr."""
    started = time.perf_counter()

    def show(done: int, total: int) -> None:
        share = done / total if total else 1.0
        filled = round(share * BAR_WIDTH)
        elapsed = max(time.perf_counter() - started, 1e-9)
        rate = done / elapsed
        left = f", {(total - done) / rate:,.0f} s left" if 0 < done < total else ""
        sys.stderr.write(
            f"\r{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} "
            f"{done:,}/{total:,} {unit}, {rate:,.{0 if rate >= 10 else 1}f}/s{left}"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show

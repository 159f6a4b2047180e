"""Small statistics helpers: nearest-rank percentiles over latencies in seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence; None when it is empty.

    Values may be math.inf (a message that never arrived): a percentile that lands on one is inf.
    """
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/p99.9/max in milliseconds, plus the count.

    A percentile that lands on a message that never arrived (inf) is reported as None, which the
    report prints as "not reached".
    """
    ordered = sorted(values)

    def ms(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else round(v * 1000, 2)

    finite = [v for v in ordered if not math.isinf(v)]
    return {
        "count": len(ordered),
        "missing": len(ordered) - len(finite),
        "p50_ms": ms(percentile(ordered, 50)),
        "p90_ms": ms(percentile(ordered, 90)),
        "p99_ms": ms(percentile(ordered, 99)),
        "p999_ms": ms(percentile(ordered, 99.9)),
        "max_ms": ms(ordered[-1]) if ordered else None,
        "mean_ms": round(sum(finite) / len(finite) * 1000, 2) if finite else None,
    }

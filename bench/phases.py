"""The two measured phases, the same for wabus and the baseline, and what they report about acks.

fixed rate: open loop at `rate`/s for `duration` s — ack latency at a rate the target should hold.
max rate:   closed loop with `concurrency` senders for `max_duration` s — the most it accepts per second.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from dataclasses import dataclass

from . import cpu, load
from .stats import summary_ms


@dataclass(frozen=True)
class Settings:
    rate: float
    duration_s: float
    max_duration_s: float
    concurrency: int
    drain_s: float
    warmup: int
    # Most messages the max-rate phase may send: bounds the loop and the pre-built batch.
    max_rate_ceiling: int = 10_000

    @property
    def fixed_count(self) -> int:
        return int(self.rate * self.duration_s)

    @property
    def max_count(self) -> int:
        return int(self.max_rate_ceiling * self.max_duration_s)


@dataclass
class Phase:
    record: load.Record
    start: float            # perf_counter when the phase began
    wall_offset: float      # time.time() - time.perf_counter() at that moment
    cpu: dict[str, float]
    top: list[str]
    lateness: list[float] | None = None


async def _measured(run, groups: cpu.Groups, expected_s: float):
    before = cpu.snapshot(groups)
    top = asyncio.create_task(cpu.top_midway(expected_s / 2))
    try:
        outcome = await run
    finally:
        after = cpu.snapshot(groups)
        top.cancel()  # a phase shorter than expected has no snapshot; that is fine
        lines: list[str] = []
        with contextlib.suppress(asyncio.CancelledError):
            lines = await top
    usage = cpu.usage(before, after)
    usage["system_share_pct"] = cpu.system_share(before, after)  # type: ignore[assignment]
    return outcome, usage, lines


async def fixed_rate(url: str, batch: load.Batch, settings: Settings, groups: cpu.Groups) -> Phase:
    wall_offset = time.time() - time.perf_counter()
    # Enough connections that slow answers never hold back the schedule (a request waits for a free
    # one only beyond this, and its latency still counts from when it was due to go).
    async with load.Sender(url, limit=512) as sender:
        (record, start, lateness), usage, top = await _measured(
            load.fixed_rate(sender, batch, settings.rate, settings.duration_s), groups, settings.duration_s)
    return Phase(record, start, wall_offset, usage, top, lateness)


async def max_rate(url: str, batch: load.Batch, settings: Settings, groups: cpu.Groups) -> Phase:
    wall_offset = time.time() - time.perf_counter()
    async with load.Sender(url, limit=settings.concurrency) as sender:
        (record, start), usage, top = await _measured(
            load.closed_loop(sender, batch, settings.concurrency, settings.max_duration_s),
            groups, settings.max_duration_s)
    return Phase(record, start, wall_offset, usage, top)


def ack_report(phase: Phase, *, window_s: float | None = None) -> dict:
    """What the HTTP answers say: counts, accepted per second, ack latency of accepted requests."""
    r = phase.record
    used = r.used
    accepted = sum(r.accepted[:used])
    latencies = [r.answered[i] - r.sent[i] for i in range(used) if r.accepted[i]]
    last_answer = max(r.answered[:used], default=phase.start)
    elapsed = max(last_answer - phase.start, 1e-9)
    report = {
        "sent": used,
        "accepted": accepted,
        "errors": used - accepted,
        "error_kinds": dict(r.errors.most_common(10)),
        "elapsed_s": round(elapsed, 3),
        # accepted answers over the time from the first send to the last answer
        "accepted_per_s": round(accepted / elapsed, 1),
        "ack": summary_ms(latencies),
        "cpu_pct_of_one_core": phase.cpu,
        "top": phase.top,
    }
    if window_s is not None:
        report["offered_per_s"] = round(used / window_s, 1)
        in_window = sum(1 for i in range(used) if r.accepted[i] and r.answered[i] <= phase.start + window_s)
        report["accepted_in_window_per_s"] = round(in_window / window_s, 1)
    if phase.lateness is not None:
        report["generator_lateness"] = summary_ms(phase.lateness)
    return report


def e2e_report(phase: Phase, batch: load.Batch, arrived_at: dict[int, float], *, window_s: float,
               drain_waited_s: float) -> dict:
    """End to end for accepted messages: arrival (perf_counter) minus send; missing ones count as inf."""
    r = phase.record
    accepted = [i for i in range(r.used) if r.accepted[i]]
    latencies = [arrived_at[i] - r.sent[i] if i in arrived_at else math.inf for i in accepted]
    window_end = phase.start + window_s
    # acknowledged by the end of the window but not yet through (a row can exist before its 200 arrives)
    backlog = sum(1 for i in accepted if r.answered[i] <= window_end and arrived_at.get(i, math.inf) > window_end)
    arrivals = sorted(arrived_at[i] for i in accepted if i in arrived_at)
    report = {
        "e2e": summary_ms(latencies),
        "processed": len(arrivals),
        "unprocessed_after_drain": len(accepted) - len(arrivals),
        "drain_waited_s": round(drain_waited_s, 1),
        # accepted but not yet through when the sending window closed
        "backlog_at_window_end": backlog,
        "processed_per_s": round(len(arrivals) / (arrivals[-1] - phase.start), 1) if arrivals else 0.0,
        "timeline": _timeline(phase, accepted, arrived_at),
    }
    return report


def _timeline(phase: Phase, accepted: list[int], arrived_at: dict[int, float]) -> list[dict]:
    """Per second since the phase began: accepted so far and processed so far."""
    r = phase.record
    ends = sorted(r.answered[i] for i in accepted)
    arrivals = sorted(arrived_at[i] for i in accepted if i in arrived_at)
    last = max(ends[-1:] + arrivals[-1:], default=phase.start)
    rows = []
    for second in range(1, math.ceil(last - phase.start) + 1):
        t = phase.start + second
        rows.append({"t_s": second, "accepted": bisect.bisect_right(ends, t),
                     "processed": bisect.bisect_right(arrivals, t)})
    return rows


def accepted_ids(phase: Phase, batch: load.Batch) -> list[str]:
    r = phase.record
    return [load.message_id(batch.prefix, i) for i in range(r.used) if r.accepted[i]]


def index_of(batch: load.Batch, message_id: str) -> int | None:
    if not message_id.startswith(batch.prefix):
        return None
    try:
        return int(message_id[len(batch.prefix):])
    except ValueError:
        return None

"""Who used the CPU during a phase: per process group from /proc/<pid>/stat, and the whole machine.

Percentages are of one core (200 % = both cores of a 2-core machine busy).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")

# group name -> function returning the pids in that group right now
Groups = dict[str, Callable[[], list[int]]]


def _ticks(pid: int) -> tuple[int, int] | None:
    """(utime, stime) of a process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]), int(fields[12])


def _machine() -> tuple[int, int, int]:
    """(busy, total, interrupts + steal) in clock ticks, all cores together."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user
    total = sum(values[:8])
    idle = values[3] + values[4]
    return total - idle, total, values[5] + values[6] + values[7]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pids_named(*prefixes: str) -> Callable[[], list[int]]:
    """Processes whose command name starts with one of the prefixes (postgres, beam.smp…)."""
    def find() -> list[int]:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _comm(int(p)).startswith(prefixes)]
    return find


@dataclass
class Snapshot:
    at: float
    machine: tuple[int, int, int]
    per_pid: dict[str, dict[int, tuple[int, int]]]


def snapshot(groups: Groups) -> Snapshot:
    per_pid = {}
    for name, find in groups.items():
        ticks = {}
        for pid in find():
            t = _ticks(pid)
            if t is not None:
                ticks[pid] = t
        per_pid[name] = ticks
    return Snapshot(time.monotonic(), _machine(), per_pid)


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU % of one core per group between two snapshots, plus `machine_busy_pct` of all cores."""
    elapsed = after.at - before.at
    result: dict[str, float] = {}
    for name, ticks in after.per_pid.items():
        start = before.per_pid.get(name, {})
        # a pid first seen in `after` started during the phase: all its time counts
        used = sum(sum(t) - sum(start.get(pid, (0, 0))) for pid, t in ticks.items())
        result[name] = round(used / TICKS / elapsed * 100, 1)
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    kernel = after.machine[2] - before.machine[2]
    # interrupts and softirqs (loopback networking runs there) and steal are charged to no process
    result["interrupts + steal"] = round(kernel / TICKS / elapsed * 100, 1)
    # whatever else is busy: other processes on the machine, kernel threads, short-lived commands
    result["everything else"] = round(max(0.0, busy / TICKS / elapsed * 100 - sum(result.values())), 1)
    result["machine_busy_pct"] = round(busy / total * 100, 1) if total else 0.0
    return result


def system_share(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Per group, the part of its CPU time spent in the kernel (syscalls: sockets, fsync, futex), in %."""
    shares = {}
    for name, ticks in after.per_pid.items():
        start = before.per_pid.get(name, {})
        user = sum(t[0] - start.get(pid, (0, 0))[0] for pid, t in ticks.items())
        system = sum(t[1] - start.get(pid, (0, 0))[1] for pid, t in ticks.items())
        if user + system:
            shares[name] = round(system / (user + system) * 100)
    return shares


async def machine_busy(sample_s: float = 3.0) -> float:
    """Percent of all cores busy over a short sample."""
    busy0, total0, _ = _machine()
    await asyncio.sleep(sample_s)
    busy1, total1, _ = _machine()
    return round((busy1 - busy0) / max(1, total1 - total0) * 100, 1)


async def settle(limit_s: float, *, busy_below_pct: float = 25.0) -> dict:
    """Between phases: wait (at most limit_s) until the system under test has worked off its backlog."""
    started = time.monotonic()
    busy = await machine_busy(2.0)
    while busy >= busy_below_pct and time.monotonic() - started < limit_s:
        busy = await machine_busy(2.0)
    return {"busy_pct": busy, "waited_s": round(time.monotonic() - started, 1), "settled": busy < busy_below_pct}


async def wait_until_quiet(limit_s: float, *, busy_below_pct: float = 20.0) -> dict:
    """Wait (at most limit_s) for other load on the machine to settle; say what was seen."""
    started = time.monotonic()
    busy = await machine_busy()
    while busy >= busy_below_pct and time.monotonic() - started < limit_s:
        print(f"  the machine is {busy:.0f} % busy before the run; waiting for it to settle", flush=True)
        await asyncio.sleep(10)
        busy = await machine_busy()
    return {"busy_pct": busy, "waited_s": round(time.monotonic() - started, 1), "quiet": busy < busy_below_pct}


async def top_snapshot(lines: int = 22) -> list[str]:
    """`top -b -n 1` as a record of the busiest processes mid-phase."""
    try:
        proc = await asyncio.create_subprocess_exec("top", "-b", "-n", "1", "-w", "160",
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    except (OSError, TimeoutError):
        return []
    return out.decode(errors="replace").splitlines()[:lines]


async def top_midway(delay_s: float) -> list[str]:
    await asyncio.sleep(delay_s)
    return await top_snapshot()

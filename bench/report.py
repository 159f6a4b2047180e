"""Turning a run's results into the console summary and the results section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

START = "<!-- bench:ingest:results:start (written by `./dev bench ingest`; edits inside are overwritten) -->"
END = "<!-- bench:ingest:results:end -->"

TARGET_RATE = 1000.0
TARGET_ACK_P99_MS = 10.0
TARGET_E2E_P99_MS = 50.0
TARGET_RATIO = 4.0

# A single asyncio process runs on one core at a time: this much of one core means it is saturated.
SATURATED_PCT = 90.0
# More than this much of a core outside the measured processes means something else disturbed a phase.
DISTURBED_PCT = 20.0


def disturbed(results: dict) -> list[str]:
    """Phases during which other work took a noticeable share of the machine."""
    found = []
    for target in ("wabus", "baseline"):
        for phase in ("fixed", "max"):
            usage = results.get(target, {}).get(phase, {}).get("cpu_pct_of_one_core", {})
            if usage.get("everything else", 0) > DISTURBED_PCT:
                found.append(f"{target} {phase}-rate phase ({usage['everything else']:.0f} % of a core used by "
                             "processes outside the benchmark)")
    return found


def _ms(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f} ms"


def _n(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(results: dict) -> float | None:
    wabus = results.get("wabus", {}).get("max", {}).get("accepted_per_s")
    base = results.get("baseline", {}).get("max", {}).get("accepted_per_s")
    if not wabus or not base:
        return None
    return round(wabus / base, 2)


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) — None when this run cannot say (e.g. a lower rate)."""
    rows: list[tuple[str, str, bool | None]] = []
    params = results["parameters"]
    fixed = results.get("wabus", {}).get("fixed")
    at_target_rate = params["rate"] >= TARGET_RATE
    if fixed:
        # Through the processor too: a backlog that only a drain after the window works off is not sustained.
        sustained = (fixed["errors"] == 0 and fixed["accepted_in_window_per_s"] >= 0.99 * params["rate"]
                     and fixed["processed_per_s"] >= 0.99 * params["rate"] and fixed["unprocessed_after_drain"] == 0)
        rows.append((
            f"{TARGET_RATE:,.0f} webhooks/s sustained through gateway and processor",
            f"offered {_n(fixed['offered_per_s'])}/s; accepted {_n(fixed['accepted_in_window_per_s'])}/s in the window, "
            f"{fixed['errors']} errors; processor {_n(fixed['processed_per_s'])}/s, "
            f"{fixed['unprocessed_after_drain']} unprocessed after a {fixed['drain_waited_s']:g} s drain",
            sustained if at_target_rate else None))
        p99 = fixed["ack"]["p99_ms"]
        rows.append((f"ack p99 ≤ {TARGET_ACK_P99_MS:g} ms at that rate", _ms(p99),
                     (p99 is not None and p99 <= TARGET_ACK_P99_MS) if at_target_rate else None))
        p99 = fixed["e2e"]["p99_ms"]
        rows.append((f"end-to-end p99 ≤ {TARGET_E2E_P99_MS:g} ms at that rate", _ms(p99),
                     (p99 is not None and p99 <= TARGET_E2E_P99_MS) if at_target_rate else None))
    r = ratio(results)
    rows.append((f"max durable accepted/s per gateway process ≥ {TARGET_RATIO:g}× Celery + Flask",
                 f"{r:g}×" if r is not None else "no baseline result in this run",
                 (r >= TARGET_RATIO) if r is not None else None))
    return rows


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not evaluated"}[met]


def _cpu_table(phases: list[tuple[str, dict]]) -> list[str]:
    groups: list[str] = []
    for _, usage in phases:
        for name in usage:
            if name not in ("machine_busy_pct", "system_share_pct") and name not in groups:
                groups.append(name)
    lines = ["| process | " + " | ".join(label for label, _ in phases) + " |",
             "|---|" + "---:|" * len(phases)]
    for name in groups:
        lines.append(f"| {name} | " + " | ".join(
            (f"{usage[name]:.0f} %" if name in usage else "–") for _, usage in phases) + " |")
    lines.append("| **whole machine (of all cores)** | " + " | ".join(
        f"{usage.get('machine_busy_pct', 0):.0f} %" for _, usage in phases) + " |")
    return lines


def observations(results: dict) -> list[str]:
    """Facts read off the CPU samples: which process was saturated in which phase."""
    notes = []
    for target in ("wabus", "baseline"):
        for phase in ("fixed", "max"):
            data = results.get(target, {}).get(phase)
            if not data:
                continue
            usage = {k: v for k, v in data["cpu_pct_of_one_core"].items()
                     if k not in ("machine_busy_pct", "system_share_pct")}
            busiest = sorted(usage.items(), key=lambda kv: -kv[1])[:3]
            saturated = [name for name, pct in usage.items()
                         if pct >= SATURATED_PCT and name in ("gateway", "processor", "load generator")]
            text = (f"{target} {phase}-rate phase: machine {data['cpu_pct_of_one_core']['machine_busy_pct']:.0f} % busy; "
                    "busiest " + ", ".join(f"{n} {p:.0f} %" for n, p in busiest))
            if saturated:
                text += f" — single-process {' and '.join(saturated)} at ≥ {SATURATED_PCT:.0f} % of one core (saturated)"
            notes.append(text)
    return notes


def markdown(results: dict) -> str:
    m = results["machine"]
    p = results["parameters"]
    out = [START, "", "## Latest ingest run", ""]
    out += [f"- **Date:** {results['started_at']} (took {results.get('elapsed_s', 0):.0f} s)",
            f"- **Command:** `{results['command']}` (commit `{m['commit']}`)",
            f"- **Raw results:** `{results['json']}` (bench/results/ is not committed)", ""]
    out += ["### Machine", "",
            "| cores (nproc) | memory | CPU | kernel | Python | PostgreSQL | RabbitMQ |",
            "|---|---|---|---|---|---|---|",
            f"| {m['cores']} | {m['memory_gib']} GiB | {m['cpu_model']} | {m['kernel']} | {m['python']} | "
            f"{m['postgresql']} | {m['rabbitmq']} |", "",
            "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".", ""]
    out += ["### Parameters", "",
            f"- fixed-rate phase: open loop, {p['rate']:g} webhooks/s for {p['duration_s']:g} s, "
            f"then up to {p['drain_s']:g} s for stragglers",
            f"- max-rate phase: closed loop, {p['concurrency']} concurrent senders for {p['max_duration_s']:g} s",
            f"- warm-up: {p['warmup']} webhooks before the phases; 200 chats; every webhook signed "
            "(HMAC-SHA512) with a unique message id",
            f"- baseline: gunicorn {p['gunicorn_workers']} sync workers, Celery prefork concurrency "
            f"{p['celery_concurrency']}"]
    for target in ("wabus", "baseline"):
        seen = results.get(target, {}).get("machine_before")
        if seen:
            out.append(f"- other load just before the {target} run: machine {seen['busy_pct']:.0f} % busy"
                       + (f" (after waiting {seen['waited_s']:.0f} s for it to settle)" if seen["waited_s"] > 5 else ""))
    out += [""]

    out += ["### Results", "",
            "| | wabus | Celery + Flask baseline |", "|---|---:|---:|"]
    w, b = results.get("wabus", {}), results.get("baseline", {})
    wf, bf, wm, bm = w.get("fixed", {}), b.get("fixed", {}), w.get("max", {}), b.get("max", {})

    def row(label: str, fn) -> None:
        def cell(d: dict) -> str:
            try:
                return fn(d) if d else "–"
            except (KeyError, TypeError):
                return "–"
        out.append(f"| {label} | {cell(wf if 'fixed' in label else wm)} | {cell(bf if 'fixed' in label else bm)} |")

    row("fixed rate: offered webhooks/s", lambda d: _n(d["offered_per_s"]))
    row("fixed rate: accepted/s (in the window)", lambda d: _n(d["accepted_in_window_per_s"]))
    row("fixed rate: errors (timeouts: no answer in 10 s)", lambda d: f"{d['errors']:,}" + (f" ({', '.join(d['error_kinds'])})" if d["errors"] else ""))
    row("fixed rate: ack p50 (of accepted requests)", lambda d: _ms(d["ack"]["p50_ms"]))
    row("fixed rate: ack p99 (of accepted requests)", lambda d: _ms(d["ack"]["p99_ms"]))
    row("fixed rate: end-to-end p50", lambda d: _ms(d["e2e"]["p50_ms"]))
    row("fixed rate: end-to-end p99", lambda d: _ms(d["e2e"]["p99_ms"]))
    row("fixed rate: processed/s (processor / Celery worker)", lambda d: _n(d["processed_per_s"]))
    row("fixed rate: backlog when sending stopped", lambda d: f"{d['backlog_at_window_end']:,}")
    row("fixed rate: unprocessed after the drain", lambda d: f"{d['unprocessed_after_drain']:,} "
                                                             f"(waited {d['drain_waited_s']:g} s)")
    row("fixed rate: load generator lateness p99", lambda d: _ms(d["generator_lateness"]["p99_ms"]))
    row("max rate: waited for the backlog before it", lambda d: f"{d['settled_before']['waited_s']:g} s"
        + ("" if d["settled_before"]["settled"] else f" (still {d['settled_before']['busy_pct']:.0f} % busy)"))
    row("max rate: **accepted/s**", lambda d: f"**{_n(d['accepted_per_s'])}**")
    row("max rate: errors", lambda d: f"{d['errors']:,}" + (f" ({', '.join(d['error_kinds'])})" if d["errors"] else ""))
    row("max rate: ack p50", lambda d: _ms(d["ack"]["p50_ms"]))
    row("max rate: ack p99", lambda d: _ms(d["ack"]["p99_ms"]))
    r = ratio(results)
    out += ["", f"**Ratio of maximum accepted/s, wabus gateway (one process) to the baseline's Flask app: "
                f"{f'{r:g}×' if r is not None else 'not measured'}.** "
                "wabus answers 200 only after the webhook and its event are committed in PostgreSQL; the baseline "
                "answers 200 once Celery has handed the task to RabbitMQ (no publisher confirm, nothing in "
                "PostgreSQL yet). The baseline's \"accepted\" is the weaker promise.", ""]

    out += ["### Targets", "", "| target | measured | |", "|---|---|---|"]
    out += [f"| {t} | {measured} | {_verdict(met)} |" for t, measured, met in targets(results)]
    out += [""]

    phases = []
    for target, label in (("wabus", "wabus"), ("baseline", "baseline")):
        d = results.get(target, {})
        if "fixed" in d:
            phases.append((f"{label} fixed", d["fixed"]["cpu_pct_of_one_core"]))
            if d["fixed"].get("drain_cpu_pct_of_one_core"):
                phases.append((f"{label} drain", d["fixed"]["drain_cpu_pct_of_one_core"]))
        if "max" in d:
            phases.append((f"{label} max", d["max"]["cpu_pct_of_one_core"]))
    if phases:
        out += ["### CPU during each phase", "",
                "Percent of one core, from /proc/<pid>/stat (200 % = both cores). `postgres` and `rabbitmq` "
                "count every process of those servers, including anything else using them at the time. "
                "\"interrupts + steal\" is kernel time charged to no process (softirqs carry loopback networking) "
                "and time the hypervisor took; \"everything else\" is the rest of the machine's busy time, mostly "
                "other processes. The JSON also has each group's share of kernel (system) time.", ""]
        out += _cpu_table(phases) + [""]
        out += [f"- {note}" for note in observations(results)] + [""]
    for note in results.get("notes", []):
        out += [f"> {note}", ""]
    for phase in disturbed(results):
        out += [f"> **Disturbed:** {phase}: other work shared the machine; compare with a quieter run.", ""]
    out += [END]
    return "\n".join(out) + "\n"


def write_docs(path: Path, results: dict, header: str) -> None:
    """Replace the marked results section; keep everything around it (or start from `header`)."""
    section = markdown(results)
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section.rstrip("\n") + after
    else:
        text = (text or header).rstrip("\n") + "\n\n" + section
    path.write_text(text)


def console(results: dict) -> str:
    lines = [""]
    for target in ("wabus", "baseline"):
        d = results.get(target)
        if not d:
            continue
        if "error" in d:
            lines.append(f"{target}: FAILED: {d['error']}")
            continue
        f, mx = d.get("fixed", {}), d.get("max", {})
        if f:
            lines.append(f"{target:>8} fixed : offered {f['offered_per_s']:>8,.1f}/s  accepted {f['accepted_in_window_per_s']:>8,.1f}/s"
                         f"  errors {f['errors']:>6,}  ack p50 {_ms(f['ack']['p50_ms']):>11}  p99 {_ms(f['ack']['p99_ms']):>11}"
                         f"  e2e p50 {_ms(f['e2e']['p50_ms']):>11}  p99 {_ms(f['e2e']['p99_ms']):>11}"
                         f"  unprocessed {f['unprocessed_after_drain']:,}")
        if mx:
            lines.append(f"{target:>8} max   : accepted {mx['accepted_per_s']:>8,.1f}/s  errors {mx['errors']:>6,}"
                         f"  ack p50 {_ms(mx['ack']['p50_ms']):>11}  p99 {_ms(mx['ack']['p99_ms']):>11}")
    r = ratio(results)
    if r is not None:
        lines.append(f"ratio (wabus max accepted/s ÷ baseline max accepted/s): {r:g}×")
    for t, measured, met in targets(results):
        lines.append(f"  [{ {True: 'met', False: 'NOT MET', None: 'n/a'}[met] }] {t}: {measured}")
    for note in observations(results):
        lines.append("  " + note)
    for phase in disturbed(results):
        lines.append(f"  DISTURBED: {phase}")
    return "\n".join(lines)

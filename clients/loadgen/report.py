"""Human output: the wrk-like summary at the end (the live view during the run is live.py)."""

from __future__ import annotations

from .latency import percentile_key


def fmt_us(us: float | int | None) -> str:
    """Microseconds with the unit a person reads best: 812us, 1.25ms, 2.01s."""
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f}us"
    if us < 1_000_000:
        return f"{us / 1000:.2f}ms"
    return f"{us / 1_000_000:.2f}s"


def fmt_bytes(n: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= factor:
            return f"{n / factor:.2f}{unit}"
    return f"{n:.0f}B"


def _latency_rows(label: str, lat: dict, keys: list[str]) -> list[str]:
    return [f"  {label:<12}" + "".join(f"{fmt_us(lat.get(k)):>9}" for k in keys)]


def summary_text(doc: dict) -> str:
    """The end-of-run summary, modelled on wrk's, with what wrk leaves out."""
    o = doc["options"]
    lines = []
    span = f"{o['duration_resolved']:g}s" if o["duration_resolved"] is not None else f"{o['requests']} requests"
    lines.append(f"Running {span} test @ {doc['url']}")
    started = doc.get("server_process")
    if started:
        cpus = f", CPU {','.join(map(str, started['cpus']))}" if started["cpus"] else ""
        lines.append(
            f"  server {started['name']} started for this run (pid {started['pid']}{cpus}), serving {started['root']}"
        )
    link = doc.get("link")
    if link:
        lines.append(f"  over link {link['profile']['name']}: " + "; ".join(link.get("applied") or []))
    loops = sorted({w["loop"] for w in doc["client"]["workers"]})
    cpus = [w["cpu"] for w in doc["client"]["workers"] if w["cpu"] is not None]
    where = f", CPU {','.join(map(str, cpus))}" if cpus else ""
    conn = {
        "keepalive": "keep-alive",
        "new": "a new connection per request",
        "pipeline": f"pipelined x{o['pipeline_depth_resolved']}",
    }[o["conn_mode"]]
    mode = f"open loop at {o['rate']:g} req/s ({o['arrivals']})" if doc["mode"] == "open" else "closed loop"
    if o.get("rate_schedule"):
        mode = f"open loop, {_schedule_text(o['rate_schedule'])} ({o['arrivals']})"
    nw = o["workers_resolved"]
    lines.append(
        f"  {mode}, {nw} worker process{'es' if nw != 1 else ''} ({'/'.join(loops)}{where}), "
        f"{o['connections']} connections, {conn}, {len(doc['targets'])} target(s)"
    )
    keys = ["mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"]
    keys[5:5] = [percentile_key(p) for p in sorted(o["percentiles"]) if percentile_key(p) not in keys]
    lines.append(f"  {'Latency':<12}" + "".join(f"{k if k != 'mean' else 'avg':>9}" for k in keys))
    if doc["mode"] == "open":
        lines += _latency_rows("corrected", doc["latency_us"], keys)
        lines += _latency_rows("uncorrected", doc["latency_uncorrected_us"], keys)
    else:
        lines += _latency_rows("", doc["latency_us"], keys)
    lines.append(f"  {doc['requests']} requests in {doc['elapsed_s']:.2f}s, {fmt_bytes(doc['bytes'])} read")
    u = doc["unfinished"]
    if u["count"]:
        lines.append(
            f"  {u['count']} requests still waiting at the end (not in the latency figures): "
            f"median wait {fmt_us(u['median_age_us'])}, oldest {fmt_us(u['oldest_us'])}"
        )
    errors = doc["errors"]
    if errors["total"]:
        detail = ", ".join(f"{k} {v}" for k, v in errors.items() if k != "total")
        lines.append(f"  !!! ERRORS: {errors['total']} requests failed ({detail})")
    lines.append(f"Requests/sec: {doc['rps']:>12.2f}")
    lines.append(f"Transfer/sec: {fmt_bytes(doc['mb_per_s'] * 1e6):>12}")
    if doc["mode"] == "open":
        s = doc["schedule"]
        lines.append(
            f"Rate: target {doc['target_rate']:g} req/s, achieved {doc['achieved_rate']:.1f} req/s; "
            f"{s['queued_sends']} of {s['scheduled']} requests waited for a busy connection; "
            f"schedule slip p99 {fmt_us(s['slip_p99_us'])}"
        )
    if doc.get("stages"):
        lines += stages_lines(doc["stages"])
    for name, label in (("ramp_up", "Ramp-up"), ("warmup", "Warm-up")):
        p = doc[name]
        if p:
            lines.append(
                f"{label} (excluded): {p['requests']} requests in {p['elapsed_s']:.2f}s, "
                f"{p['errors']['total']} errors, p99 {fmt_us(p['latency_us']['p99'])}"
            )
    c = doc["client"]
    per = ", ".join(f"worker {w['worker']}: {w['cpu_percent']:.0f}%" for w in c["workers"])
    verdict = "CLIENT-BOUND: " + "; ".join(c["reasons"]) if c["client_bound"] else "not client-bound"
    if c.get("notes"):
        verdict += " (" + "; ".join(c["notes"]) + ")"
    cost = (
        f"; {c['cpu_us_per_request']:.1f} us CPU per request, {c['cpu_us_per_mb']:.0f} us per MB received"
        if c.get("cpu_us_per_request") is not None and c.get("cpu_us_per_mb") is not None
        else ""
    )
    lines.append(f"Generator: {c['cpu_percent']:.0f}% CPU ({per}){cost}; {verdict}")
    s = doc["server"]
    if s:
        rss = f"{s['peak_rss_bytes'] / 2**20:.1f} MiB" if s["peak_rss_bytes"] is not None else "-"
        cpu = f"{s['cpu_s']:.2f} s CPU ({s['cpu_percent']:.0f}% of one CPU)" if s["cpu_s"] is not None else "CPU -"
        lines.append(f"Server pid {s['pid']} ({s['peak_processes'] or 0} processes): {cpu}, peak RSS {rss}")
    a = doc["adversaries"]
    if a:
        if a["idle"]["connections"]:
            i = a["idle"]
            lines.append(
                f"Idle connections: {i['connections']} held, {i['closed_by_server']} closed by the server, "
                f"{i['open_at_end']} open at the end"
            )
        if a["slow_readers"]["connections"]:
            r = a["slow_readers"]
            lines.append(
                f"Slow readers: {r['connections']} at {fmt_bytes(r['rate_bytes_per_s'])}/s, "
                f"{fmt_bytes(r['bytes'])} read, {r['responses']} responses, "
                f"{r['closed_by_server']} closed by the server"
            )
        if a["slow_senders"]["connections"]:
            r = a["slow_senders"]
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())) or "none"
            lines.append(
                f"Slow senders: {r['connections']}, {r['heads_completed']} request heads completed, "
                f"responses {statuses}, {r['closed_by_server']} closed by the server"
            )
    for w in doc["warnings"]:
        lines.append(f"Warning: {w}")
    return "\n".join(lines)


def _schedule_text(schedule: dict) -> str:
    rates = schedule["rates"]
    if schedule["ramp_s"] is not None:
        return f"a ramp from {rates[0]:g} to {rates[1]:g} req/s over {schedule['ramp_s']:g}s"
    return f"{len(rates)} stages of {schedule['stage_s']:g}s at " + ", ".join(f"{r:g}" for r in rates) + " req/s"


def stages_lines(stages: list[dict]) -> list[str]:
    """The rate stages, one row each: target, achieved, corrected latency, errors."""
    lines = [f"  {'Stage':<6}{'time':>12}{'target/s':>10}{'achieved/s':>12}{'p50':>9}{'p99':>9}{'max':>9}  errors"]
    for st in stages:
        lat = st["latency_us"]
        errors = st["errors"]
        detail = ", ".join(f"{k} {v}" for k, v in errors.items() if k != "total")
        span = f"{st['start_s']:g}-{st['end_s']:g}s"
        lines.append(
            f"  {st['stage']:<6}{span:>12}{st['target_rate']:>10,.0f}{st['achieved_rate']:>12,.1f}"
            f"{fmt_us(lat['p50']):>9}{fmt_us(lat['p99']):>9}{fmt_us(lat['max']):>9}  "
            f"{errors['total']}" + (f" ({detail})" if detail else "")
        )
    return lines

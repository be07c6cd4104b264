"""The report's "TCP vs UDP" section, from `serverzoo udp compare` results.

The table is the one `udp compare` prints (clients.udp.compare.table, one source for
both); the lines saying what it shows are assembled from the same figures, per place,
never written in advance.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from serverzoo.clients.udp.compare import markdown_table, mbit, rtt_by_kind, table
from serverzoo.machine import machine_line

TAIL_RATIO = 10  # a TCP p99 at least this many times UDP's gets its own sentence


@dataclass
class PlaceLink:
    """How one place's link was built, or why it could not be."""

    place: str
    description: str
    applied: list[str]
    warnings: list[str]
    unavailable: str | None = None


@dataclass
class TcpVsUdp:
    doc: dict[str, Any]
    title: str
    caption: str
    machine: str
    command: str | None
    setup: str
    head: list[str]  # the table, for HTML
    rows: list[list[str]]
    markdown: str  # the same table as `udp compare` prints it
    verdicts: list[tuple[str, list[str]]]  # (place, sentences)
    links: list[PlaceLink]
    charts: dict[str, str | None] = field(default_factory=lambda: {"rate": None, "rtt": None})


def _when(m: dict[str, Any]) -> str:
    date = str(m.get("date") or "")
    return f"{date[:10]} {date[11:16]} UTC" if len(date) >= 16 else (date or "an unrecorded date")


def _setup(doc: dict[str, Any]) -> str:
    """The options, in words."""
    o = doc["options"]
    first = next((p for p in doc["places"] if "unavailable" not in p), None)
    sweep = (
        f"sweep from {mbit(o['sweep_from_bps'])} Mbit/s, doubling up to {mbit(o['sweep_to_bps'])} Mbit/s"
        if o["sweep_to_bps"] > o["sweep_from_bps"]
        else f"sweep of one rate, {mbit(o['sweep_from_bps'])} Mbit/s"
    )
    sweep += f", {o['step_time_s']:g} s per rate"
    requests = f"up to {o['count']} requests"
    if first is not None:
        sweep += f", until loss passes {first['udp_sweep']['summary']['loss_threshold_percent']:g}%"
        sizes = {r["size"] for r in first["roundtrip"]["results"]}
        requests += f" of {sizes.pop()} B" if len(sizes) == 1 else ""
    cpus = o.get("cpus")
    return "; ".join(
        [
            f"UDP stream of {o['size']} B datagrams at {mbit(o['rate_bps'])} Mbit/s for {o['time_s']:g} s",
            sweep,
            f"one TCP stream for {o['time_s']:g} s",
            f"{requests} of each kind within {o['time_s']:g} s",
            f"responder on CPU {cpus[0]}, tester on CPU {cpus[1]}" if cpus else "responder and tester not pinned",
        ]
    )


def _delivery(p: dict[str, Any], o: dict[str, Any]) -> str:
    rx, tx = p["udp_stream"]["receiver"], p["udp_stream"]["sender"]
    if rx["lost"]:
        udp = (
            f"UDP lost {rx['loss_percent']:.2f}% of its datagrams ({rx['lost']:,} of {rx['expected']:,}) at "
            f"{mbit(o['rate_bps'])} Mbit/s offered"
        )
    else:
        udp = f"UDP delivered all {rx['expected']:,} datagrams at {mbit(o['rate_bps'])} Mbit/s offered"
    if tx["sender_limited"]:
        udp += f" (the sender reached only {mbit(tx['achieved_bps'])} Mbit/s)"
    t = p["tcp_stream"]
    if t["receiver"]["complete"]:
        tcp = f"TCP delivered every byte, at {mbit(t['sender']['goodput_bps'])} Mbit/s"
    else:
        tcp = (
            f"TCP did NOT deliver every byte ({t['receiver']['bytes']:,} of {t['sender']['bytes']:,} counted "
            f"at the far end)"
        )
    return f"{udp}; {tcp}."


def _sweep(p: dict[str, Any], o: dict[str, Any]) -> str:
    s = p["udp_sweep"]["summary"]
    limit = f"{s['loss_threshold_percent']:g}%"
    if s["max_clean_bps"] is None:
        return f"The sweep found UDP over {limit} loss from its first rate, {mbit(o['sweep_from_bps'])} Mbit/s."
    if s["loss_begins_bps"]:
        return (
            f"The sweep kept UDP under {limit} loss up to {mbit(s['max_clean_bps'])} Mbit/s; "
            f"loss began near {mbit(s['loss_begins_bps'])} Mbit/s."
        )
    if s["sender_limit_bps"]:
        return (
            f"The sweep found no loss up to the sender's own limit, {mbit(s['sender_limit_bps'])} Mbit/s "
            f"(the tester, not the path, was the limit)."
        )
    return f"The sweep found no loss up to its highest rate, {mbit(s['max_clean_bps'])} Mbit/s."


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.0f}"


def _latency(p: dict[str, Any]) -> str | None:
    by = {k: r for k, r in rtt_by_kind(p).items() if r["rtt_ms"].get("p50") is not None}
    if not by:
        return None
    names = {"udp": "UDP", "keep-alive": "TCP keep-alive", "fresh": "a fresh TCP connection"}
    parts = [f"{names[k]} {_ms(by[k]['rtt_ms']['p50'])} ms" for k in names if k in by]
    rounds = p["roundtrip"].get("rounds")
    over = f" over {rounds} round{'s' if rounds != 1 else ''}" if rounds else ""
    text = f"Median round trip{over}: " + ", ".join(parts)
    if "fresh" in by and "keep-alive" in by:
        handshake = by["fresh"]["rtt_ms"]["p50"] - by["keep-alive"]["rtt_ms"]["p50"]
        text += (
            f" (the handshake adds {_ms(handshake)} ms)"
            if handshake >= 0
            else " (a fresh connection was no slower than a kept-alive one)"
        )
    text += "."
    udp = by.get("udp")
    tail = [
        (names[k], by[k]["rtt_ms"]["p99"])
        for k in ("keep-alive", "fresh")
        if udp and k in by and by[k]["rtt_ms"]["p99"] >= TAIL_RATIO * udp["rtt_ms"]["p99"]
    ]
    if tail:
        text += (
            " At p99, "
            + " and ".join(f"{name} took {_ms(v)} ms" for name, v in tail)
            + f", against UDP's {_ms(udp['rtt_ms']['p99'])} ms."
        )
    failed = {k: r for k, r in rtt_by_kind(p).items() if r["failed"]}
    if failed:
        text += (
            " Unanswered: " + ", ".join(f"{names[k]} {r['failed']} of {r['requests']}" for k, r in failed.items()) + "."
        )
        if set(failed) == {"udp"} and len(by) > 1:
            text += " TCP answered every request."
    return text


def place_verdicts(doc: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Per measured place: what UDP and TCP delivered, where UDP's loss began, and the round trips."""
    out = []
    for p in doc["places"]:
        if "unavailable" in p:
            continue
        lines = [_delivery(p, doc["options"]), _sweep(p, doc["options"])]
        latency = _latency(p)
        if latency:
            lines.append(latency)
        out.append((p["place"], lines))
    return out


def place_links(doc: dict[str, Any]) -> list[PlaceLink]:
    """Each place after loopback: what its link was built with, or why it could not be built."""
    out = []
    for p in doc["places"]:
        if "unavailable" in p:
            out.append(PlaceLink(p["place"], "", [], [], p["unavailable"]))
        elif p.get("link"):
            link = p["link"]
            line = link.get("delay_line") or {}
            out.append(
                PlaceLink(
                    p["place"],
                    link.get("profile", {}).get("description", ""),
                    list(link["applied"]),
                    list(line.get("warnings") or []),
                )
            )
    return out


def build_section(doc: dict[str, Any], plots: bool = True) -> TcpVsUdp:
    m = doc.get("machine") or {}
    when = _when(m)
    caption = f"udp compare {when} | {m.get('hostname', '?')}: {machine_line(m)}"
    command = shlex.join(doc["command"]) if doc.get("command") else None
    head, rows = table(doc)
    section = TcpVsUdp(
        doc,
        f"Measured {when} on {m.get('hostname', '?')}",
        caption,
        f"{m.get('hostname', '?')}: {machine_line(m)}, git {(m.get('git_commit') or '-')[:12]}",
        command,
        _setup(doc),
        head,
        rows,
        markdown_table(doc),
        place_verdicts(doc),
        place_links(doc),
    )
    if plots:
        from . import plots as charts

        section.charts = {"rate": charts.udp_rate_chart(doc, caption), "rtt": charts.udp_rtt_chart(doc, caption)}
    return section

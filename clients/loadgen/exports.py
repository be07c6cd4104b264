"""The result's per-interval timeline for other tools: CSV (--csv) and an HdrHistogram log (--hdr-log).

Both come from the timeline the workers already record (one slice every
--timeline-interval, each with its own latency histogram), so writing them costs the run
nothing. The HdrHistogram log is the format of HdrHistogram's own tools
(HistogramLogProcessor, HdrHistogram's plotter and analyzers): one line per interval with
its start (seconds from the measured window's start, the log's BaseTime), its length,
its maximum in milliseconds, and its histogram (V2, compressed, base64). Values are in
microseconds, so HistogramLogProcessor wants -outputValueUnitRatio 1000 to print ms.
"""

from __future__ import annotations

import csv
import datetime as _dt
from typing import Any

from hdrh.log import HistogramLogWriter

from . import latency

CSV_COLUMNS = ("start_s", "end_s", "requests", "errors", "bytes", "requests_per_s", "p50_us", "p99_us", "max_us")


def timeline_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The timeline's slices as flat rows: start and end (seconds from the window's start), counts, latency."""
    rows = []
    for piece in doc["timeline"]:
        end = piece["t"]
        length = piece.get("dt") or 0.0
        rows.append(
            {
                "start_s": round(end - length, 3),
                "end_s": end,
                "requests": piece["requests"],
                "errors": piece["errors"],
                "bytes": piece.get("bytes", 0),
                "requests_per_s": round(piece["requests"] / length, 3) if length > 0 else None,
                "p50_us": piece.get("p50_us"),
                "p99_us": piece["p99_us"],
                "max_us": piece.get("max_us"),
            }
        )
    return rows


def write_timeline_csv(doc: dict[str, Any], path: str) -> None:
    """The per-interval timeline as CSV with a header row (empty cells: no response in that slice)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(timeline_rows(doc))


def write_hdr_log(doc: dict[str, Any], path: str) -> None:
    """The timeline's interval histograms as an HdrHistogram log (format 1.2, relative timestamps)."""
    started = doc.get("started_unix_s") or 0.0
    with open(path, "w") as f:
        log = HistogramLogWriter(f)
        log.output_log_format_version()
        # written here rather than with output_start_time, which mis-formats the date in hdrh 0.10
        when = _dt.datetime.fromtimestamp(started, _dt.UTC).isoformat(sep=" ", timespec="milliseconds")
        log.output_comment(f"[StartTime: {started:.3f} (seconds since epoch), {when}]")
        log.output_base_time(started * 1000)
        log.output_comment(f"[serverzoo load {doc['url']}: latency in microseconds; interval max in ms]")
        log.output_legend()
        for piece in doc["timeline"]:
            end = piece["t"]
            start = end - (piece.get("dt") or 0.0)
            hist = latency.decode(piece["histogram"])
            # the writer takes 0 as "use the histogram's own time stamps": give them too, in ms
            hist.set_start_time_stamp(start * 1000)
            hist.set_end_time_stamp(end * 1000)
            log.output_interval_histogram(hist, start, end, max_value_unit_ratio=1000.0)

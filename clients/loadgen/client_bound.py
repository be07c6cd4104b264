"""Was the load generator the limit of a run? The rule behind a result's `client.client_bound`.

A run is client-bound when a worker shows a sign of being the limit:

- it used at least CPU_BOUND_PERCENT of a CPU over the measured window;
- it waited for a CPU (runnable, not running) at least WAIT_BOUND_PERCENT of the window,
  so its CPU was shared with other work;
- in the open loop, it sent requests late: schedule slip p99 above SLIP_BOUND_US;

unless the server was saturated too: its process tree used at least CPU_BOUND_PERCENT of
the CPUs it was given (its --server-cpus, else every CPU of the machine). A server with
no CPU time left had nothing more to give whatever the generator did, so the figure is the
server's; the result says both were busy (`both_saturated`, and a note), and the CPU and
wait signs are not counted against the run. A late open-loop send is always the
generator's: it changes the load offered, whatever the server does. Without a server CPU
figure (no --server-pid) the generator's signs alone decide. Windows shorter than
JUDGE_MIN_S are not judged.
"""

from __future__ import annotations

CPU_BOUND_PERCENT = 90.0
WAIT_BOUND_PERCENT = 10.0  # runnable but not running this share of the window: starved of CPU
SLIP_BOUND_US = 10_000
JUDGE_MIN_S = 0.5  # shorter windows are not judged client-bound or not


def server_saturated(server_cpu_percent: float | None, server_cpus: int | None) -> bool:
    """Whether a server used at least CPU_BOUND_PERCENT of each of its CPUs (100% = one CPU)."""
    if server_cpu_percent is None or not server_cpus:
        return False
    return server_cpu_percent >= CPU_BOUND_PERCENT * server_cpus


def judge_client(
    results: list[dict], elapsed: float, server_cpu_percent: float | None = None, server_cpus: int | None = None
) -> dict:
    """The `client` object of a result from the workers' results: CPU, per-worker figures, the verdict.

    server_cpu_percent: the server's CPU over the window (100 = one CPU), None if not sampled;
    server_cpus: how many CPUs it was given."""
    busy: list[str] = []  # CPU and wait signs: outweighed by a saturated server
    late: list[str] = []  # open-loop slip: always the generator's
    per_worker = []
    for r in results:
        pct = r["cpu_s"] / elapsed * 100 if elapsed > 0 else 0.0
        wait = r["runqueue_wait_s"]
        wait_pct = wait / elapsed * 100 if wait is not None and elapsed > 0 else None
        per_worker.append(
            {
                "worker": r["worker"],
                "pid": r["pid"],
                "cpu": r["cpu"],
                "loop": r["loop"],
                "cpu_percent": round(pct, 1),
                "runqueue_wait_percent": round(wait_pct, 1) if wait_pct is not None else None,
                "loop_lag_p50_us": r["lag"]["p50_us"],
                "loop_lag_p99_us": r["lag"]["p99_us"],
                "loop_lag_max_us": r["lag"]["max_us"],
            }
        )
        if pct >= CPU_BOUND_PERCENT:
            busy.append(f"worker {r['worker']} used {pct:.0f}% of a CPU (>= {CPU_BOUND_PERCENT:.0f}%)")
        if wait_pct is not None and wait_pct >= WAIT_BOUND_PERCENT:
            busy.append(
                f"worker {r['worker']} waited for a CPU {wait_pct:.0f}% of the time (its CPU is shared with other work)"
            )
        ol = r["open_loop"]
        if ol and ol["slip"]["p99_us"] is not None and ol["slip"]["p99_us"] > SLIP_BOUND_US:
            late.append(
                f"worker {r['worker']} sent requests late: schedule slip p99 {ol['slip']['p99_us'] / 1000:.1f} ms"
            )
    total_cpu = sum(r["cpu_s"] for r in results)
    if elapsed < JUDGE_MIN_S:
        busy, late = [], []  # CPU shares of a few milliseconds say nothing; the result warns instead
    both = bool(busy) and server_saturated(server_cpu_percent, server_cpus)
    notes = []
    if both:
        notes.append(
            f"both saturated: the server used {server_cpu_percent:.0f}% of its {server_cpus} CPU"
            f"{'s' if server_cpus != 1 else ''}, so the server is the limit, not the generator "
            f"({'; '.join(busy)})"
        )
    reasons = late + ([] if both else busy)
    return {
        "cpu_percent": round(total_cpu / elapsed * 100, 1) if elapsed > 0 else 0.0,
        "client_bound": bool(reasons),
        "reasons": reasons,
        "both_saturated": both,
        "notes": notes,
        "workers": per_worker,
    }

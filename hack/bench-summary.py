#!/usr/bin/env python3
"""Prints the benchmarks' figures next to their targets, from target/bench/*.json."""
import json
import sys
from pathlib import Path

directory = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench")
rows = []


def load(name):
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def row(area, figure, value, target="", met=None):
    mark = "" if met is None else ("yes" if met else "NO")
    rows.append((area, figure, value, target, mark))


def num(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


scale = load("scale")
if scale:
    for run in scale.get("convergence", []):
        n, c = run.get("identities"), run.get("concurrency")
        ratio = run.get("ratio")
        target = "<= 1.3 at N = 1000" if n == 1000 else ""
        row("convergence", f"N={n} c={c}: Ready in s (floor s)",
            f"{num(run.get('converge_seconds'))} ({num(run.get('floor_seconds'))})")
        row("convergence", f"N={n} c={c}: time / floor", num(ratio), target,
            (ratio <= 1.3) if n == 1000 and ratio is not None else None)
        if run.get("ideal_operator_seconds") is not None:
            row("convergence", f"N={n} c={c}: minimal writes alone, s (/ floor)",
                f"{num(run.get('ideal_operator_seconds'))} ({num(run.get('ideal_operator_ratio'))})")
            row("convergence", f"N={n} c={c}: time / minimal writes alone",
                num(run.get("winflow_over_ideal_operator")))
    economy = scale.get("write_economy", {})
    runs = scale.get("convergence", [])
    if runs:
        last = runs[-1]
        per, minimal = last.get("writes_per_identity"), last.get("minimal_writes_per_identity")
        row("writes", f"per converged identity, N={last.get('identities')} (Events aside)", num(per),
            f"= {minimal} (7 children, finalizer, status)", per is not None and per == minimal)
    restart = economy.get("restart", {})
    if restart:
        count = restart.get("writes_total")
        row("writes", "restart over converged objects", str(count), "0 (leases, Events aside)", count == 0)
    burst = economy.get("pod_burst", {})
    if burst:
        status_writes = burst.get("burst_status_writes")
        row("writes", f"status writes for {burst.get('updates')} pod updates", str(status_writes),
            "a handful", status_writes is not None and status_writes <= 10)
    hung = scale.get("hung_issuer", {})
    if hung:
        ratio = hung.get("ratio")
        row("tokens", f"{hung.get('plain_identities')} plain identities Ready, alone / beside "
            f"{hung.get('hung_identities')} on a hung issuer, s",
            f"{num(hung.get('alone_ready_seconds'))} / {num(hung.get('beside_hung_ready_seconds'))}")
        row("tokens", "time beside a hung issuer / alone", num(ratio), "about 1 (noise aside)",
            ratio is not None and ratio <= 1.5)
    memory = scale.get("memory", {})
    if memory:
        rss = memory.get("rss_mib")
        row("memory", f"RSS, {memory.get('identities')} identities + {memory.get('labelled_pods')} pods (MiB)",
            num(rss, 1), "<= 50", rss is not None and rss <= 50)
        row("memory", "peak RSS (MiB)", num(memory.get("peak_rss_mib"), 1))
    if scale.get("binary_bytes"):
        row("memory", "release binary (MiB)", num(scale["binary_bytes"] / 2**20, 1))

admission = load("admission")
if admission:
    for run in admission.get("admission", []):
        review = f", {run['review']}" if run.get("review") else ""
        ratio = run.get("p50_over_no_sar")
        over = "" if ratio is None else f", p50 x{num(ratio)} no SAR"
        row("admission", f"webhook at {run['rate_per_second']}/s{review}: p50 / p99 ms (failed)",
            f"{num(run['p50_ms'])} / {num(run['p99_ms'])} ({run['failed']}){over}")
    pod_create = admission.get("pod_create", {})
    ratio = pod_create.get("p50_ratio")
    row("admission", "pod create p50 with / without webhook", num(ratio), "<= 1.10",
        ratio is not None and ratio <= 1.10)
    no_op = pod_create.get("one_no_op_webhook_call_p50_ratio")
    if no_op is not None:
        row("admission", "pod create p50, one call of a webhook that allows at once / without",
            num(no_op))
    cost = admission.get("review_cost", {})
    for run in cost.get("rows", []):
        p99 = run.get("p99_ms")
        row("admission", f"review of {run['containers']} containers at {run['identities']} identities: "
            "p50 / p99 ms", f"{num(run.get('p50_ms'))} / {num(p99)}", "p99 < 5",
            p99 is not None and p99 < 5)
    ratio = cost.get("p99_ratio")
    if ratio is not None:
        runs = cost["rows"]
        row("admission", f"review p99 at {runs[-1]['identities']} / at {runs[0]['identities']} identities",
            num(ratio), "<= 2", ratio <= 2)
    largest = cost.get("largest") or {}
    if largest:
        worst = largest.get("max_ms")
        row("admission", f"largest accepted review ({largest['containers']} containers, "
            f"{largest['body_bytes']} B) at {largest['identities']} identities: max ms",
            num(worst, 1), "< 5000 (the deadline)", worst is not None and worst < 5000)

tokens = load("tokens")
if tokens:
    row("tokens", f"{tokens['identities']} identities x {tokens['token_lifetime_seconds']} s tokens, "
        f"{round(tokens['duration_seconds'])} s: expired moments", str(tokens["expired_moments"]), "0",
        tokens["expired_moments"] == 0)
    per_token = tokens["token_requests_per_token_issued"]["value"]
    row("tokens", "token requests per token issued", num(per_token, 3), "1", abs(per_token - 1) < 0.005)
    row("tokens", "token requests per renewal window", num(tokens["requests_per_renewal_window"]["value"], 3), "1")

if not rows:
    sys.exit(f"no benchmark results in {directory}")
widths = [max(len(str(r[i])) for r in rows + [("area", "figure", "value", "target", "met")]) for i in range(5)]
for r in [("area", "figure", "value", "target", "met")] + rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())

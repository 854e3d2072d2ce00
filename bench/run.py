#!/usr/bin/env python3
"""`make bench`: every benchmark, side by side in one run, written to
bench/results.md with charts in bench/results/ (machine facts and date
included). Each part also prints as it goes.

Parts: policy hooks per language (criterion), policy decisions against
regorus and cedar-policy, masking throughput (criterion), the gateway's
cost ladder from nginx and a bare proxy up to Veil as shipped (wrk, CPU
per call), durable audit and shipping into ClickHouse, hot reload, the
approval round trip across replicas, memory with 20 policies.

Environment: QUICK=1 shortens every part (a smoke run, not for publishing).
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
QUICK = os.environ.get("QUICK") == "1"
# The gateway and its bench programs as they ship: the `dist` profile (thin
# LTO), which `make bench` builds; every part below runs those binaries.
os.environ.setdefault("VEIL_PROFILE", "dist")
PROFILE = os.environ["VEIL_PROFILE"]
MEASURE = "1" if QUICK else "2"


def run(args, env=None, **kw):
    print("+", " ".join(str(a) for a in args), flush=True)
    e = dict(os.environ)
    e.update(env or {})
    done = subprocess.run([str(a) for a in args], cwd=ROOT, env=e, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        sys.exit(f"bench: {args[-1]} failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    print(done.stdout, flush=True)
    return done.stdout


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {rev}\n"
            f"- machine: {os.cpu_count()} cores ({cpu}), {mem / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}; "
            "shared and noisy: every figure is a median, and each part runs its contenders side by side\n"
            f"- {'QUICK smoke run: short measurements, do not publish' if QUICK else 'full run'}")


def criterion(bench, group_prefix):
    """Run a criterion bench; return {(group, function): (median ns, throughput bytes or None)}."""
    run(["cargo", "bench", "--locked", "-p", "veil-gateway", "--bench", bench, "--", "--warm-up-time", "0.5", "--measurement-time", MEASURE])
    return criterion_results(group_prefix)


def criterion_results(group_prefix):
    """The latest criterion figures of the groups starting with `group_prefix`."""
    found = {}
    for f in (ROOT / "target" / "criterion").rglob("new/benchmark.json"):
        meta = json.loads(f.read_text())
        if not meta["group_id"].startswith(group_prefix):
            continue
        est = json.loads((f.parent / "estimates.json").read_text())
        tp = (meta.get("throughput") or {}).get("Bytes")
        found[(meta["group_id"], meta["function_id"] if meta.get("value_str") is None else f'{meta["function_id"]}/{meta["value_str"]}')] = (est["median"]["point_estimate"], tp)
    return found


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def policy_hooks():
    res = criterion("policy", "policy-hook")
    fns = ["instantiate", "on-request", "on-response 4KB", "on-response 4KB + mask"]
    rows = []
    for lang in ["rust", "python", "js"]:
        rows.append([lang] + [f"{res[(f'policy-hook/{lang}', fn)][0] / 1e3:.1f}" if (f"policy-hook/{lang}", fn) in res else "-" for fn in fns])
    # aws-sensitive's scope has no on-request: the gateway never runs it.
    for fn in ["aws-sensitive instantiate", "aws-sensitive on-response 4KB"]:
        if ("policy-hook", fn) in res:
            rows.append([fn, f"{res[('policy-hook', fn)][0] / 1e3:.1f}", "", "", ""])
    return ("Per hook, median µs (criterion; the hook on a ready instance; instantiation is what the background pool pays per call). "
            "Rows: each language's build; on-request is risky-actions deciding iam:CreateUser, on-response secrets-by-team on a 4 KB "
            "GetSecretValue body; then aws-sensitive (no on-request in its scope).\n\n" + table(["policy", *[f + " µs" for f in fns]], rows))


def default_masking():
    # Measured by the policy bench that policy_hooks() ran.
    res = criterion_results("default-masking")
    rows = []
    for (_, fn), (ns, tp) in sorted(res.items(), key=lambda kv: kv[1][1] or 0):
        rows.append([fn.split("/", 1)[1], f"{ns / 1e3:.0f}", f"{tp / (ns / 1e9) / 1e6:.0f}"])
    return ("Issue 5's path: a raw JSON response parsed, decided by aws-sensitive (model and curated selectors, the gateway's native "
            "detectors through `scan.findings`), masked and serialised, on a never-used instance.\n\n"
            + table(["response", "median µs", "MB/s"], rows))


def peers():
    """Veil's components (the gateway's `policy_decisions` example, built by
    `make bench` with the shipped gateway) and the peers (`veil-bench-peers`)
    on the same calls, one after the other; rows merged per call. Both in
    the same profile, so neither side gets LTO the other lacks."""
    run(["cargo", "build", "--profile", PROFILE, "--locked", "-p", "veil-bench-peers"])
    iterations = "300" if QUICK else "1000"
    rows = []
    for args in ([ROOT / "target" / PROFILE / "examples/policy_decisions", ROOT / "target/policies", iterations],
                 [ROOT / "target" / PROFILE / "veil-bench-peers", iterations]):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            run(args, env={"BENCH_JSON": f.name})
            rows += json.loads(Path(f.name).read_text())
    calls = list(dict.fromkeys(r["call"] for r in rows))
    # Each call's engines together (a stable sort keeps Veil's rows first).
    rows.sort(key=lambda r: calls.index(r["call"]))
    text = table(["call", "engine", "p50 µs", "p99 µs", "decision"],
                 [[r["call"], r["engine"], f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", r["decision"]] for r in rows])
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    fig, axes = plt.subplots(1, len(calls), figsize=(4 * len(calls), 4), sharey=True)
    for ax, call in zip(axes, calls):
        p50 = [next(r["p50_us"] for r in rows if r["call"] == call and r["engine"] == e) for e in engines]
        p99 = [next(r["p99_us"] for r in rows if r["call"] == call and r["engine"] == e) for e in engines]
        x = range(len(engines))
        ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
        ax.set_yscale("log")
        ax.set_title(call, fontsize=8)
        ax.set_xticks(list(x), [e.replace(" component)", ")").replace("veil (", "veil\n(") for e in engines], fontsize=7, rotation=45, ha="right")
    axes[0].set_ylabel("µs per decision (log)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(OUT / "policy-decisions.png", dpi=110)
    plt.close(fig)
    return ("The same rules (deny account-destroying actions, approval for identity-changing ones, mask a secret unless the caller's group owns "
            "its prefix) and the same calls, decided by Veil's policy components (risky-actions + secrets-by-team, each hook on a fresh instance), "
            "by regorus (Rego) and by cedar-policy (three authorisation queries: the decision has three outcomes plus a mask). "
            "Every engine's every decision is checked against the one the rules give (bench/peers/src/calls.rs); Veil is timed "
            "in the release gateway's own build (the `policy_decisions` example), the peers in a program of their own.\n\n" + text + "\n\n![policy decisions](results/policy-decisions.png)")


def masking():
    res = criterion("masking", "masking")
    rows, series = [], {}
    for (group, fn), (ns, tp) in sorted(res.items()):
        kind, size = fn.split("/")
        mbs = tp / (ns / 1e9) / 1e6
        rows.append([kind, size, f"{ns / 1e3:.0f}", f"{mbs:.0f}"])
        series.setdefault(kind, {})[size] = mbs
    sizes = ["4KB", "200KB", "1MB"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (kind, by_size) in enumerate(sorted(series.items())):
        ax.bar([j + (i - 0.5) * 0.4 for j in range(len(sizes))], [by_size.get(s, 0) for s in sizes], 0.4, label=kind)
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_ylabel("MB/s (parse + mask + serialise)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "masking.png", dpi=110)
    plt.close(fig)
    rows.sort(key=lambda r: (r[0], sizes.index(r[1])))
    # The same bench's detectors group: findings over the parsed JSON body.
    detected = [[fn.split("/")[1], f"{ns / 1e3:.0f}", f"{tp / (ns / 1e9) / 1e6:.0f}"] for (_, fn), (ns, tp) in criterion_results("detectors").items()]
    detected.sort(key=lambda r: sizes.index(r[0]))
    return ("A response parsed in its protocol's codec, masked (two selectors) and serialised back, as the gateway does: JSON "
            "(ListSecrets-shaped, awsJson) and XML (ListAccessKeys-shaped, query).\n\n"
            + table(["body", "size", "median µs", "MB/s"], rows) + "\n\n![masking](results/masking.png)\n\n"
            "The secret detectors alone over the same JSON body, parsed (every string scanned for every format; names judged once each):\n\n"
            + table(["size", "median µs", "MB/s"], detected))


def gateway():
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = {"BENCH_JSON": f.name, "DURATION": "1" if QUICK else "2", "REPEATS": "1" if QUICK else "3"}
        out = run([sys.executable, ROOT / "bench/gateway.py"], env=env)
        res = json.loads(Path(f.name).read_text())
    ladder = res["ladder"]
    rungs = list(dict.fromkeys(r["target"] for r in ladder))
    conns = sorted({r["conns"] for r in ladder})
    modes = list(dict.fromkeys(r["mode"] for r in ladder))
    at = {(r["target"], r["mode"], r["conns"]): r for r in ladder}
    fig, axes = plt.subplots(2, len(modes), figsize=(6 * len(modes), 7), sharey="row", squeeze=False)
    width = 0.8 / len(conns)
    for col, mode in enumerate(modes):
        for row, (key, label) in enumerate([("cpu_us", "gateway CPU µs per call (median)"), ("rps", "requests/s (median)")]):
            ax = axes[row][col]
            for i, c in enumerate(conns):
                ax.bar([j + (i - (len(conns) - 1) / 2) * width for j in range(len(rungs))], [at[(n, mode, c)][key] for n in rungs], width, label=f"{c} conns")
            ax.set_xticks(range(len(rungs)), [f"{i}. {n}" for i, n in enumerate(rungs, 1)], fontsize=7, rotation=25, ha="right")
            ax.set_ylabel(label)
            ax.set_title(f"4 KB GetSecretValue, {mode}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "cost-ladder.png", dpi=110)
    plt.close(fig)
    # Latency percentiles at 16 connections (TLS), the upstream directly as the floor.
    mid = 16 if 16 in conns else conns[0]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    lines = [(f"{i}. {n}", at[(n, modes[0], mid)]) for i, n in enumerate(rungs, 1)]
    lines += [("upstream directly (plain)", r) for r in res["direct"] if r["conns"] == mid]
    for name, r in lines:
        ax.plot(["p50", "p99", "p99.9"], [r["p50_us"], r["p99_us"], r["p999_us"]], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_ylabel("latency µs (log)")
    ax.set_title(f"4 KB call, {mid} connections, {modes[0]}: latency percentiles")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "gateway-latency.png", dpi=110)
    plt.close(fig)
    text = out[out.index("\n4 KB GetSecretValue, the cost ladder"):]
    return ("What each layer of a call costs: the gateway's CPU per call (utime + stime of its processes over a wrk run, from "
            "/proc/<pid>/stat, divided by the requests served; nginx: its workers) and throughput, wrk replaying one signed 4 KB "
            "GetSecretValue call at 1, 16 and 64 connections, over TLS and plain HTTP. Rungs: (1) nginx as a reverse proxy; "
            "(2) the bare proxy `gateway/examples/bench_proxy.rs`, Veil's own listener (a current-thread tokio runtime per core, rustls, "
            "hyper-util) and a hyper-util client with a connection pool per thread, bodies buffered, no logging: the floor of Veil's stack; (3) Veil's whole pipeline with a no-op policy "
            "(risky-actions alone: no hook in scope for GetSecretValue) and audit not durable, the caller sending an OIDC token "
            "(`Authorization: Bearer`, the one way in without SigV4; the token checked once, then remembered until its `exp`); (4) the same gateway, the caller "
            "signing with Veil session credentials instead (so the marginal is SigV4 + session minus the OIDC token check); (5) the "
            "shipped policies (the SecretString masked), audit not durable; (6) + durable audit: Veil as shipped. Veil logs at its "
            "default level (info: refusals, no line per call). Each cell is the median of 3 wrk runs of 2 s, the rungs taking turns; a run of 2 s "
            "is thousands of calls even at one connection (the CPU counters tick every 10 ms), and repeats taken in turn "
            "answer the shared machine's noise better than longer runs; the spread is in brackets.\n"
            + text.strip() + "\n\n![cost ladder](results/cost-ladder.png)\n![gateway latency](results/gateway-latency.png)")


def captured(script, intro, env=None):
    out = run([sys.executable, ROOT / "bench" / script], env=env)
    return intro + "\n\n" + out.strip()


def memory():
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        out = run([sys.executable, ROOT / "bench/memory.py"], env={"BENCH_JSON": f.name, "DURATION": "3" if QUICK else "6"})
    return ("Gateway resident memory with 20 Rust policies loaded (3 shipped + 17 small ones, each with its pool of ready instances), "
            "and with aws-sensitive (Rust), risky-actions in Python and secrets-by-team in JavaScript. The gateway starts as a deployment "
            "restarts, with its compiled-policy cache filled (a first start also holds the compiler's memory).\n\n" + out.strip())


def main():
    OUT.mkdir(exist_ok=True)
    sections = [
        ("Policy hooks, per language", policy_hooks),
        ("Default masking end to end", default_masking),
        ("Policy decisions: Veil components, regorus, cedar-policy", peers),
        ("Masking throughput", masking),
        ("Gateway cost ladder", gateway),
        ("Audit: request-path cost and shipping into ClickHouse",
         lambda: captured("audit.py", "The durable spool's cost on the request path, and the spool → ClickHouse (Debian 18.16 server) shipping rate.")),
        ("Hot reload", lambda: captured("reload.py", "A policy file renamed into the watched directory until the gateway serves it, and call latency during reloads.",
                                         env={"SWAPS": "5" if QUICK else "20"})),
        ("Approvals across replicas",
         lambda: captured("approvals.py", "Reviewer approves on one replica → the call waiting on another is forwarded: two gateways sharing "
                                          "a PostgreSQL approval store (LISTEN/NOTIFY wakes the waiting call).",
                          env={"ROUNDS": "10" if QUICK else "40"})),
        ("Memory", memory),
    ]
    facts = machine()
    started = time.monotonic()
    took = []
    body = []
    for title, fn in sections:
        print(f"== {title}", flush=True)
        part_started = time.monotonic()
        body += [f"## {title}", "", fn(), ""]
        took.append(f"{title.split(':')[0].lower()} {time.monotonic() - part_started:.0f} s")
    # bench/run.py's own time (builds of the bench programs included; the
    # gateway's build and the policies are make's, before it).
    facts += f"\n- this script ran {(time.monotonic() - started) / 60:.1f} min: " + ", ".join(took)
    head = ["# Veil benchmark results", "", "Written by `make bench` (bench/run.py); rerun to update.", "", facts, ""]
    (ROOT / "bench" / "results.md").write_text("\n".join(head + body))
    print(f"wrote {ROOT / 'bench' / 'results.md'}")


if __name__ == "__main__":
    main()

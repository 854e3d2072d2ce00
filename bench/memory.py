#!/usr/bin/env python3
"""Gateway memory: resident set size (RSS) idle after start, then the peak
under load (wrk, 16 connections, the 4 KB GetSecretValue-shaped call of
bench/gateway.py) and after it, for two policy sets:

- 20 Rust policies: the three shipped ones plus 17 copies of the `versioned`
  test fixture built under distinct names (VEIL_FIXTURE_NAME), each running
  both hooks on every call;
- polyglot: aws-sensitive (Rust), risky-actions in Python and
  secrets-by-team in JavaScript (their runtimes' memory images are copied
  into resident memory per instance: see Runtimes in policy/host.rs).

Each gateway starts with the compiled-policy cache the criterion benches
fill (bench/gateway.py, `policy_cache`), as a deployment restarts with its
cache: on a first start the compiler's memory (Python and JS components
are large) would stay in the idle figure.

Usage: python3 bench/memory.py (after `make build policies` and
`cargo build --release --example bench_upstream`).
Environment: DURATION (s, default 10); BENCH_JSON=<file> also writes the
figures as JSON.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gateway  # noqa: E402
from gateway import harness  # noqa: E402

DURATION = int(os.environ.get("DURATION", "10"))
EXTRA = 17


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def rust_policies(pdir):
    for f in harness.POLICIES.glob("*.wasm"):
        shutil.copy(f, pdir / f.name)
    for i in range(1, EXTRA + 1):
        env = dict(os.environ, VEIL_FIXTURE_NAME=f"bench-{i:02}")
        subprocess.run(["cargo", "build", "--quiet", "--locked", "--profile", "wasm", "--target", "wasm32-wasip2", "-p", "versioned"],
                       cwd=ROOT, env=env, check=True)
        shutil.copy(ROOT / "target/wasm32-wasip2/wasm/versioned.wasm", pdir / f"bench-{i:02}.wasm")


def polyglot_policies(pdir):
    shutil.copy(harness.POLICIES / "aws-sensitive.wasm", pdir)
    shutil.copy(harness.POLICIES / "python" / "risky-actions.wasm", pdir)
    shutil.copy(harness.POLICIES / "js" / "secrets-by-team.wasm", pdir)


def measure(d, name, build):
    """A row (policies loaded, RSS idle / peak / after in MiB, req/s) for a gateway on the set `build` writes."""
    procs = []
    pdir = Path(d) / f"{name}-policies"
    pdir.mkdir()
    build(pdir)
    try:
        up_port, issuer = gateway.start_backends(procs)
        veil = gateway.start_veil(d, name, issuer, up_port, procs, policies_dir=pdir)
        time.sleep(5)
        pid = veil.proc.p.pid
        idle = rss_mib(pid)
        script = gateway.signed_script(d, veil, gateway.session_credentials(veil, issuer), name)
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib(pid))
                time.sleep(0.2)
        t = threading.Thread(target=sample)
        t.start()
        rps, _, _, _ = gateway.wrk(veil.url + "/", str(script), 16, DURATION)
        done.set()
        t.join()
        time.sleep(2)
        after = rss_mib(pid)
    finally:
        for p in reversed(procs):
            p.stop()
    return {"set": name, "policies": len(list(pdir.glob("*.wasm"))), "idle_mib": idle, "peak_mib": peak[0], "after_mib": after, "rps": rps}


def main():
    with tempfile.TemporaryDirectory() as d:
        rows = [measure(d, "rust", rust_policies), measure(d, "polyglot", polyglot_policies)]
    print(f"| policy set | policies loaded | idle RSS | peak RSS under load (16 conns, {DURATION} s) | RSS after load | req/s under load |")
    print("|---|---:|---:|---:|---:|---:|")
    label = {"rust": "20 Rust", "polyglot": "Rust + Python + JS"}
    for r in rows:
        print(f"| {label[r['set']]} | {r['policies']} | {r['idle_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | {r['after_mib']:.0f} MiB | {r['rps']:.0f} |")
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()

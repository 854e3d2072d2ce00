#!/usr/bin/env python3
"""Hot-reload benchmark: time from a policy file's final rename to the new
version being active (the admin API's `loaded_at_ms`, set as the new set is
swapped in; calls decided after it use the new version), for a ~100 KB and a ~2 MB component, and the latency
of calls made during reloads versus steady state.

The components are the `versioned` test fixture (two versions) padded with
a custom section to the target size. Usage: python3 bench/reload.py
(after `make build policies`)."""
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

FIXTURES = harness.POLICIES / "fixtures"
TOKEN = "r" * 40
SWAPS = int(os.environ.get("SWAPS", "20"))


def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def padded(src, size, dst, salt=0):
    """`src` plus a custom section, `size` bytes in all (components allow
    custom sections anywhere); a distinct `salt` makes distinct bytes, which
    the compiled-policy cache has not seen."""
    data = Path(src).read_bytes()
    name = b"veil-bench-padding"
    body_len = max(0, size - len(data) - 1 - 5 - 1 - len(name))
    payload = leb(len(name)) + name + salt.to_bytes(8, "little") + b"\0" * (body_len - 8)
    Path(dst).write_bytes(data + b"\x00" + leb(len(payload)) + payload)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * p)))]


def load(veil, ca, token, d, stop, out):
    """Calls in a process of its own (so the swapping and polling below do not
    share its interpreter lock): (end, Unix ms; latency µs) per call."""
    latencies = []
    with harness.agent_session(veil, ca, token, d) as s:
        sts = s.client("sts")
        sts.get_caller_identity()
        while not stop.is_set():
            t = time.monotonic()
            sts.get_caller_identity()
            latencies.append((time.time() * 1e3, (time.monotonic() - t) * 1e6))
    out.send(latencies)


def main():
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        issuer_proc, issuer = harness.start_issuer()
        moto_proc, moto = harness.start_moto()
        pdir = harness.versioned_policy_dir(d)
        cfg, ca = harness.veil_config(d, issuer, moto, harness.admin_block(d, TOKEN), policies_dir=pdir)
        veil = harness.Veil(cfg)
        session = requests.Session()

        def active():
            """The versioned policy's version and when it was loaded (Unix ms)."""
            st = session.get(veil.admin_url + "/v1/policies", headers={"Authorization": f"Bearer {TOKEN}"}, verify=str(ca), timeout=10).json()
            return next((p["version"], p["loaded_at_ms"]) for p in st["policies"] if p["name"] == "versioned")

        mp = multiprocessing.get_context("fork")
        stop = mp.Event()
        receive, send = mp.Pipe(duplex=False)
        caller = mp.Process(target=load, args=(veil, ca, harness.mint(issuer, sub="bench"), d, stop, send))
        try:
            caller.start()
            time.sleep(3)
            steady_until = time.time() * 1e3
            rows, windows = [], []
            for label, size in (("100 KB", 100 << 10), ("2 MB", 2 << 20)):
                times = []
                for i in range(SWAPS):
                    # New bytes every time: a compile, not a cache hit.
                    v = 2 if i % 2 == 0 else 1
                    tmp = pdir / ".versioned.wasm.tmp"
                    padded(FIXTURES / f"versioned-{v}.wasm", size, tmp, salt=time.time_ns())
                    renamed_ms = time.time() * 1e3
                    os.rename(tmp, pdir / "versioned.wasm")
                    # Polled gently (a tight loop would take the CPU the
                    # calls need): the gateway's own load time is the measure.
                    while (now := active())[0] != f"{v}.0.0":
                        time.sleep(0.02)
                    times.append(now[1] - renamed_ms)
                    windows.append((renamed_ms, time.time() * 1e3 + 200))
                    time.sleep(0.3)
                rows.append((label, statistics.median(times), pct(times, 0.95), max(times)))
            stop.set()
            latencies = receive.recv()
            caller.join()
            # The gateway's own time per call (the audit records' total_us):
            # what reloads cost the gateway, apart from the shared CPU.
            export = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=120, check=True)
            records = [json.loads(l) for l in export.stdout.splitlines()]
            gateway = [(r["ts_ms"], r["total_us"]) for r in records if r["kind"] == "call" and r["action"] == "GetCallerIdentity"]
        finally:
            stop.set()
            veil.stop()
            issuer_proc.stop()
            moto_proc.stop()

    def split(samples):
        return ([l for ts, l in samples if ts <= steady_until],
                [l for ts, l in samples if any(a <= ts <= b for a, b in windows)])

    print("| component | rename → active p50 | p95 | max |")
    print("|---|---:|---:|---:|")
    for label, p50, p95, mx in rows:
        print(f"| {label} | {p50:.0f} ms | {p95:.0f} ms | {mx:.0f} ms |")
    print()
    print("| calls (sts:GetCallerIdentity, boto3) | n | p50 | p99 | p99 vs steady |")
    print("|---|---:|---:|---:|---:|")
    for what, samples in (("as the client sees them", latencies), ("gateway time (audit total_us)", gateway)):
        steady, during = split(samples)
        print(f"| {what}, steady | {len(steady)} | {pct(steady, 0.5):.0f} µs | {pct(steady, 0.99):.0f} µs | |")
        print(f"| {what}, during reloads | {len(during)} | {pct(during, 0.5):.0f} µs | {pct(during, 0.99):.0f} µs "
              f"| {pct(during, 0.99) / pct(steady, 0.99):.1f}x |")


if __name__ == "__main__":
    main()

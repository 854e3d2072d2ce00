#!/usr/bin/env python3
"""Soak test: the gateway at a steady load for a bounded time, with policy
reloads, approvals and a ClickHouse restart in the middle. Loopback only;
not part of `make test`.

Every INTERVAL seconds it prints calls, errors, p50/p99 latency and the
gateway's RSS; at the end, audit rows in (calls answered) versus out (rows in
ClickHouse), and the RSS trend. Usage (after `make build policies`):

    SOAK_SECS=600 RATE=40 python3 bench/soak.py

SOAK_SECS (default 600, up to an hour or more), RATE (calls per second,
default 40), INTERVAL (seconds per report line, default 30)."""
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

SOAK_SECS = int(os.environ.get("SOAK_SECS", "600"))
RATE = float(os.environ.get("RATE", "40"))
INTERVAL = int(os.environ.get("INTERVAL", "30"))
WORKERS = 4
ADMIN_TOKEN = "s" * 40
FIXTURES = harness.POLICIES / "fixtures"


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * p)))] if v else 0.0


def rss_mib(pid):
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024


class Load:
    """WORKERS threads sharing RATE calls per second: sts GetCallerIdentity
    and a masked secretsmanager GetSecretValue, alternately."""

    def __init__(self, veil, ca, issuer, d, secret):
        self.lock = threading.Lock()
        self.samples = []  # (time, latency ms, ok)
        self.stop = threading.Event()
        self.threads = []
        self.last_error = None
        for w in range(WORKERS):
            token = harness.mint(issuer, sub=f"soak-{w}", groups=["search"])
            with harness.agent_session(veil, ca, token, d) as session:
                # Resolve the web-identity credentials while the agent
                # environment is set; they refresh from the same token file.
                session.get_credentials().get_frozen_credentials()
                cfg = BotoConfig(retries={"max_attempts": 1})
                clients = (session.client("sts", config=cfg), session.client("secretsmanager", config=cfg))
                t = time.perf_counter()
                clients[0].get_caller_identity()
                self.samples.append((time.time(), (time.perf_counter() - t) * 1e3, True))
            self.threads.append(threading.Thread(target=self.run, args=(clients, secret), daemon=True))

    def run(self, clients, secret):
        sts, sm = clients
        period = WORKERS / RATE
        n = 0
        next_at = time.perf_counter()
        while not self.stop.is_set():
            next_at += period
            t = time.perf_counter()
            ok = True
            try:
                if n % 2:
                    assert sm.get_secret_value(SecretId=secret)["SecretString"] == "***"
                else:
                    sts.get_caller_identity()
            except Exception as e:  # noqa: BLE001 — every failure counts as an error
                ok = False
                self.last_error = repr(e)[:300]
            with self.lock:
                self.samples.append((time.time(), (time.perf_counter() - t) * 1e3, ok))
            n += 1
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def main():
    d = Path(tempfile.mkdtemp(prefix="veil-soak-"))
    issuer_proc, issuer = harness.start_issuer()
    moto_proc, moto = harness.start_moto()
    ch = harness.ClickHouse(d / "ch")
    pdir = harness.versioned_policy_dir(d)
    cfg, ca = harness.veil_config(d, issuer, moto, harness.admin_block(d, ADMIN_TOKEN) + """
[approvals]
wait_secs = 1
""" + harness.clickhouse_audit(ch, "soak"), policies_dir=pdir)
    veil = harness.Veil(cfg)
    secret = f"prod/payments/soak-{time.time_ns()}"
    harness.moto_client(moto, "secretsmanager").create_secret(Name=secret, SecretString="soak-hunter2")
    events, rss = [], []
    load = Load(veil, ca, issuer, d, secret)
    started = time.time()
    load.start()
    try:
        next_reload, next_approval, restarted, ch_down_at = started + 20, started + 30, False, None
        next_report = started + INTERVAL
        version = 1
        print(f"soak: {SOAK_SECS} s at {RATE:.0f} calls/s; report every {INTERVAL} s", flush=True)
        print("| t (s) | calls | errors | p50 ms | p99 ms | RSS MiB | events |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        while time.time() - started < SOAK_SECS:
            now = time.time()
            if now >= next_reload:
                version = 3 - version
                tmp = pdir / ".versioned.wasm.tmp"
                shutil.copy(FIXTURES / f"versioned-{version}.wasm", tmp)
                os.rename(tmp, pdir / "versioned.wasm")
                events.append((now, f"reload v{version}"))
                next_reload = now + 60
            if now >= next_approval:
                events.append((now, approval_round(veil, ca, issuer, d)))
                next_approval = now + 90
            if ch_down_at is None and now - started >= SOAK_SECS / 2:
                ch.stop()
                events.append((now, "ClickHouse stopped"))
                ch_down_at = now
            if ch_down_at is not None and not restarted and now - ch_down_at >= 10:
                ch.start()
                events.append((time.time(), "ClickHouse started"))
                restarted = True
            if now >= next_report:
                with load.lock:
                    window = [s for s in load.samples if next_report - INTERVAL <= s[0] < next_report]
                lat = [s[1] for s in window]
                r = rss_mib(veil.proc.p.pid)
                rss.append(r)
                what = "; ".join(e for t, e in events if next_report - INTERVAL <= t < next_report)
                print(f"| {next_report - started:.0f} | {len(window)} | {sum(1 for s in window if not s[2])} | "
                      f"{pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} | {r:.0f} | {what} |", flush=True)
                next_report += INTERVAL
            time.sleep(0.2)
    finally:
        load.finish()
    answered = len(load.samples)
    errors = sum(1 for s in load.samples if not s[2])
    subjects = ", ".join(f"'soak-{w}'" for w in range(WORKERS))
    sql = f"SELECT count() FROM soak.audit FINAL WHERE subject IN ({subjects}) AND action IN ('GetCallerIdentity', 'GetSecretValue')"
    rows = ch.wait_count(sql, answered, timeout=180)
    lat = [s[1] for s in load.samples]
    print()
    print("| total calls | errors | p50 ms | p99 ms | p99.9 ms | audit rows in | audit rows out | RSS first → last (max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {answered} | {errors} | {statistics.median(lat):.1f} | {pct(lat, 0.99):.1f} | {pct(lat, 0.999):.1f} | "
          f"{answered} | {rows} | {rss[0] if rss else 0:.0f} → {rss[-1] if rss else 0:.0f} MiB ({max(rss or [0]):.0f}) |")
    if load.last_error:
        print(f"last error: {load.last_error}")
    veil.stop()
    ch.stop()
    moto_proc.stop()
    issuer_proc.stop()
    shutil.rmtree(d, ignore_errors=True)
    sys.exit(0 if rows == answered and errors == 0 else 1)


def approval_round(veil, ca, issuer, d):
    """An agent's iam:CreateUser is held; a reviewer approves it through the
    reviewer API; the agent's retry goes through once."""
    user = f"soak-{time.time_ns()}"
    with harness.agent_session(veil, ca, harness.mint(issuer, sub="soak-approver-agent"), d) as s:
        iam = s.client("iam", config=BotoConfig(retries={"max_attempts": 1}))
        try:
            iam.create_user(UserName=user)
            return "approval: FAILED (not held)"
        except ClientError as e:
            msg = e.response["Error"]["Message"]
            if e.response["Error"]["Code"] != "ApprovalRequired":
                return f"approval: FAILED ({msg})"
        apr = msg.split("id ")[1].split(":")[0]
        reviewer = harness.mint(issuer, sub="soak-reviewer", groups=["security-reviewers"])
        r = requests.post(f"{veil.admin_url}/v1/approvals/{apr}/approve", json={"reason": "soak"},
                          headers={"Authorization": f"Bearer {reviewer}"}, verify=str(ca), timeout=10)
        if not r.ok:
            return f"approval: FAILED (approve {r.status_code})"
        iam.create_user(UserName=user)
        return f"approval {apr} used"


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Approval round trip across replicas: two gateways sharing a PostgreSQL
approval store; an agent's call waits on replica A, a reviewer approves it
through replica B's admin API, and the time is taken from the approval
request leaving the reviewer to the agent's call returning (B's decision,
PostgreSQL's NOTIFY, A waking, consuming the grant, forwarding to the
emulator, answering). For comparison, the same with the reviewer on A.

Usage: python3 bench/approvals.py (after `make build policies`); ROUNDS=n."""
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import boto3
import requests
from botocore.config import Config as BotoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "40"))
TOKEN = "b" * 40


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * p)))]


def main():
    procs = []
    pg = harness.Postgres()
    try:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            issuer_proc, issuer = harness.start_issuer()
            procs.append(issuer_proc)
            moto_proc, moto = harness.start_moto()
            procs.append(moto_proc)
            base, ca = harness.veil_config(d, issuer, moto)
            text = base.read_text()
            (d / "admin.token").write_text(TOKEN)
            block = pg.config(d / "pg.password")
            replicas = {}
            for name in ("a", "b"):
                cfg = d / f"veil-{name}.toml"
                cfg.write_text(text + f"""
[admin]
address = "127.0.0.1:0"
token_file = "admin.token"

[audit]
instance = "veil-{name}"
spool_dir = "spool-{name}"
require_durable = false

[approvals]
wait_secs = 30
{block}""")
                replicas[name] = harness.Veil(cfg)
                procs.append(replicas[name].proc)
            a = replicas["a"]
            with harness.agent_session(a, ca, harness.mint(issuer, sub="bench-agent"), d) as s:
                creds = s.get_credentials().get_frozen_credentials()
            iam = boto3.session.Session().client(
                "iam", endpoint_url=a.url, region_name="us-east-1", verify=str(ca), aws_access_key_id=creds.access_key,
                aws_secret_access_key=creds.secret_key, aws_session_token=creds.token,
                config=BotoConfig(retries={"max_attempts": 1}, read_timeout=60))
            reviewer = requests.Session()
            reviewer.headers["Authorization"] = "Bearer " + harness.mint(issuer, sub="bench-reviewer", groups=["security-reviewers"])
            rows = []
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                for label, via in (("across replicas (held on A, approved on B)", replicas["b"]), ("same replica (held and approved on A)", a)):
                    took = []
                    for i in range(ROUNDS + 2):
                        user = f"bench-{time.time_ns()}"
                        call = ex.submit(iam.create_user, UserName=user)
                        entry = None
                        while entry is None:
                            pending = reviewer.get(via.admin_url + "/v1/approvals", verify=str(ca), timeout=10).json()["pending"]
                            entry = next((e for e in pending if e["params"].get("UserName") == user), None)
                            if entry is None:
                                time.sleep(0.02)
                        # Let the call settle into its wait, as a human reviewer would.
                        time.sleep(0.05)
                        t0 = time.perf_counter()
                        r = reviewer.post(f"{via.admin_url}/v1/approvals/{entry['id']}/approve", json={"reason": "bench"}, verify=str(ca), timeout=10)
                        r.raise_for_status()
                        call.result(timeout=30)
                        if i >= 2:  # the first rounds warm connections and caches
                            took.append((time.perf_counter() - t0) * 1000)
                    rows.append((label, len(took), statistics.median(took), pct(took, 0.99), max(took)))
            print(f"Rounds: {ROUNDS} per row, one call waiting at a time; PostgreSQL 15 on loopback (fsync off), moto as AWS.\n")
            print("| approval | rounds | p50 ms | p99 ms | max ms |")
            print("|---|---|---|---|---|")
            for label, n, p50, p99, mx in rows:
                print(f"| {label} | {n} | {p50:.1f} | {p99:.1f} | {mx:.1f} |")
    finally:
        for p in reversed(procs):
            p.stop()
        pg.close()


if __name__ == "__main__":
    main()

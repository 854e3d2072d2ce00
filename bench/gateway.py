#!/usr/bin/env python3
"""Gateway overhead, side by side in one run: a 4 KB GetSecretValue-shaped
call (at each CONNS) and a 200 KB ListSecrets-shaped call (16 connections),
each (a) direct to a minimal fast upstream, (b) through nginx as a plain
reverse proxy, (c) through Veil's full pipeline (SigV4 verify, the shipped
policies with a mask applied, re-sign, durable audit: the record fsynced
before the answer), (d) the same with `audit.require_durable = false`, to
show what the fsync costs. wrk drives each at fixed concurrency; each cell is
the median of REPEATS runs, with the spread.

Usage: python3 bench/gateway.py   (after `make build policies`; installs nothing)
Environment: DURATION (s, default 5), REPEATS (default 3), CONNS (default
"1,16,64"); BENCH_JSON=<file> also writes every cell as JSON.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402
import botocore.auth  # noqa: E402
import botocore.awsrequest  # noqa: E402
import botocore.credentials  # noqa: E402
import requests  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402

DURATION = int(os.environ.get("DURATION", "5"))
REPEATS = int(os.environ.get("REPEATS", "3"))
CONNS = [int(c) for c in os.environ.get("CONNS", "1,16,64").split(",")]
# (label, operation, request body, connection counts): the bench upstream
# answers GetSecretValue with 4 KB and ListSecrets with 200 KB.
OPS = [("4 KB GetSecretValue", "GetSecretValue", {"SecretId": "prod/search/db"}, CONNS),
       ("200 KB ListSecrets", "ListSecrets", {}, [16])]


def headers(action):
    return {"X-Amz-Target": f"secretsmanager.{action}", "Content-Type": "application/x-amz-json-1.1"}

LUA = """
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%%f p50=%%d p99=%%d p999=%%d errors=%%d\\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def lua_script(path, headers, body):
    lines = "\n".join(f'wrk.headers[{json.dumps(k)}] = {json.dumps(v)}' for k, v in headers.items())
    Path(path).write_text(LUA % {"body": json.dumps(body), "headers": lines})


def wrk(url, script, conns, duration=None):
    duration = duration or DURATION
    threads = min(conns, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "-s", script, url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"RESULT rps=([\d.]+) p50=(\d+) p99=(\d+) p999=(\d+) errors=(\d+)", out)
    if not m:
        raise RuntimeError(out)
    rps, p50, p99, p999, errors = float(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5])
    if errors:
        raise RuntimeError(f"{url}: {errors} errors\n{out}")
    return rps, p50, p99, p999


def start_backends(procs):
    """The bench upstream and the OIDC issuer: (upstream port, issuer URL)."""
    up = harness.Proc("upstream", [str(ROOT / "target/release/examples/bench_upstream")])
    procs.append(up)
    up_port = int(up.wait_for(r"listening 127.0.0.1:(\d+)").group(1))
    issuer_proc, issuer = harness.start_issuer()
    procs.append(issuer_proc)
    return up_port, issuer


def policy_cache():
    """The compiled-policy cache the criterion benches use (the gateway's
    `policy::cache::user_dir`): a deployment keeps its cache between starts,
    so the gateways here start as one would, without compiling Python and
    JS policies again (the compiler's memory would show in idle RSS)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "veil"


def start_veil(d, sub, issuer, up_port, procs, extra="", policies_dir=harness.POLICIES):
    """A plain-HTTP Veil in front of the bench upstream, its files in d/sub."""
    os.makedirs(Path(d) / sub)
    cfg, _ = harness.veil_config(Path(d) / sub, issuer, f"http://127.0.0.1:{up_port}", extra=extra, policies_dir=policies_dir)
    text = cfg.read_text().replace('tls_cert = "veil.pem"\ntls_key = "veil-key.pem"', "insecure_plaintext = true")
    cfg.write_text(text.replace("[policies]\n", f"[policies]\ncache_dir = {json.dumps(str(policy_cache()))}\n", 1))
    v = harness.Veil(cfg, env={"VEIL_LOG": "warn,veil_gateway::cli=info"}, scheme="http")
    procs.append(v.proc)
    return v


def session_credentials(veil, issuer):
    """Veil session credentials from the STS emulation (stateless: any
    gateway with the same session key accepts them)."""
    r = requests.post(veil.url, data={"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": harness.ROLE_ARN,
                                       "RoleSessionName": "bench", "WebIdentityToken": harness.mint(issuer, groups=["search"])}, timeout=30)
    r.raise_for_status()
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    c = ET.fromstring(r.text).find(".//s:Credentials", ns)
    return botocore.credentials.Credentials(c.find("s:AccessKeyId", ns).text, c.find("s:SecretAccessKey", ns).text, c.find("s:SessionToken", ns).text)


def signed_script(d, veil, creds, name, action="GetSecretValue", params=None):
    """A wrk script replaying one call signed for `veil` (valid for the
    clock-skew window), after checking the call is answered (and masked)."""
    body = json.dumps({"SecretId": "prod/search/db"} if params is None else params)
    req = botocore.awsrequest.AWSRequest(method="POST", url=veil.url + "/", data=body, headers=headers(action))
    botocore.auth.SigV4Auth(creds, "secretsmanager", "us-east-1").add_auth(req)
    signed = dict(req.headers.items())
    check = requests.post(veil.url + "/", data=body, headers=signed, timeout=10)
    assert check.status_code == 200, check.text
    assert check.json().get("SecretString", "***") == "***" and ("SecretList" in check.json()) == (action == "ListSecrets"), check.text[:300]
    script = Path(d) / f"{name}-{action}.lua"
    lua_script(script, signed, body)
    return script


def nginx(upstream_port, d):
    port = harness.free_port()
    conf = Path(d) / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = harness.Proc("nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"])
    time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}/"


def main():
    procs = []
    with tempfile.TemporaryDirectory() as d:
        try:
            up_port, issuer = start_backends(procs)
            # Nothing ships the spool here, and a run writes a few GB of
            # records (the 200 KB listing's are 64 KB each): room for all of
            # them, or the default 1 GiB cap refuses calls midway.
            spool = "max_spool_bytes = 17179869184\n"
            veil = start_veil(d, "durable", issuer, up_port, procs, "[audit]\n" + spool)
            fast = start_veil(d, "not-durable", issuer, up_port, procs, "[audit]\nrequire_durable = false\n" + spool)
            nginx_proc, nginx_url = nginx(up_port, d)
            procs.append(nginx_proc)
            creds = session_credentials(veil, issuer)
            rows = []
            for label, action, params, conns_list in OPS:
                plain = Path(d) / f"plain-{action}.lua"
                lua_script(plain, headers(action), json.dumps(params))
                targets = [("direct", f"http://127.0.0.1:{up_port}/", plain), ("nginx", nginx_url, plain),
                           ("veil", veil.url + "/", signed_script(d, veil, creds, "veil", action, params)),
                           ("veil, audit not durable", fast.url + "/", signed_script(d, fast, creds, "fast", action, params))]
                results = {}
                for conns in conns_list:
                    for name, url, script in targets:
                        results[(name, conns)] = [wrk(url, str(script), conns) for _ in range(REPEATS)]
                print(f"\n{label}, plain HTTP, {DURATION}s x {REPEATS} runs per cell (median, [min-max] throughput)\n")
                print("| conns | target | req/s | p50 µs | p99 µs | p99.9 µs | vs nginx req/s | added p50 vs direct |")
                print("|---|---|---|---|---|---|---|---|")
                for conns in conns_list:
                    med = {n: [statistics.median(x[i] for x in results[(n, conns)]) for i in range(4)] for n, _, _ in targets}
                    for name, _, _ in targets:
                        rps, p50, p99, p999 = med[name]
                        runs = results[(name, conns)]
                        spread = f"[{min(x[0] for x in runs):.0f}-{max(x[0] for x in runs):.0f}]"
                        print(f"| {conns} | {name} | {rps:.0f} {spread} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {rps / med['nginx'][0]:.2f}x | {p50 - med['direct'][1]:+.0f} µs |")
                        rows.append({"op": label, "conns": conns, "target": name, "rps": rps, "p50_us": p50, "p99_us": p99, "p999_us": p999,
                                     "rps_runs": [x[0] for x in runs]})
            print(f"\nmachine: {os.cpu_count()} cores; wrk and all servers share them")
            if os.environ.get("BENCH_JSON"):
                Path(os.environ["BENCH_JSON"]).write_text(json.dumps(rows))
        finally:
            for p in reversed(procs):
                p.stop()


if __name__ == "__main__":
    main()

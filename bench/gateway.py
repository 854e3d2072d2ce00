#!/usr/bin/env python3
"""The gateway's cost ladder, side by side in one run: what each layer of a
call costs in the gateway's CPU and throughput, from a plain TLS reverse
proxy up to Veil as shipped. wrk replays one signed 4 KB GetSecretValue
call at each CONNS, over TLS and plain HTTP, through each rung:

1. nginx: a TLS reverse proxy (2 workers, upstream keepalive, no access log);
2. bare proxy: `gateway/examples/bench_proxy.rs`, Veil's own listener (tokio,
   rustls, hyper-util) and a pooled hyper-util client, bodies buffered, no
   logging: the floor of Veil's stack;
3. Veil, no-op policy: the whole pipeline (classify, policy set, re-sign,
   response parsed, audit record; logs at the default level, which has no
   line per call), with only risky-actions loaded, which has no hook in scope for
   GetSecretValue, and `audit.require_durable = false`. The caller sends
   `Authorization: Bearer <OIDC token>`, the one way in without SigV4: Veil
   checks the token (RS256) on its first call and then remembers it by
   digest until its `exp`;
4. + SigV4/session: the same gateway, the caller signing with Veil session
   credentials (session token checked, SigV4 verified) instead; the
   marginal is SigV4 and the session minus the OIDC token check, which
   `gateway/examples/identify_bench.rs` times alone, each way in;
5. + shipped policies: aws-sensitive, risky-actions, secrets-by-team (the
   response's SecretString masked), audit still not durable;
6. + durable audit: Veil as shipped (each record fdatasynced, in groups,
   before its answer).

Each rung serves both TLS and plain HTTP (two processes for Veil and the
bare proxy, two server blocks for nginx). Per cell, the CPU per call is the
change in utime + stime (/proc/<pid>/stat) of the rung's processes (nginx:
its workers) over the wrk run, divided by the requests wrk counted; each
cell runs REPEATS times, the rungs taking turns, and the median is kept.
References and extras: the upstream directly (plain; the added latency is
over it), the 200 KB ListSecrets-shaped call through nginx, the bare proxy
and Veil as shipped, and Veil as shipped with its policies' Python and
JavaScript ports (both at 16 connections, TLS).

Usage: python3 bench/gateway.py   (after `make build policies` and building
the `bench_upstream`, `bench_proxy` and `identify_bench` examples; installs
nothing)
Environment: DURATION (s per wrk run, default 2), REPEATS (default 3), CONNS
(default "1,16,64"), EXTRAS=0 skips the listing and the Python/JS sets;
BENCH_JSON=<file> also writes every cell as JSON; THREADS=<n> runs every
proxy on n threads (nginx `worker_processes`, the bare proxy's `--threads`,
Veil's `listener.threads`; by default nginx 2, the others one per CPU);
VEIL_PROFILE (default `release`; `make bench` runs `dist`, what ships) picks
the cargo profile whose gateway and examples run.
"""
import json
import os
import re
import shutil
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

DURATION = int(os.environ.get("DURATION", "2"))
REPEATS = int(os.environ.get("REPEATS", "3"))
CONNS = [int(c) for c in os.environ.get("CONNS", "1,16,64").split(",")]
EXTRAS = os.environ.get("EXTRAS", "1") != "0"
THREADS = os.environ.get("THREADS")
CLK_TCK = os.sysconf("SC_CLK_TCK")
EXAMPLES = ROOT / "target" / harness.PROFILE / "examples"
SMALL = ("4 KB GetSecretValue", "GetSecretValue", {"SecretId": "prod/search/db"})
LISTING = ("200 KB ListSecrets", "ListSecrets", {})
MODES = ["TLS", "plain"]
# The extras' name for rung 6.
SHIPPED = {"+ durable audit": "veil as shipped"}
RUNGS = ["nginx", "bare proxy", "veil, no-op policy", "+ SigV4/session", "+ shipped policies", "+ durable audit"]


def headers(action):
    return {"X-Amz-Target": f"secretsmanager.{action}", "Content-Type": "application/x-amz-json-1.1"}

LUA = """
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%%f p50=%%d p99=%%d p999=%%d errors=%%d requests=%%d\\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
"""


def lua_script(path, headers, body):
    lines = "\n".join(f'wrk.headers[{json.dumps(k)}] = {json.dumps(v)}' for k, v in headers.items())
    Path(path).write_text(LUA % {"body": json.dumps(body), "headers": lines})


def wrk_run(url, script, conns, duration=None, allow_errors=False):
    """One wrk run: {rps, p50_us, p99_us, p999_us, requests, errors}; an
    error (a non-2xx answer included) fails unless `allow_errors`."""
    duration = duration or DURATION
    threads = min(conns, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "-s", script, url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"RESULT rps=([\d.]+) p50=(\d+) p99=(\d+) p999=(\d+) errors=(\d+) requests=(\d+)", out)
    if not m:
        raise RuntimeError(out)
    if int(m[5]) and not allow_errors:
        raise RuntimeError(f"{url}: {m[5]} errors\n{out}")
    return {"rps": float(m[1]), "p50_us": int(m[2]), "p99_us": int(m[3]), "p999_us": int(m[4]), "requests": int(m[6]), "errors": int(m[5])}


def wrk(url, script, conns, duration=None):
    """(req/s, p50, p99, p99.9 µs) of one wrk run."""
    r = wrk_run(url, script, conns, duration)
    return r["rps"], r["p50_us"], r["p99_us"], r["p999_us"]


def cpu_seconds(pids):
    """utime + stime of these processes so far (all their threads)."""
    total = 0
    for pid in pids:
        # The command name (field 2) may hold spaces; fields after it are fixed.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def start_backends(procs):
    """The bench upstream and the OIDC issuer: (upstream port, issuer URL)."""
    up = harness.Proc("upstream", [str(EXAMPLES / "bench_upstream")])
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


def start_veil(d, sub, issuer, up_port, procs, extra="", policies_dir=harness.POLICIES, tls=False, env=None, policy_config=harness.POLICY_CONFIG):
    """A Veil in front of the bench upstream, its files in d/sub; plain HTTP
    unless `tls`. `veil.ca` is its certificate's CA (for checks). Logs at
    warn unless `env` says otherwise."""
    os.makedirs(Path(d) / sub)
    cfg, ca = harness.veil_config(Path(d) / sub, issuer, f"http://127.0.0.1:{up_port}", extra=extra, policies_dir=policies_dir,
                                  policy_config=policy_config)
    text = cfg.read_text()
    if THREADS:
        text = text.replace("[listener]\n", f"[listener]\nthreads = {THREADS}\n", 1)
    if not tls:
        text = text.replace('tls_cert = "veil.pem"\ntls_key = "veil-key.pem"', "insecure_plaintext = true")
    cfg.write_text(text.replace("[policies]\n", f"[policies]\ncache_dir = {json.dumps(str(policy_cache()))}\n", 1))
    v = harness.Veil(cfg, env=env if env is not None else {"VEIL_LOG": "warn,veil_gateway::serve=info"}, scheme="https" if tls else "http")
    v.ca = str(ca) if tls else True
    procs.append(v.proc)
    return v


def session_credentials(veil, issuer):
    """Veil session credentials from the STS emulation (stateless: any
    gateway with the same session key accepts them)."""
    r = requests.post(veil.url, data={"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": harness.ROLE_ARN,
                                       "RoleSessionName": "bench", "WebIdentityToken": harness.mint(issuer, groups=["search"])},
                      timeout=30, verify=getattr(veil, "ca", True))
    r.raise_for_status()
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    c = ET.fromstring(r.text).find(".//s:Credentials", ns)
    return botocore.credentials.Credentials(c.find("s:AccessKeyId", ns).text, c.find("s:SecretAccessKey", ns).text, c.find("s:SessionToken", ns).text)


def checked_script(d, veil, name, action, params, auth, masked=True):
    """A wrk script replaying one call to `veil` with the headers `auth`
    adds, after checking the call is answered (and masked, or not)."""
    body = json.dumps(params)
    req_headers = auth(veil.url, body, headers(action))
    check = requests.post(veil.url + "/", data=body, headers=req_headers, timeout=10, verify=getattr(veil, "ca", True))
    assert check.status_code == 200, check.text
    if action == "GetSecretValue":
        assert (check.json().get("SecretString", "***") == "***") == masked, check.text[:300]
    assert ("SecretList" in check.json()) == (action == "ListSecrets"), check.text[:300]
    script = Path(d) / f"{name}-{action}.lua"
    lua_script(script, req_headers, body)
    return script


def sigv4_auth(creds):
    """Sign with Veil session credentials (valid for the clock-skew window)."""
    def auth(url, body, h):
        req = botocore.awsrequest.AWSRequest(method="POST", url=url + "/", data=body, headers=h)
        botocore.auth.SigV4Auth(creds, "secretsmanager", "us-east-1").add_auth(req)
        return dict(req.headers.items())
    return auth


def bearer_auth(token):
    """An OIDC token, with the service and region SigV4 would carry."""
    def auth(url, body, h):
        return dict(h, Authorization=f"Bearer {token}", **{"x-veil-service": "secretsmanager", "x-veil-region": "us-east-1"})
    return auth


def signed_script(d, veil, creds, name, action="GetSecretValue", params=None):
    """A wrk script replaying one SigV4-signed call to `veil`, checked to be masked."""
    params = SMALL[2] if params is None else params
    return checked_script(d, veil, name, action, params, sigv4_auth(creds))


def nginx(upstream_port, d, cert=None, key=None):
    """nginx as a reverse proxy to the upstream: (proc, plain URL, TLS URL
    or None). With `cert` and `key` it also serves TLS on a second port."""
    port, tls_port = harness.free_port(), harness.free_port()
    tls = f"""
  server {{
    listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""" if cert else ""
    conf = Path(d) / "nginx.conf"
    conf.write_text(f"""
worker_processes {THREADS or 2};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}{tls}
}}
""")
    proc = harness.Proc("nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"])
    time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}/", f"https://127.0.0.1:{tls_port}/" if cert else None


def children(pid):
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def bare_proxy(up_port, procs, cert=None, key=None):
    """The bare proxy (gateway/examples/bench_proxy.rs): (its pid, URL)."""
    tls = ["--tls", str(cert), str(key)] if cert else []
    threads = ["--threads", THREADS] if THREADS else []
    p = harness.Proc("bare-proxy", [str(EXAMPLES / "bench_proxy"), f"127.0.0.1:{up_port}", *tls, *threads])
    procs.append(p)
    addr = p.wait_for(r"listening (\S+)").group(1)
    return p.p.pid, f"{'https' if cert else 'http'}://{addr}/"


class Target:
    """One rung (or reference) in one mode: where wrk sends, which processes
    do the work, and how its wrk script is made (per point: SigV4
    signatures expire)."""

    def __init__(self, name, mode, url, pids, script):
        self.name, self.mode, self.url, self.pids, self.script = name, mode, url, pids, script


def measure(target, script, conns, duration=None):
    before = cpu_seconds(target.pids)
    # Errors (a policy's deadline missed on a busy machine: fail closed) are
    # counted and shown, not fatal: the run is the bench's, not a test.
    r = wrk_run(target.url, str(script), conns, duration, allow_errors=True)
    r["cpu_us"] = (cpu_seconds(target.pids) - before) * 1e6 / max(r["requests"], 1)
    return r


def cell(name, mode, conns, op, runs):
    """The median of a cell's runs, with every run's req/s and CPU kept."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us")}
    return {"op": op, "target": name, "mode": mode, "conns": conns, **med, "errors": sum(r["errors"] for r in runs),
            "rps_runs": [r["rps"] for r in runs], "cpu_runs": [r["cpu_us"] for r in runs]}


def run_point(targets, conns, op, warm=False):
    """Every target at one point, REPEATS rounds of taking turns (so a busy
    moment on the shared machine hits every rung, not one); `warm`: first
    a second of calls each, not counted (connection pools, policy instance
    pools and caches filled as in a running deployment)."""
    scripts = [t.script() for t in targets]
    if warm:
        for t, s in zip(targets, scripts):
            measure(t, s, 16, 1)
    runs = {t.name: [] for t in targets}
    for _ in range(REPEATS):
        for t, s in zip(targets, scripts):
            runs[t.name].append(measure(t, s, conns))
    return [cell(t.name, t.mode, conns, op, runs[t.name]) for t in targets]


def throughput(r):
    """req/s with its spread, and the non-2xx answers if there were any."""
    errors = f" ({r['errors']} non-2xx)" if r["errors"] else ""
    return f"{r['rps']:.0f} {spread(r['rps_runs'])}{errors}"


def spread(xs, fmt="{:.0f}"):
    return f"[{fmt.format(min(xs))}-{fmt.format(max(xs))}]" if len(xs) > 1 else ""


def ladder_table(rows, direct):
    """The ladder as markdown: per mode and connection count, each rung's
    CPU per call, what it adds over the rung before, and throughput."""
    out = ["| rung | conns | TLS/plain | CPU µs/call [min-max] | marginal µs | req/s [min-max] | × nginx | p50 µs (+ over direct) | p99 µs |",
           "|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for conns in CONNS:
            cells = {r["target"]: r for r in rows if r["mode"] == mode and r["conns"] == conns}
            base = direct.get(conns)
            prev = None
            for i, name in enumerate(RUNGS, 1):
                r = cells[name]
                marginal = f"{r['cpu_us'] - prev['cpu_us']:+.1f}" if prev else ""
                added = f" (+{r['p50_us'] - base['p50_us']:.0f})" if base else ""
                out.append(f"| {i}. {name} | {conns} | {mode} | {r['cpu_us']:.1f} {spread(r['cpu_runs'])} | {marginal} | "
                           f"{throughput(r)} | {r['rps'] / cells['nginx']['rps']:.2f}× | {r['p50_us']:.0f}{added} | {r['p99_us']:.0f} |")
                prev = r
    return "\n".join(out)


def extras_table(rows, ladder):
    """The listing and the Python/JS policy sets beside their references."""
    out = ["| call | target | CPU µs/call [min-max] | × bare proxy CPU | req/s [min-max] | × nginx | p50 µs | p99 µs |",
           "|---|---|---|---|---|---|---|---|"]
    for op in dict.fromkeys(r["op"] for r in rows):
        group = [r for r in rows if r["op"] == op]
        if op == SMALL[0]:
            # The policy sets: beside the ladder's rungs at the same point.
            group = [r for r in ladder if r["target"] in ("nginx", "bare proxy", "+ durable audit") and r["mode"] == "TLS" and r["conns"] == 16] + group
        ref = {r["target"]: r for r in group}
        bare, ngx = ref.get("bare proxy"), ref.get("nginx")
        for r in group:
            cpu_x = f"{r['cpu_us'] / bare['cpu_us']:.1f}×" if bare else "-"
            rps_x = f"{r['rps'] / ngx['rps']:.2f}×" if ngx else "-"
            out.append(f"| {op} | {SHIPPED.get(r['target'], r['target'])} | {r['cpu_us']:.0f} {spread(r['cpu_runs'])} | {cpu_x} | "
                       f"{throughput(r)} | {rps_x} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    return "\n".join(out)


def goals(ladder, direct):
    """Issue 28's targets beside what this run measured."""
    at = {(r["target"], r["mode"], r["conns"]): r for r in ladder}
    lines = []
    shipped, bare, ngx = (at.get((n, "TLS", 16)) for n in ("+ durable audit", "bare proxy", "nginx"))
    if shipped and bare and ngx:
        lines.append(f"- as shipped, TLS, 16 connections: {shipped['cpu_us']:.0f} µs of gateway CPU per call (goal ≤ 80), "
                     f"{shipped['cpu_us'] / bare['cpu_us']:.1f}× the bare proxy's (goal ≤ 2.5×), "
                     f"{shipped['rps'] / ngx['rps']:.2f}× nginx's throughput (goal ≥ 0.5×)")
    for mode in MODES:
        fast = at.get(("+ shipped policies", mode, 1))
        if fast and 1 in direct:
            lines.append(f"- audit not durable, {mode}, 1 connection: p50 {fast['p50_us']:.0f} µs, "
                         f"+{fast['p50_us'] - direct[1]['p50_us']:.0f} µs over the upstream directly (goal ≤ +150 µs)")
    return "\n".join(lines)


def polyglot_dir(d, lang):
    """aws-sensitive (Rust) with risky-actions and secrets-by-team in `lang`."""
    pdir = Path(d) / f"policies-{lang}"
    pdir.mkdir()
    shutil.copy(harness.POLICIES / "aws-sensitive.wasm", pdir)
    for p in ("risky-actions", "secrets-by-team"):
        shutil.copy(harness.POLICIES / lang / f"{p}.wasm", pdir)
    return pdir


def identify_stage(d, veil_dir, token, creds, url):
    """The identify stage alone, each way in (gateway/examples/identify_bench.rs)."""
    body = json.dumps(SMALL[2])
    signed = sigv4_auth(creds)(url.rstrip("/"), body, headers(SMALL[1]))
    signed["host"] = url.split("//", 1)[1].rstrip("/")
    request = Path(d) / "identify-request.json"
    request.write_text(json.dumps({"method": "POST", "path": "/", "headers": signed, "body": body}))
    out = subprocess.run([str(EXAMPLES / "identify_bench"), str(Path(veil_dir) / "veil.toml"), token, str(request)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out)


def identify_note(ident, ladder):
    """What rungs 3 and 4 pay to identify the caller, and the pipeline without it."""
    at = {(r["target"], r["mode"], r["conns"]): r for r in ladder}
    oidc, sig = ident["oidc_us"], ident["sigv4_session_us"]
    text = (f"The identify stage alone (`gateway/examples/identify_bench.rs`, in process, one thread, median): the OIDC token check "
            f"{oidc:.0f} µs, SigV4 + session {sig:.0f} µs. Rung 3 pays the first on every call, rung 4 the second instead, so rung 4's "
            f"marginal is SigV4 + session less the token check ({sig - oidc:+.0f} µs on one quiet thread; the ladder's figure is the "
            "token check inside a busy gateway), and rung 4 less SigV4 + session is the pipeline without identity")
    floors = [f"{r4['cpu_us'] - sig:.0f} µs per call at 16 connections, {mode}" for mode in MODES if (r4 := at.get(("+ SigV4/session", mode, 16)))]
    return text + (": " + ", ".join(floors) if floors else "") + "."


def main():
    procs = []
    ok = False
    with tempfile.TemporaryDirectory() as d:
        try:
            up_port, issuer = start_backends(procs)
            cert, key = harness.make_tls(d)[1:]
            # Nothing ships the spool here, and a run writes a few GB of
            # records: room for all of them, or the default 1 GiB cap
            # refuses calls midway.
            spool = "max_spool_bytes = 17179869184\n"
            not_durable = "[audit]\nrequire_durable = false\n" + spool
            noop_dir = Path(d) / "policies-noop"
            noop_dir.mkdir()
            shutil.copy(harness.POLICIES / "risky-actions.wasm", noop_dir)
            # Veil logs at its default level (info: no line per call), as shipped.
            logs = {}
            veils = {}
            for mode in MODES:
                tls = mode == "TLS"
                sfx = "-tls" if tls else ""
                veils[("noop", mode)] = start_veil(d, "noop" + sfx, issuer, up_port, procs, not_durable, noop_dir, tls, logs, policy_config="")
                veils[("fast", mode)] = start_veil(d, "fast" + sfx, issuer, up_port, procs, not_durable, tls=tls, env=logs)
                veils[("shipped", mode)] = start_veil(d, "shipped" + sfx, issuer, up_port, procs, "[audit]\n" + spool, tls=tls, env=logs)
            nginx_proc, nginx_url, nginx_tls_url = nginx(up_port, d, cert, key)
            procs.append(nginx_proc)
            nginx_pids = children(nginx_proc.p.pid)
            bare = {"plain": bare_proxy(up_port, procs), "TLS": bare_proxy(up_port, procs, cert, key)}
            creds = session_credentials(veils[("noop", "plain")], issuer)
            token = harness.mint(issuer, groups=["search"])

            def ladder_targets(mode, op):
                label, action, params = op
                v = lambda kind: veils[(kind, mode)]  # noqa: E731
                signed = lambda kind, masked=True: lambda: checked_script(  # noqa: E731
                    d, v(kind), f"{kind}-{mode}", action, params, sigv4_auth(creds), masked)
                # The proxies get the same signed request bytes (they forward them as they are).
                reference = signed("noop", masked=False)
                url = {"TLS": nginx_tls_url, "plain": nginx_url}[mode]
                return [Target("nginx", mode, url, nginx_pids, reference),
                        Target("bare proxy", mode, bare[mode][1], [bare[mode][0]], reference),
                        Target("veil, no-op policy", mode, v("noop").url + "/", [v("noop").proc.p.pid],
                               lambda: checked_script(d, v("noop"), f"bearer-{mode}", action, params, bearer_auth(token), masked=False)),
                        Target("+ SigV4/session", mode, v("noop").url + "/", [v("noop").proc.p.pid], signed("noop", masked=False)),
                        Target("+ shipped policies", mode, v("fast").url + "/", [v("fast").proc.p.pid], signed("fast")),
                        Target("+ durable audit", mode, v("shipped").url + "/", [v("shipped").proc.p.pid], signed("shipped"))]

            direct = Target("direct", "plain", f"http://127.0.0.1:{up_port}/", [procs[0].p.pid],
                            lambda: checked_script(d, veils[("noop", "plain")], "direct", SMALL[1], SMALL[2], sigv4_auth(creds), False))
            ladder, refs = [], {}
            for mode in MODES:
                for i, conns in enumerate(CONNS):
                    targets = ladder_targets(mode, SMALL) + ([direct] if mode == "plain" else [])
                    for r in run_point(targets, conns, SMALL[0], warm=i == 0):
                        print(f"{mode} {conns:>3} {r['target']:<20} {r['cpu_us']:7.1f} µs/call {r['rps']:8.0f} req/s p50 {r['p50_us']} µs", flush=True)
                        (ladder.append(r) if r["target"] != "direct" else refs.__setitem__(conns, r))
            ident = identify_stage(d, Path(d) / "noop", token, creds, veils[("noop", "plain")].url)
            extras = []
            if EXTRAS:
                listing = [t for t in ladder_targets("TLS", LISTING) if t.name in ("nginx", "bare proxy", "+ durable audit")]
                extras += run_point(listing, 16, LISTING[0], warm=True)
                for lang, name in (("python", "as shipped, policies in Python"), ("js", "as shipped, policies in JavaScript")):
                    v = start_veil(d, lang, issuer, up_port, procs, "[audit]\n" + spool, polyglot_dir(d, lang), True, logs)
                    t = Target(name, "TLS", v.url + "/", [v.proc.p.pid],
                               lambda v=v, lang=lang: checked_script(d, v, lang, SMALL[1], SMALL[2], sigv4_auth(creds)))
                    extras += run_point([t], 16, SMALL[0], warm=True)
                    v.stop()
            print(f"\n4 KB GetSecretValue, the cost ladder: {DURATION} s x {REPEATS} runs per cell, rungs taking turns (medians)\n")
            print(ladder_table(ladder, refs))
            print("\n" + identify_note(ident, ladder))
            print("\nAgainst issue 28's targets:\n")
            print(goals(ladder, refs))
            if extras:
                print(f"\nThe 200 KB listing and the Python and JavaScript policy sets (16 connections, TLS; {DURATION} s x {REPEATS} runs)\n")
                print(extras_table(extras, ladder))
            print(f"\nmachine: {os.cpu_count()} cores; wrk and all servers share them")
            if os.environ.get("BENCH_JSON"):
                Path(os.environ["BENCH_JSON"]).write_text(json.dumps({"ladder": ladder, "direct": list(refs.values()), "extras": extras, "identify": ident}))
            ok = True
        finally:
            for p in reversed(procs):
                p.stop()
                # Logs are kept only if the run failed.
                if ok:
                    os.unlink(p.log.name)


if __name__ == "__main__":
    main()

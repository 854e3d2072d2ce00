"""Policies that print, panic, raise or throw, in Rust, Python and
JavaScript, loaded in a running gateway and driven by boto3 (and raw HTTP/1.1
for connection reuse): every call gets its answer (allowed calls succeed, a
failing hook is a 403 AccessDenied naming the policy, with its message) and
exactly one audit record; what the policy printed is in the gateway's log
with the request id, escaped; no gateway thread panics."""
import http.client
import json
import re
import shutil
import ssl
import subprocess
import time
from urllib.parse import urlparse

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import harness

# One gateway runs every mode: each hostile fixture maps actions to modes,
# every action belonging to one language's fixture and every other call
# allowed by all three (the gateway's self-check calls GetSecretValue, which
# must pass).
RUST = {"ListUsers": "print", "ListRoles": "print-mb", "ListGroups": "panic-request",
        "ListPolicies": "panic-response", "GetParameter": "panic-with-body"}
PYTHON = {"ListQueues": "print", "ListTopics": "print-mb", "ListTables": "raise-request", "ListKeys": "raise-response"}
JS = {"DescribeParameters": "print", "DescribeLogGroups": "print-mb", "ListFunctions": "throw-request",
      "DescribeRegions": "throw-response"}


def modes(m):
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in m.items()) + " }"


CONFIG = f"""
[policies.config.hostile]
modes = {modes(RUST)}

[policies.config.hostile-python]
modes = {modes(PYTHON)}

[policies.config.hostile-js]
modes = {modes(JS)}
"""


@pytest.fixture(scope="module")
def gw(issuer, moto, tmp_path_factory):
    d = tmp_path_factory.mktemp("policy-output")
    pdir = d / "policies"
    pdir.mkdir()
    fixtures = harness.POLICIES / "fixtures"
    for name in ["hostile.wasm", "hostile-python.wasm", "hostile-js.wasm"]:
        shutil.copy(fixtures / name, pdir / name)
    cfg, ca = harness.veil_config(d, issuer, moto, policies_dir=pdir, policy_config=CONFIG)
    veil = harness.Veil(cfg)
    yield {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto, "cfg": cfg, "dir": d}
    veil.stop()


def records(gw):
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(gw["cfg"])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in out.stdout.splitlines()]


def calls_of(gw, action):
    return [r for r in records(gw) if r["kind"] == "call" and r["action"] == action]


def log_lines(gw, request_id):
    return [l for l in gw["veil"].proc.output().splitlines() if f"request_id={request_id}" in l]


def assert_no_gateway_panic(gw):
    """No thread of the gateway panicked. The word may appear only inside a
    policy's own words: its logged output or a deny reason quoting it."""
    for line in gw["veil"].proc.output().splitlines():
        if "panicked" in line or "Cannot start a runtime" in line:
            assert "veil::policy_output" in line or "it printed:" in line, f"gateway panic: {line}"


def client(gw, tmp_path, service):
    """A boto3 client with session credentials Veil issued to an agent
    (taken once through the web-identity flow, then used as they are)."""
    with harness.agent(gw, tmp_path) as s:
        creds = s.get_credentials().get_frozen_credentials()
    return boto3.client(service, region_name="us-east-1", endpoint_url=gw["veil"].url, verify=str(gw["ca"]),
                        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                        aws_session_token=creds.token, config=BotoConfig(retries={"max_attempts": 1}))


CALLS = {
    "ListUsers": ("iam", lambda c: c.list_users()),
    "ListRoles": ("iam", lambda c: c.list_roles()),
    "ListGroups": ("iam", lambda c: c.list_groups()),
    "ListPolicies": ("iam", lambda c: c.list_policies()),
    "ListQueues": ("sqs", lambda c: c.list_queues()),
    "ListTopics": ("sns", lambda c: c.list_topics()),
    "ListTables": ("dynamodb", lambda c: c.list_tables()),
    "ListKeys": ("kms", lambda c: c.list_keys()),
    "DescribeParameters": ("ssm", lambda c: c.describe_parameters()),
    "DescribeLogGroups": ("logs", lambda c: c.describe_log_groups()),
    "ListFunctions": ("lambda", lambda c: c.list_functions()),
    "DescribeRegions": ("ec2", lambda c: c.describe_regions()),
}


@pytest.mark.parametrize("who,table", [("hostile", RUST), ("hostile-python", PYTHON), ("hostile-js", JS)])
def test_printing_and_failing_hooks_answer_audit_and_log(gw, tmp_path, who, table):
    for action, mode in table.items():
        if action not in CALLS:
            continue  # panic-with-body: its own test below
        service, call = CALLS[action]
        c = client(gw, tmp_path, service)
        if mode.startswith("print"):
            # Twice on one client (one connection): both succeed.
            call(c)
            call(c)
        else:
            hook = "on-request" if mode.endswith("request") else "on-response"
            verb = {"hostile": "panics", "hostile-python": "raises", "hostile-js": "throws"}[who]
            for _ in range(2):
                with pytest.raises(ClientError) as e:
                    call(c)
                err = e.value.response["Error"]
                assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, e.value.response
                assert err["Code"] == "AccessDenied", err
                msg = err["Message"]
                assert f"{who}: {hook} trapped" in msg, msg
                assert f"{who} {verb} in {hook} on purpose" in msg, msg
                assert "\n" not in msg and "\x1b" not in msg, msg

        rs = calls_of(gw, action)
        assert len(rs) == 2, f"{action}: exactly one audit record per call: {rs}"
        for r in rs:
            lines = log_lines(gw, r["id"])
            out = [l for l in lines if "veil::policy_output" in l]
            if mode == "print":
                assert r["verdict"] == "allow" and r["status"] == 200, r
                # Both hooks printed, on stdout and stderr, escaped onto one line each.
                assert any(f"hook=on-request" in l and f"{who} on-request stdout: {action}" in l for l in out), lines
                assert any(f"hook=on-response" in l and f"{who} on-response stdout: {action}" in l for l in out), lines
                assert any("\\u{1b}[31mred" in l for l in out), lines
                assert all(f"policy={who}" in l for l in out), out
            elif mode == "print-mb":
                assert r["verdict"] == "allow" and r["status"] == 200, r
                dropped = [int(m.group(1)) for l in out for m in [re.search(r"dropped_bytes=(\d+)", l)] if m]
                assert dropped and max(dropped) >= 1_000_000, out
                assert all(len(l) < 20_000 for l in out), "a megabyte never reaches the log"
            else:
                assert r["verdict"] == "deny" and r["status"] == 403, r
                assert any(f"{verb} in" in reason and reason.startswith(f"{who}: ") for reason in r["reasons"]), r
                assert any(f"{verb} in {hook} on purpose" in l for l in out), lines
    assert_no_gateway_panic(gw)


def test_a_panic_message_quoting_a_secret_from_the_response_is_redacted(gw, tmp_path):
    name = f"/prod/db-{time.time_ns()}"
    secret = "correct-horse-battery-staple-42"
    harness.moto_client(gw["moto"], "ssm").put_parameter(Name=name, Value=secret, Type="SecureString")
    c = client(gw, tmp_path, "ssm")
    with pytest.raises(ClientError) as e:
        c.get_parameter(Name=name, WithDecryption=True)
    msg = e.value.response["Error"]["Message"]
    assert e.value.response["Error"]["Code"] == "AccessDenied" and "hostile cannot handle" in msg, msg
    assert secret not in msg
    (r,) = calls_of(gw, "GetParameter")
    assert secret not in json.dumps(r)
    assert secret not in gw["veil"].proc.output()
    assert_no_gateway_panic(gw)


def bearer_call(conn, gw, service, headers, body, path="/", method="POST"):
    token = harness.mint(gw["issuer"])
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", "X-Veil-Service": service,
                                                   "X-Veil-Region": "us-east-1", **headers})
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace")


def test_the_connection_serves_the_next_call_after_a_failing_hook(gw):
    """On one HTTP/1.1 connection: a call whose on-request fails, one whose
    on-response fails (each language), then an ordinary call; the socket is
    never replaced."""
    u = urlparse(gw["veil"].url)
    ctx = ssl.create_default_context(cafile=str(gw["ca"]))
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    json10 = lambda target: {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target}
    json11 = lambda target: {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
    failing = [
        ("iam", form, "Action=ListGroups&Version=2010-05-08", "hostile panics in on-request"),
        ("iam", form, "Action=ListPolicies&Version=2010-05-08", "hostile panics in on-response"),
        ("dynamodb", json10("DynamoDB_20120810.ListTables"), "{}", "hostile-python raises in on-request"),
        ("kms", json11("TrentService.ListKeys"), "{}", "hostile-python raises in on-response"),
        ("ec2", form, "Action=DescribeRegions&Version=2016-11-15", "hostile-js throws in on-response"),
    ]
    sock = None
    for service, headers, body, want in failing:
        status, text = bearer_call(conn, gw, service, headers, body)
        assert status == 403 and "AccessDenied" in text and want in text, (service, status, text)
        sock = sock or conn.sock
        assert conn.sock is sock, "the gateway closed the connection after a failing hook"
    status, text = bearer_call(conn, gw, "secretsmanager", json11("secretsmanager.ListSecrets"), "{}")
    assert status == 200, text
    assert conn.sock is sock
    conn.close()
    assert_no_gateway_panic(gw)


def test_a_chatty_policy_is_rate_limited_in_the_log(gw, tmp_path):
    c = client(gw, tmp_path, "iam")
    before = sum(1 for l in gw["veil"].proc.output().splitlines() if "veil::policy_output" in l and "policy=hostile " in l)
    n = 30
    for _ in range(n):
        c.list_users()
    # Two outputs per call (both hooks); the burst and the steady rate let
    # through far fewer, and the next logged line counts what was dropped:
    # after a pause that refills the allowance, one more call is logged.
    time.sleep(0.5)
    c.list_users()
    time.sleep(0.5)
    lines = [l for l in gw["veil"].proc.output().splitlines() if "veil::policy_output" in l and "policy=hostile " in l]
    logged = len(lines) - before
    assert logged < 2 * n, logged
    assert any(int(m.group(1)) > 0 for l in lines for m in [re.search(r"suppressed=(\d+)", l)] if m), lines[-5:]
    assert len(calls_of(gw, "ListUsers")) >= n

"""What an attacker can send into the operator's surfaces, through the real
gateway: hostile text in every logged field (a signed call's Action, a
token's sub, a reviewer's sub, the Bearer path's headers, the agent session
and User-Agent headers) leaves one well-formed, capped log line per event,
in text and in JSON; and hostile or numerous names leave /metrics bounded
and parseable by Prometheus's own parser."""
import json
import re
import time

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import harness

ADMIN_TOKEN = "t" * 40
# A newline and a whole fake line, a carriage return, ANSI sequences (clear
# screen, colour), a quote and a backslash.
FORGED = "\n2030-01-01T00:00:00.000000Z  INFO veil_gateway::pipeline: call request_id=forged verdict=allow\r\x1b[2J\x1b[31m\"q\\"
# What an HTTP header can carry (no control characters): quotes, `=` and spaces that fake fields.
HEADER = 'zz",verdict="allow" x=y '
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z +(TRACE|DEBUG|INFO|WARN|ERROR) [\w:]+: \S")
VERDICTS = {"allow", "deny", "approval-required", "unauthenticated", "error"}


def start(tmp_path, issuer, moto, fmt):
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, harness.admin_block(tmp_path, ADMIN_TOKEN) + "[approvals]\nwait_secs = 0\n")
    # The line per call is at debug.
    return harness.Veil(cfg, env={"VEIL_LOG_FORMAT": fmt, "VEIL_LOG": "info,veil_gateway::pipeline=debug"}), ca


def session_credentials(veil, ca, token):
    import xml.etree.ElementTree as ET
    r = requests.post(veil.url, data={"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": harness.ROLE_ARN,
                                      "RoleSessionName": "s1", "WebIdentityToken": token}, verify=str(ca), timeout=30)
    assert r.status_code == 200, r.text
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    c = ET.fromstring(r.text).find(".//s:Credentials", ns)
    return botocore.credentials.Credentials(c.find("s:AccessKeyId", ns).text, c.find("s:SecretAccessKey", ns).text, c.find("s:SessionToken", ns).text)


def signed_query(veil, ca, creds, service, action, extra_headers=None):
    """A query-protocol call with `action`, SigV4-signed with Veil session credentials."""
    body = "Action=" + requests.utils.quote(action, safe="") + "&Version=2010-05-08"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", **(extra_headers or {})}
    req = botocore.awsrequest.AWSRequest(method="POST", url=veil.url + "/", data=body, headers=headers)
    botocore.auth.SigV4Auth(creds, service, "us-east-1").add_auth(req)
    p = req.prepare()
    return requests.post(veil.url + "/", data=p.body, headers=dict(p.headers), verify=str(ca), timeout=60)


def bearer(veil, ca, token, service="iam", region="us-east-1", body="Action=ListUsers&Version=2010-05-08", **headers):
    return requests.post(veil.url + "/", data=body, verify=str(ca), timeout=60, headers={
        "Authorization": f"Bearer {token}", "X-Veil-Service": service, "X-Veil-Region": region,
        "Content-Type": "application/x-www-form-urlencoded", **headers})


def log_events(veil, fmt):
    """The gateway's log as events, checking each line is one well-formed event."""
    out = veil.proc.output()
    assert "\r" not in out and "\x1b" not in out, "raw control characters reached the log"
    events = []
    for line in out.splitlines():
        assert len(line) < 8192, f"a {len(line)}-byte log line: {line[:300]}"
        assert not line.startswith("2030-"), f"a forged line: {line[:300]}"
        if fmt == "json":
            e = json.loads(line)
            assert {"timestamp", "level", "target"} <= set(e), line
            events.append((e.get("message", ""), e.get("fields", {}), line))
        else:
            assert TEXT_LINE.match(line), f"not a log line: {line[:300]}"
            rest = line.split(": ", 1)[1]
            m = re.search(r" \w+=", rest)
            events.append((rest[:m.start()] if m else rest, {}, line))
    return events


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_values_in_every_logged_field_leave_one_line_per_event(tmp_path, issuer, moto, fmt):
    veil, ca = start(tmp_path, issuer, moto, fmt)
    calls = 0
    try:
        # A signed call whose Action carries the forgery, and one of 64 KiB.
        creds = session_credentials(veil, ca, harness.mint(issuer, sub="log-agent"))
        calls += 1
        for action in ["ListUsers" + FORGED, "ListUsers" + FORGED + "A" * 65536]:
            r = signed_query(veil, ca, creds, "iam", action,
                             {"X-Veil-Agent-Session": "s" + HEADER * 300, "User-Agent": "ua" + HEADER * 300})
            assert r.status_code >= 400, r.text
            calls += 1
        # A token whose sub carries it (and one near the 16 KiB token cap),
        # held for approval: the "approval requested" line names the subject.
        sub = "agent" + FORGED
        held = bearer(veil, ca, harness.mint(issuer, sub=sub), body="Action=CreateUser&UserName=u1&Version=2010-05-08")
        calls += 1
        assert held.status_code == 403 and "ApprovalRequired" in held.text, held.text
        approval = re.search(r"apr-[\w-]+", held.text).group(0)
        r = bearer(veil, ca, harness.mint(issuer, sub="big" + FORGED + "B" * 10000))
        calls += 1
        # A reviewer whose sub carries it decides.
        reviewer = harness.mint(issuer, sub="reviewer" + FORGED + "C" * 5000, groups=["security-reviewers"])
        r = requests.post(f"{veil.admin_url}/v1/approvals/{approval}/approve", json={"reason": "ok" + FORGED},
                          headers={"Authorization": f"Bearer {reviewer}"}, verify=str(ca), timeout=30)
        assert r.status_code == 200, r.text
        # The Bearer path's headers, authenticated or not.
        token = harness.mint(issuer, sub="header-agent")
        for service, region in [(HEADER * 300, "us-east-1"), ("iam", HEADER * 300), (HEADER, HEADER)]:
            bearer(veil, ca, token, service=service, region=region, **{"X-Veil-Agent-Session": HEADER * 300, "User-Agent": HEADER * 300})
            bearer(veil, ca, "not-a-token", service=service, region=region)
            calls += 2
        time.sleep(0.5)
        events = log_events(veil, fmt)
        assert sum(1 for m, _, _ in events if m == "call") == calls, [l[:200] for m, _, l in events if m == "call"]
        requested = [l for m, _, l in events if m == "approval requested"]
        decided = [l for m, _, l in events if m == "approval decided"]
        assert len(requested) == 1 and len(decided) == 1, (requested, decided)
        if fmt == "json":
            fields = json.loads(requested[0])["fields"]
            assert fields["subject"] == sub, fields
            assert json.loads(decided[0])["fields"]["reviewer"].startswith("reviewer" + FORGED)
            assert json.loads(decided[0])["fields"]["reviewer"].endswith("more bytes]")
        else:
            assert 'subject="agent\\n2030-01-01T00:00:00.000000Z  INFO veil_gateway::pipeline: call request_id=forged verdict=allow\\r\\u{1b}[2J' in requested[0], requested[0]
            assert 'reviewer="reviewer\\n2030-' in decided[0], decided[0]
            calls_lines = [l for m, _, l in events if m == "call"]
            assert any('action="ListUsers\\n2030-' in l for l in calls_lines)
            assert any('more bytes]"' in l for l in calls_lines), "64 KiB values are capped"
    finally:
        veil.stop()


def known_names():
    ops = json.loads((harness.ROOT / "gateway/src/aws/models/operations.json").read_text())["operations"]
    return set(ops), {a for v in ops.values() for a in v}


def test_metrics_stay_bounded_and_parseable_whatever_callers_send(tmp_path, issuer, moto):
    veil, ca = start(tmp_path, issuer, moto, "text")
    try:
        # Unauthenticated calls naming 40 services, one of them trying to add a label.
        for i in range(40):
            bearer(veil, ca, "not-a-token", service=f'zz{i}",verdict="allow')
            requests.post(veil.url + "/", data="Action=ListUsers", headers={"X-Veil-Service": f"svc{i}"}, verify=str(ca), timeout=30)
        # Authenticated callers: unknown services, unknown and hostile actions.
        token = harness.mint(issuer, sub="metrics-agent")
        creds = session_credentials(veil, ca, token)
        for i in range(30):
            bearer(veil, ca, token, service=f"nosuch{i}")
            signed_query(veil, ca, creds, "iam", f"NoSuchAction{i}")
        signed_query(veil, ca, creds, "iam", 'ListUsers\nveil_fake_total{x="1"} 1\n')
        assert bearer(veil, ca, token).status_code == 200
        r = requests.get(veil.metrics_url, timeout=10)
        assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0"), r.headers
        text = r.text
        assert not re.search(r"^veil_fake", text, re.M), text
        services, actions = known_names()
        # The strict OpenMetrics parser: any unescaped or injected text fails it.
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = families["veil_requests"].samples
        series = {(s.labels["service"], s.labels["action"], s.labels["verdict"]) for s in samples}
        for service, action, verdict in series:
            assert service in services | {"unknown", "-"}, service
            assert action in actions | {"unknown", "-"}, action
            assert verdict in VERDICTS, verdict
        assert ("-", "-", "unauthenticated") in series
        # (An unknown service is refused before or after the token is
        # checked; either way it is `-` or `unknown`, never the name sent.)
        assert ("iam", "ListUsers", "allow") in series, series
        assert any((svc, act) == ("iam", "unknown") for svc, act, _ in series), series
        assert len(series) <= 12, series
        assert len(text.splitlines()) < 400, f"{len(text.splitlines())} lines of metrics"
    finally:
        veil.stop()

"""Hostile clients against the real gateway: each attack gets a clear error or
a closed connection, nothing reaches AWS, and the gateway keeps serving."""
import json
import socket
import ssl
import subprocess
import time

import requests

import harness


def tls_socket(stack, timeout=10):
    ctx = ssl.create_default_context(cafile=str(stack["ca"]))
    ctx.set_alpn_protocols(["http/1.1"])
    host, port = stack["veil"].url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def exchange(stack, data, timeout=10):
    """Send raw bytes; return everything the gateway answers before closing
    or going quiet (b"" when it just closes)."""
    s = tls_socket(stack, timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return out


def status_of(response):
    line = response.split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


def still_serving(stack, tmp_path):
    with harness.agent(stack, tmp_path) as s:
        assert s.client("sts").get_caller_identity()["Arn"]


def bearer_headers(stack, target, **claims):
    return {"Authorization": f"Bearer {harness.mint(stack['issuer'], **claims)}", "X-Veil-Service": "secretsmanager",
            "X-Veil-Region": "us-east-1", "X-Amz-Target": f"secretsmanager.{target}", "Content-Type": "application/x-amz-json-1.1"}


def test_oversize_headers_are_refused(stack, tmp_path):
    req = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    got = exchange(stack, req)
    assert got == b"" or status_of(got) == 431, got[:200]
    still_serving(stack, tmp_path)


def test_request_smuggling_is_refused(stack, tmp_path):
    """CL/TE conflicts and obs-fold: refused, and the smuggled call never runs."""
    name = f"smuggled-{time.time_ns()}"
    inner = json.dumps({"Name": name, "SecretString": "x"}).encode()
    smuggled = (b"POST / HTTP/1.1\r\nHost: localhost\r\nX-Amz-Target: secretsmanager.CreateSecret\r\n"
                b"Content-Length: " + str(len(inner)).encode() + b"\r\n\r\n" + inner)
    body = b"0\r\n\r\n" + smuggled
    attacks = [
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" + body,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ]
    for attack in attacks:
        got = exchange(stack, attack)
        codes = [int(l.split()[1]) for l in got.split(b"\r\n") if l.startswith(b"HTTP/1.1 ")]
        assert all(c >= 400 for c in codes), got[:300]
        assert len(codes) <= 1, f"two responses on one connection: {got[:300]}"
    names = [s["Name"] for s in harness.moto_client(stack["moto"], "secretsmanager").list_secrets()["SecretList"]]
    assert name not in names
    still_serving(stack, tmp_path)


def test_slowloris_connections_are_closed(stack):
    """A client that never finishes its headers is cut off (header timeout)."""
    s = tls_socket(stack, timeout=30)
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
    started = time.time()
    closed = False
    try:
        while time.time() - started < 25:
            s.sendall(b"X-Slow: 1\r\n")
            time.sleep(1)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout, OSError):
        closed = True
    finally:
        s.close()
    assert closed, "a connection that never finished its headers stayed open for 25 s"


def test_stalled_tls_handshakes_do_not_hold_up_other_clients(stack, tmp_path):
    """Connections that never send a ClientHello take a connection slot each
    until the header timeout (10 s here), never the listener: a real client
    arriving behind them is served while they are still open, and they are
    closed after the timeout."""
    host, port = stack["veil"].url.removeprefix("https://").rsplit(":", 1)
    stalled = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
    try:
        # Answered (refused: no credentials) within 8 s, while the accept
        # loop would still be waiting on the first stalled handshake.
        r = requests.get(stack["veil"].url + "/", verify=str(stack["ca"]), timeout=8)
        assert r.status_code == 403 and "<Error>" in r.text, r.text
        still_serving(stack, tmp_path)
        for raw in stalled:
            raw.settimeout(30)
            assert raw.recv(1) == b"", "a stalled handshake was not closed"
    finally:
        for raw in stalled:
            raw.close()


def test_invalid_json_bodies_get_an_aws_error_and_nothing_is_forwarded(stack, tmp_path):
    url = stack["veil"].url + "/"
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in [b"\xff\xfe not utf-8", b'{"SecretId": "unterminated', deep, b'{"Name": "' + b"\xc3\x28" + b'"}']:
        r = requests.post(url, data=body, headers=bearer_headers(stack, "CreateSecret"), verify=str(stack["ca"]), timeout=30)
        assert 400 <= r.status_code < 500, (body[:40], r.status_code, r.text[:200])
        assert r.json()["__type"], r.text
    still_serving(stack, tmp_path)


def test_oversize_body_is_refused(stack, tmp_path):
    body = b'{"Name": "x", "SecretString": "' + b"a" * (11 << 20) + b'"}'
    try:
        r = requests.post(stack["veil"].url + "/", data=body, headers=bearer_headers(stack, "CreateSecret"),
                          verify=str(stack["ca"]), timeout=60)
        assert r.status_code == 413, r.text[:200]
    except requests.exceptions.ConnectionError:
        pass  # closed while the client was still sending: also a refusal
    still_serving(stack, tmp_path)


def test_a_large_request_within_the_limit_is_answered_and_audited(stack, tmp_path):
    """A request just under the body limit whose parameters would make a
    record larger than the spool takes: the call is answered as AWS answers
    it and recorded, its parameters cut at the cap and marked, not refused
    as if the audit trail were down."""
    subject = f"large-{time.time_ns()}"
    tags = [{"Key": f"k{i}", "Value": "v" * 20} for i in range(180_000)]
    body = json.dumps({"SecretId": "no-such-secret", "Tags": tags}).encode()
    assert 4 << 20 < len(body) < 10 << 20
    r = requests.post(stack["veil"].url + "/", data=body, headers=bearer_headers(stack, "TagResource", sub=subject),
                      verify=str(stack["ca"]), timeout=60)
    assert r.json()["__type"].endswith("ResourceNotFoundException"), r.text[:300]  # moto answers 404
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(stack["dir"] / "veil.toml")],
                         capture_output=True, text=True, timeout=60)
    rec = next(r for r in map(json.loads, out.stdout.splitlines()) if r["subject"] == subject)
    assert rec["action"] == "TagResource" and rec["params_truncated"] == 1, {k: str(v)[:100] for k, v in rec.items()}
    assert len(rec["params"]) <= 65536 and rec["params"].startswith('{"SecretId":"no-such-secret"'), rec["params"][:100]
    still_serving(stack, tmp_path)


def test_tokens_with_huge_claims_are_refused(stack):
    # Over the gateway's token cap (16 KiB), under the header limit (64 KiB):
    # a larger head is refused by the listener, which may close before the
    # client has finished sending it.
    token = harness.mint(stack["issuer"], padding="x" * 30_000)
    assert 16 << 10 < len(token) < 60 << 10
    r = requests.post(stack["veil"].url + "/", data="{}", verify=str(stack["ca"]), timeout=30,
                      headers={**bearer_headers(stack, "ListSecrets"), "Authorization": f"Bearer {token}"})
    assert r.status_code in (400, 403, 431), r.text[:200]


def test_seeded_secrets_never_reach_the_logs(stack, tmp_path):
    """The gateway's own log (every line it wrote in this session's stack)
    never holds a secret value that passed through it."""
    secret = f"log-canary-{time.time_ns()}-Zq9"
    name = f"prod/search/canary-{time.time_ns()}"
    harness.moto_client(stack["moto"], "secretsmanager").create_secret(Name=name, SecretString=secret)
    with harness.agent(stack, tmp_path, groups=["search"]) as s:
        assert s.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"] == "***"
    r = requests.post(stack["veil"].url + "/", data=json.dumps({"SecretId": name, "x": secret}), verify=str(stack["ca"]), timeout=30,
                      headers=bearer_headers(stack, "GetSecretValue", groups=["search"]))
    assert r.status_code in (200, 400), r.text
    assert secret not in r.text
    assert secret not in stack["veil"].proc.output()


def h2_connection(stack):
    import h2.config
    import h2.connection
    ctx = ssl.create_default_context(cafile=str(stack["ca"]))
    ctx.set_alpn_protocols(["h2"])
    host, port = stack["veil"].url.removeprefix("https://").rsplit(":", 1)
    s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def h2_events(s, conn, seconds):
    """Read frames for up to `seconds`; returns the events, and whether the
    server closed the connection."""
    events, deadline = [], time.time() + seconds
    s.settimeout(0.5)
    while time.time() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except (ssl.SSLError, ConnectionResetError, OSError):
            return events, True
        if not data:
            return events, True
        events += conn.receive_data(data)
        out = conn.data_to_send()
        if out:
            try:
                s.sendall(out)
            except OSError:
                return events, True
    return events, False


def test_http2_rapid_reset_gets_goaway(stack, tmp_path):
    """CVE-2023-44487: streams opened and reset at once, in bulk, make the
    gateway end the connection instead of working for each."""
    import h2.events
    s, conn = h2_connection(stack)
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"), (":path", "/")]
    try:
        for i in range(500):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            conn.reset_stream(sid)
            try:
                s.sendall(conn.data_to_send())
            except OSError:
                break
        events, closed = h2_events(s, conn, 5)
    finally:
        s.close()
    assert closed or any(isinstance(e, h2.events.ConnectionTerminated) for e in events), events[:5]
    still_serving(stack, tmp_path)


def test_http2_stream_flood_is_capped(stack, tmp_path):
    """More concurrent streams than the gateway allows: the excess is refused
    (REFUSED_STREAM or GOAWAY), never queued without bound."""
    import h2.events
    s, conn = h2_connection(stack)
    h2_events(s, conn, 1)  # the server's SETTINGS (max concurrent streams)
    limit = conn.remote_settings.max_concurrent_streams
    assert limit <= 1024, f"the gateway allows {limit} concurrent streams"
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"), (":path", "/"),
               ("authorization", "Bearer x"), ("x-veil-service", "secretsmanager"), ("x-amz-target", "secretsmanager.ListSecrets")]
    # Lift the client library's own copy of the limit, as an attacker would.
    import h2.settings
    conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1 << 20
    conn.remote_settings.acknowledge()
    try:
        for i in range(limit + 50):
            conn.send_headers(conn.get_next_available_stream_id(), headers)  # no END_STREAM: each stays open
        s.sendall(conn.data_to_send())
        events, closed = h2_events(s, conn, 3)
    finally:
        s.close()
    import h2.errors
    refused = [e for e in events if isinstance(e, h2.events.StreamReset) and e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM]
    assert len(refused) >= 50 or closed, f"{len(refused)} streams refused of {limit + 50}"
    still_serving(stack, tmp_path)

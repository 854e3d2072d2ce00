"""When what Veil depends on fails: a slow or connection-dropping AWS, an
OIDC issuer that goes down. Each failure gets a clear AWS-shaped error within
a bounded time, and the gateway keeps serving once the dependency is back."""
import base64
import json
import socket
import threading
import time

import requests

import harness


def bearer(issuer, target="ListSecrets", **claims):
    return {"Authorization": f"Bearer {harness.mint(issuer, **claims)}", "X-Veil-Service": "secretsmanager",
            "X-Veil-Region": "us-east-1", "X-Amz-Target": f"secretsmanager.{target}", "Content-Type": "application/x-amz-json-1.1"}


class BadUpstream:
    """A TCP upstream that reads a request, then sleeps or hangs up."""

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)
            except OSError:
                return
            self.requests += 1
            if self.mode == "slow":
                time.sleep(8)
            # "drop": close without a word.

    def close(self):
        self.sock.close()


def gateway_with_upstream(tmp_path, issuer, upstream_url):
    cfg, ca = harness.veil_config(tmp_path, issuer, upstream_url)
    text = cfg.read_text().replace(f'endpoint = "{upstream_url}"', f'endpoint = "{upstream_url}"\ntimeout_secs = 2')
    cfg.write_text(text)
    return harness.Veil(cfg), ca


def test_slow_and_dropping_upstreams_get_aws_errors_in_bounded_time(tmp_path, issuer):
    for mode, status, code in [("slow", 504, "RequestTimeout"), ("drop", 502, "ServiceUnavailable")]:
        upstream = BadUpstream(mode)
        d = tmp_path / mode
        d.mkdir()
        veil, ca = gateway_with_upstream(d, issuer, upstream.url)
        try:
            started = time.time()
            r = requests.post(veil.url + "/", data="{}", headers=bearer(issuer), verify=str(ca), timeout=30)
            elapsed = time.time() - started
            assert r.status_code == status, (mode, r.status_code, r.text)
            assert r.json()["__type"].endswith(code), r.text
            assert elapsed < 8, f"{mode}: answered after {elapsed:.1f} s, beyond the 2 s upstream timeout"
            assert upstream.requests >= 1
            # Calls the policies refuse never wait for the broken upstream.
            r = requests.post(veil.url + "/", data="{}", headers={**bearer(issuer), "X-Veil-Service": "cloudtrail",
                              "X-Amz-Target": "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.StopLogging"},
                              verify=str(ca), timeout=30)
            assert r.status_code == 403, r.text
        finally:
            veil.stop()
            upstream.close()


def test_issuer_outage_keeps_cached_keys_and_fails_closed_on_new_ones(tmp_path, moto):
    proc, issuer = harness.start_issuer()
    try:
        cfg, ca = harness.veil_config(tmp_path, issuer, moto)
        veil = harness.Veil(cfg)
        try:
            first, later = bearer(issuer), bearer(issuer)
            r = requests.post(veil.url + "/", data="{}", headers=first, verify=str(ca), timeout=30)
            assert r.status_code == 200, r.text
            proc.stop()
            # The keys fetched before the outage keep validating tokens.
            r = requests.post(veil.url + "/", data="{}", headers=later, verify=str(ca), timeout=30)
            assert r.status_code == 200, r.text
            # A key id the gateway has never seen needs the issuer: refused,
            # promptly, not hung on the dead issuer.
            token = later["Authorization"].split()[1]
            head = token.split(".")[0]
            h = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
            h["kid"] = "never-published"
            forged = ".".join([base64.urlsafe_b64encode(json.dumps(h).encode()).decode().rstrip("=")] + token.split(".")[1:])
            started = time.time()
            r = requests.post(veil.url + "/", data="{}", headers={**later, "Authorization": f"Bearer {forged}"}, verify=str(ca), timeout=60)
            assert r.status_code == 403 and r.json()["__type"] == "InvalidIdentityToken", r.text
            assert time.time() - started < 30
        finally:
            veil.stop()
    finally:
        proc.stop()

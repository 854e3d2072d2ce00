"""The listener: HTTP/2 over TLS (ALPN), graceful drain on SIGTERM, JWKS rotation."""
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

import harness


def bearer_headers(token, target="secretsmanager.ListSecrets"):
    return {"Authorization": f"Bearer {token}", "X-Veil-Service": "secretsmanager", "X-Veil-Region": "us-east-1",
            "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"}


def test_http2_over_tls(stack):
    token = harness.mint(stack["issuer"])
    args = ["curl", "-sS", "--http2", "--cacert", str(stack["ca"]), "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
            "-X", "POST", "--data", "{}"]
    for k, v in bearer_headers(token).items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args + [stack["veil"].url + "/"], capture_output=True, text=True, timeout=30)
    assert out.stdout == "2 200", (out.stdout, out.stderr)


class SlowUpstream(BaseHTTPRequestHandler):
    delay = 2.0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.delay)
        body = json.dumps({"SecretList": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/x-amz-json-1.1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_sigterm_drains_in_flight_calls(tmp_path, issuer):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        cfg, ca = harness.veil_config(tmp_path, issuer, f"http://127.0.0.1:{upstream.server_address[1]}")
        veil = harness.Veil(cfg)
        token = harness.mint(issuer)
        result = {}

        def call():
            r = requests.post(veil.url + "/", data="{}", headers=bearer_headers(token), verify=str(ca), timeout=30)
            result["status"] = r.status_code
            result["body"] = r.json()

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.8)  # the call is now waiting on the slow upstream
        rc = veil.stop()
        t.join(30)
        assert result.get("status") == 200, result
        assert result["body"] == {"SecretList": []}
        assert rc == 0, veil.proc.output()
        assert "draining" in veil.proc.output()
    finally:
        upstream.shutdown()

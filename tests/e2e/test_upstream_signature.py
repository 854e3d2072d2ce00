"""Veil signs what it forwards as the AWS SDKs do. The emulator does not check
signatures, so here an upstream in front of it does: it recomputes every
request's SigV4 signature with botocore's signer (a third implementation,
beside Veil's own and the Rust SDK's its unit test compares with) and passes
the request on only when it matches. Real clients' calls of each protocol
family, with keys and prefixes that need encoding, all get through."""
import http.server
import re
import threading

import boto3
import botocore.auth
import botocore.credentials
import requests
from botocore.awsrequest import AWSRequest

import harness

AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")


class CheckingUpstream:
    """Checks each request's signature against Veil's upstream credential,
    then relays it to `moto`; `checked` counts matches, `failures` lists the
    rest (method, path, reason)."""

    def __init__(self, moto):
        self.moto, self.checked, self.failures = moto, 0, []
        creds = botocore.credentials.Credentials(harness.UPSTREAM_ENV["AWS_ACCESS_KEY_ID"], harness.UPSTREAM_ENV["AWS_SECRET_ACCESS_KEY"])
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def body(self):
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            # Trailers, if any, up to the empty line.
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length", "0")))

            def handle_one(self):
                body = self.body()
                reason = outer.mismatch(self.command, self.path, self.headers, body, creds)
                if reason:
                    outer.failures.append((self.command, self.path, reason))
                    self.reply(403, {"content-type": "text/plain"}, f"SignatureDoesNotMatch: {reason}".encode())
                    return
                outer.checked += 1
                sent = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding", "content-length")}
                r = requests.request(self.command, outer.moto + self.path, headers=sent, data=body, timeout=30, allow_redirects=False)
                self.reply(r.status_code, {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "etag", "x-amzn-requestid", "last-modified")}, r.content)

            def reply(self, status, headers, payload):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def mismatch(method, path, headers, body, creds):
        """Why the request's signature is not botocore's, or None."""
        m = AUTH.fullmatch(headers.get("authorization", ""))
        if not m:
            return f"Authorization {headers.get('authorization')!r} is not a SigV4 header signature"
        akid, date, region, service, signed, signature = m.groups()
        if akid != creds.access_key:
            return f"signed with access key {akid}"
        names = signed.split(";")
        if names != sorted(names) or "host" not in names or "x-amz-date" not in names:
            return f"SignedHeaders {signed} are not sorted or miss host / x-amz-date"
        signed_headers = {}
        for name in names:
            values = headers.get_all(name)
            if not values:
                return f"signed header {name} was not sent"
            signed_headers[name] = ",".join(values)
        req = AWSRequest(method=method, url=f"http://{headers['host']}{path}", headers=signed_headers, data=body)
        req.context["timestamp"] = headers["x-amz-date"]
        if not headers["x-amz-date"].startswith(date):
            return "x-amz-date is not the credential scope's day"
        auth = (botocore.auth.S3SigV4Auth if service == "s3" else botocore.auth.SigV4Auth)(creds, service, region)
        canonical = auth.canonical_request(req)
        expected = auth.signature(auth.string_to_sign(req, canonical), req)
        return None if expected == signature else f"botocore computes {expected} over:\n{canonical}"

    def stop(self):
        self.server.shutdown()


def test_every_forwarded_call_carries_the_signature_aws_computes(issuer, moto, tmp_path):
    upstream = CheckingUpstream(moto)
    cfg, ca = harness.veil_config(tmp_path, issuer, upstream.url)
    veil = harness.Veil(cfg)
    try:
        bucket = "sig-check"
        harness.moto_client(moto, "s3").create_bucket(Bucket=bucket)
        harness.moto_client(moto, "secretsmanager").create_secret(Name="prod/payments/sig", SecretString="value")
        keys = ["plain.txt", "dir/a b+c=d&e~f(g)!.txt", "caf\u00e9/\u2713 50%.json"]
        # The payments group sees its own secrets unmasked.
        with harness.agent_session(veil, ca, harness.mint(issuer, groups=["payments"]), tmp_path) as s:
            # JSON protocol (POST, body hashed), query protocol (form body).
            assert s.client("secretsmanager").get_secret_value(SecretId="prod/payments/sig")["SecretString"] == "value"
            s.client("iam").list_users()
            s3 = s.client("s3")
            for key in keys:
                s3.put_object(Bucket=bucket, Key=key, Body=b"body of " + key.encode())
                assert s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-6")["Body"].read() == b"body of"
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir/a b+", Delimiter="/")
            assert [o["Key"] for o in listed.get("Contents", [])] == [keys[1]]
        assert upstream.failures == [], upstream.failures
        assert upstream.checked >= 2 + 2 * len(keys) + 1, upstream.checked
    finally:
        veil.stop()
        upstream.stop()

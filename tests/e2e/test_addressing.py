"""Addresses SDKs use by default: SQS queue URLs that point the next call
at Veil, and S3 virtual-hosted buckets (`<bucket>.<Veil's host name>`)."""
import contextlib
import json
import socket
import subprocess
import time

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import harness

NAME = harness.VIRTUAL_HOST


@pytest.fixture(scope="module")
def named(tmp_path_factory, issuer, moto):
    """A gateway that knows its DNS name (listener.host_names)."""
    d = tmp_path_factory.mktemp("named")
    cfg, ca = harness.veil_config(d, issuer, moto)
    cfg.write_text(cfg.read_text().replace("shutdown_drain_secs = 5", f'shutdown_drain_secs = 5\nhost_names = ["{NAME}"]', 1))
    veil = harness.Veil(cfg)
    yield {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto, "cfg": cfg, "port": veil.url.rsplit(":", 1)[1]}
    veil.stop()


@contextlib.contextmanager
def resolving(name):
    """`name` and every name under it resolve to 127.0.0.1 in this process."""
    real = socket.getaddrinfo

    def fake(host, *a, **k):
        if isinstance(host, str) and (host == name or host.endswith("." + name)):
            host = "127.0.0.1"
        return real(host, *a, **k)
    socket.getaddrinfo = fake
    try:
        yield
    finally:
        socket.getaddrinfo = real


def records(cfg):
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_queue_urls_lead_back_through_veil(named, tmp_path):
    veil, moto = named["veil"], named["moto"]
    with harness.agent(named, tmp_path, groups=["search"]) as s:
        sqs = s.client("sqs")
        name = f"q{time.time_ns()}"
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        assert url == f"{veil.url}/123456789012/{name}", url
        assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url
        assert url in sqs.list_queues(QueueNamePrefix=name)["QueueUrls"]
        sqs.send_message(QueueUrl=url, MessageBody="password: hunter2-secret-value")
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"][0]
        assert "hunter2" not in got["Body"], got
        # The upstream's own URL is accepted too; any other host is refused before AWS.
        upstream_url = harness.moto_client(moto, "sqs").get_queue_url(QueueName=name)["QueueUrl"]
        sqs.send_message(QueueUrl=upstream_url, MessageBody="plain")
        with pytest.raises(ClientError) as e:
            sqs.send_message(QueueUrl=f"https://evil.example/123456789012/{name}", MessageBody="x")
        assert "neither this gateway" in str(e.value)
    # AWS's URLs in the audit trail, Veil's in the caller's hands.
    mine = [r for r in records(named["cfg"]) if r.get("service") == "sqs" and name in r.get("params", "") + r.get("response", "")]
    assert mine and all(veil.url not in r["params"] + r["response"] for r in mine), mine[:2]
    assert harness.moto_client(moto, "sqs").get_queue_attributes(QueueUrl=upstream_url, AttributeNames=["All"])["Attributes"]["ApproximateNumberOfMessages"] == "1"


def test_s3_virtual_hosted_buckets(named, tmp_path):
    veil, moto, ca = named["veil"], named["moto"], named["ca"]
    bucket = f"vh{time.time_ns()}"
    harness.moto_client(moto, "s3").create_bucket(Bucket=bucket)
    body = bytes(range(256)) * 4096
    with resolving(NAME), harness.agent(named, tmp_path) as s:
        s3 = s.client("s3", endpoint_url=f"https://{NAME}:{named['port']}", config=BotoConfig(s3={"addressing_style": "virtual"}))
        s3.put_object(Bucket=bucket, Key="dir//a.bin", Body=body)
        assert s3.get_object(Bucket=bucket, Key="dir//a.bin")["Body"].read() == body
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["dir//a.bin"]
        # Presigned, in both styles.
        for style in ["virtual", "path"]:
            c = s.client("s3", endpoint_url=f"https://{NAME}:{named['port']}", config=BotoConfig(signature_version="s3v4", s3={"addressing_style": style}))
            url = c.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "dir//a.bin"}, ExpiresIn=300)
            assert (f"{bucket}.{NAME}" in url) == (style == "virtual"), url
            r = requests.get(url, verify=str(ca), timeout=30)
            assert r.status_code == 200 and r.content == body, (style, r.status_code, r.text[:200])
        # Bad hosts: a bucket that is not a DNS label, a name Veil does not go by.
        for host in [f"Bad_Bucket.{NAME}", "bucket.elsewhere.test"]:
            r = requests.get(f"https://127.0.0.1:{named['port']}/key", headers={"Host": f"{host}:{named['port']}", "Authorization": "Bearer x",
                                                                               "X-Veil-Service": "s3", "X-Veil-Region": "us-east-1"},
                             verify=False, timeout=30)
            assert r.status_code == 400, (host, r.status_code, r.text[:200])
    assert harness.moto_client(moto, "s3").get_object(Bucket=bucket, Key="dir//a.bin")["Body"].read() == body

"""A service that speaks several protocols (CloudWatch: Smithy RPC v2 CBOR,
JSON and query) is read in the one each call comes in: botocore and the AWS
CLI send JSON, older SDKs query. A call whose body AWS could read in another
protocol than Veil did is refused before it goes upstream. REST calls are
read as AWS reads them too: their bodies whatever Content-Type they name,
their query keys under the SDKs' parameter names."""
import datetime
import json
import subprocess
import time
import xml.etree.ElementTree as ET

import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.exceptions
import requests

import harness
from test_data_path import session_credentials


def signed(creds, url, body, headers):
    """A CloudWatch request signed with botocore's SigV4, sent as given."""
    req = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
    botocore.auth.SigV4Auth(creds, "monitoring", "us-east-1").add_auth(req)
    return req.prepare()


def send(stack, req):
    return requests.post(req.url, data=req.body, headers=dict(req.headers), verify=str(stack["ca"]), timeout=30)


def alarm_names(stack):
    cw = harness.moto_client(stack["moto"], "cloudwatch")
    return {a["AlarmName"] for a in cw.describe_alarms()["MetricAlarms"]}


def test_cloudwatch_through_boto3_and_the_cli(stack, tmp_path):
    ns = f"Veil/E2E{time.time_ns()}"
    alarm = f"alarm-{time.time_ns()}"
    with harness.agent(stack, tmp_path) as s:
        cw = s.client("cloudwatch")
        cw.put_metric_data(Namespace=ns, MetricData=[{"MetricName": "Calls", "Value": 3.0}])
        assert [m["MetricName"] for m in cw.list_metrics(Namespace=ns)["Metrics"]] == ["Calls"]
        cw.put_metric_alarm(AlarmName=alarm, MetricName="Calls", Namespace=ns, Statistic="Sum", Period=60,
                            EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
        assert alarm in {a["AlarmName"] for a in cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]}
        now = datetime.datetime.now(datetime.timezone.utc)
        stats = cw.get_metric_statistics(Namespace=ns, MetricName="Calls", StartTime=now - datetime.timedelta(hours=1),
                                         EndTime=now + datetime.timedelta(minutes=5), Period=60, Statistics=["Sum"])
        assert [p["Sum"] for p in stats["Datapoints"]] == [3.0]
    token_file = tmp_path / "token"
    token_file.write_text(harness.mint(stack["issuer"], sub="cli-agent", groups=["search"]))
    out = harness.aws_cli(harness.agent_env(stack["veil"], stack["ca"], token_file), "cloudwatch", "list-metrics", "--namespace", ns)
    assert out.returncode == 0, out.stderr
    assert [m["MetricName"] for m in json.loads(out.stdout)["Metrics"]] == ["Calls"]


def test_a_large_put_metric_data_is_compressed_by_botocore_and_read_decoded(stack, tmp_path):
    ns = f"Veil/Gzip{time.time_ns()}"
    data = [{"MetricName": f"m{i:03d}", "Value": float(i), "Dimensions": [{"Name": "Host", "Value": f"host-{i:03d}" * 4}]}
            for i in range(150)]
    sent = []
    with harness.agent(stack, tmp_path) as s:
        cw = s.client("cloudwatch")
        cw.meta.events.register("before-send.cloudwatch.PutMetricData",
                                lambda request, **_: sent.append(request.headers.get("Content-Encoding")))
        cw.put_metric_data(Namespace=ns, MetricData=data)
        assert sent == [b"gzip"] or sent == ["gzip"], f"botocore compressed the call: {sent}"
        names = {m["MetricName"] for p in cw.get_paginator("list_metrics").paginate(Namespace=ns) for m in p["Metrics"]}
    assert names == {d["MetricName"] for d in data}
    # By hand: a gzip body is read decoded, and goes upstream decoded.
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    import gzip
    body = gzip.compress(json.dumps({"Namespace": ns, "MetricData": [{"MetricName": "late", "Value": 1.0}]}).encode())
    r = send(stack, signed(creds, stack["veil"].url + "/", body, {
        "X-Amz-Target": "GraniteServiceVersion20100801.PutMetricData", "Content-Type": "application/x-amz-json-1.0",
        "Content-Encoding": "gzip"}))
    assert r.status_code == 200, r.text
    cw = harness.moto_client(stack["moto"], "cloudwatch")
    assert "late" in {m["MetricName"] for m in cw.list_metrics(Namespace=ns, MetricName="late")["Metrics"]}
    # A body that is not gzip, or another coding, is refused before AWS.
    for coding, raw in [("gzip", b"{not gzip"), ("br", b"{}")]:
        r = send(stack, signed(creds, stack["veil"].url + "/", raw, {
            "X-Amz-Target": "GraniteServiceVersion20100801.PutMetricData", "Content-Type": "application/x-amz-json-1.0",
            "Content-Encoding": coding}))
        assert r.status_code == 400 and r.json()["__type"] == "InvalidRequest", r.text


def test_cloudwatch_in_the_query_protocol(stack):
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    ns = f"Veil/Query{time.time_ns()}"
    harness.moto_client(stack["moto"], "cloudwatch").put_metric_data(Namespace=ns, MetricData=[{"MetricName": "Hits", "Value": 1.0}])
    url = stack["veil"].url + "/"
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    r = send(stack, signed(creds, url, f"Action=ListMetrics&Version=2010-08-01&Namespace={ns}", form))
    assert r.status_code == 200, r.text
    names = [e.text for e in ET.fromstring(r.text).iter() if e.tag.endswith("MetricName")]
    assert names == ["Hits"], r.text
    # Errors come back in the protocol of the call: query's XML.
    r = send(stack, signed(creds, url, f"Action=ListMetrics&Version=2010-08-01&Namespace={ns}&Namespace=other", form))
    assert r.status_code == 400 and "<ErrorResponse" in r.text and "<Code>InvalidRequest</Code>" in r.text, r.text


def test_a_target_call_whose_body_reads_as_another_form_is_refused(stack):
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    alarm = f"keep-{time.time_ns()}"
    harness.moto_client(stack["moto"], "cloudwatch").put_metric_alarm(
        AlarmName=alarm, MetricName="Calls", Namespace="Veil/Keep", Statistic="Sum", Period=60,
        EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
    url = stack["veil"].url + "/"
    # Valid JSON to Veil (a ListMetrics), a DeleteAlarms to a form reader.
    body = json.dumps({"Namespace": f"&Action=DeleteAlarms&Version=2010-08-01&AlarmNames.member.1={alarm}&"})
    target = {"X-Amz-Target": "GraniteServiceVersion20100801.ListMetrics"}
    for content_type in ["application/x-www-form-urlencoded", "text/plain"]:
        r = send(stack, signed(creds, url, body, {**target, "Content-Type": content_type}))
        assert r.status_code == 400, r.text
        assert r.json()["__type"] == "InvalidRequest" and "Content-Type" in r.json()["message"], r.text
    assert alarm in alarm_names(stack), "the hidden DeleteAlarms never reached AWS"
    # Said plainly, or with no type at all, the call is a ListMetrics, and
    # goes upstream as JSON: AWS reads what Veil read.
    for extra in [{"Content-Type": "application/x-amz-json-1.0"}, {}]:
        r = send(stack, signed(creds, url, body, {**target, **extra}))
        assert r.status_code == 200 and r.json().get("Metrics", []) == [], r.text
        assert alarm in alarm_names(stack), extra


def test_cbor_calls_are_refused_with_the_reason(stack, tmp_path):
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    url = stack["veil"].url + "/service/GraniteServiceVersion20100801/operation/ListMetrics"
    r = send(stack, signed(creds, url, b"\xa0", {"smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor",
                                                "Accept": "application/cbor"}))
    assert r.status_code == 400, r.text
    assert "CBOR" in r.text, r.text
    # Where the service does not speak CBOR it is only a media type: an S3 object's.
    bucket = f"cbor-{time.time_ns()}"
    harness.moto_client(stack["moto"], "s3").create_bucket(Bucket=bucket)
    with harness.agent(stack, tmp_path) as s:
        s3 = s.client("s3")
        s3.put_object(Bucket=bucket, Key="data.cbor", Body=b"\xa1\x61\x61\x01", ContentType="application/cbor")
        got = s3.get_object(Bucket=bucket, Key="data.cbor")
        assert (got["ContentType"], got["Body"].read()) == ("application/cbor", b"\xa1\x61\x61\x01")


def test_a_rest_json_body_is_shown_to_policies_whatever_its_content_type(tmp_path, issuer, moto):
    """AWS reads a REST-JSON body as the operation's JSON input whatever
    Content-Type it names; so do policies. Here risky-actions holds any
    UpdateFunctionConfiguration whose parameters open a network to the world."""
    config = harness.POLICY_CONFIG + '\n[policies.config.risky-actions]\ningress_actions = ["lambda:UpdateFunctionConfiguration"]\n'
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, "[approvals]\nwait_secs = 1\n", policy_config=config)
    veil = harness.Veil(cfg)
    try:
        stack = {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto}
        fn = harness.create_function(moto)
        creds = session_credentials(stack, harness.mint(issuer))
        url = f"{veil.url}/2015-03-31/functions/{fn}/configuration"
        body = json.dumps({"Description": "0.0.0.0/0", "Timeout": 42})
        for extra in [{"Content-Type": "text/plain"}, {}, {"Content-Type": "application/json"}]:
            req = botocore.awsrequest.AWSRequest(method="PUT", url=url, data=body, headers=extra)
            botocore.auth.SigV4Auth(creds, "lambda", "us-east-1").add_auth(req)
            p = req.prepare()
            r = requests.put(p.url, data=p.body, headers=dict(p.headers), verify=str(ca), timeout=30)
            assert r.status_code == 403 and r.json()["__type"] == "ApprovalRequired", (extra, r.text)
            assert "0.0.0.0/0" in r.json()["message"], r.text
        got = harness.moto_client(moto, "lambda").get_function_configuration(FunctionName=fn)
        assert got["Timeout"] != 42 and got.get("Description") != "0.0.0.0/0", "no held call reached AWS"
    finally:
        veil.stop()


def test_rest_xml_bodies_are_shown_to_policies_however_they_are_signed(tmp_path, issuer, moto):
    """An S3 body that is input, not data (DeleteObjects' keys, a bucket's
    tags) is read and shown to policies, also when the caller signs it
    UNSIGNED-PAYLOAD, which lets only an object's bytes stream past them.
    Here risky-actions holds any such call whose parameters name a network
    open to the world."""
    config = (harness.POLICY_CONFIG + '\n[policies.config.risky-actions]\n'
              'ingress_actions = ["s3:DeleteObjects", "s3:PutBucketTagging"]\n')
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, "[approvals]\nwait_secs = 1\n", policy_config=config)
    veil = harness.Veil(cfg)
    try:
        stack = {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto}
        bucket = f"xml-{time.time_ns()}"
        direct = harness.moto_client(moto, "s3")
        direct.create_bucket(Bucket=bucket)
        for key in ["0.0.0.0/0", "keep", "plain"]:
            direct.put_object(Bucket=bucket, Key=key, Body=b"x")
        unsigned = botocore.config.Config(s3={"payload_signing_enabled": False})
        with harness.agent(stack, tmp_path) as s:
            for client in [s.client("s3"), s.client("s3", config=unsigned)]:
                try:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "keep"}, {"Key": "0.0.0.0/0"}]})
                    raise AssertionError("a DeleteObjects naming an open network went through")
                except botocore.exceptions.ClientError as e:
                    assert e.response["Error"]["Code"] == "ApprovalRequired", e.response
                    assert "0.0.0.0/0" in e.response["Error"]["Message"], e.response
                try:
                    client.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "allow", "Value": "0.0.0.0/0"}]})
                    raise AssertionError("a PutBucketTagging naming an open network went through")
                except botocore.exceptions.ClientError as e:
                    assert e.response["Error"]["Code"] == "ApprovalRequired", e.response
            keys = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]}
            assert {"0.0.0.0/0", "keep"} <= keys, "no held call reached AWS"
            assert "TagSet" not in _tagging(direct, bucket)
            # What no rule holds goes through, read the same way.
            s.client("s3", config=unsigned).delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "plain"}]})
            assert "plain" not in {o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]}
        # An input body framed aws-chunked with a trailer is not read, so refused.
        creds = session_credentials(stack, harness.mint(issuer))
        body = b"<Tagging><TagSet><Tag><Key>a</Key><Value>0.0.0.0/0</Value></Tag></TagSet></Tagging>"
        chunked = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n" % (len(body), body)
        req = botocore.awsrequest.AWSRequest(method="PUT", url=f"{veil.url}/{bucket}?tagging", data=chunked, headers={
            "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(len(body)), "X-Amz-Trailer": "x-amz-checksum-crc32"})
        botocore.auth.SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
        p = req.prepare()
        r = requests.put(p.url, data=p.body, headers=dict(p.headers), verify=str(ca), timeout=30)
        assert r.status_code == 400 and "aws-chunked" in r.text, r.text
        assert "TagSet" not in _tagging(direct, bucket)
    finally:
        veil.stop()


def _tagging(client, bucket):
    try:
        return client.get_bucket_tagging(Bucket=bucket)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchTagSet", e.response
        return {}


def test_rest_query_keys_are_shown_under_the_sdks_parameter_names(stack, tmp_path):
    """`?prefix=` is ListObjectsV2's `Prefix`: policies, and the audit
    record's parameters, name it as the SDKs and the API reference do."""
    bucket = f"names-{time.time_ns()}"
    harness.moto_client(stack["moto"], "s3").create_bucket(Bucket=bucket)
    with harness.agent(stack, tmp_path, sub="naming-agent") as s:
        assert s.client("s3").list_objects_v2(Bucket=bucket, Prefix="team-a/", MaxKeys=7)["KeyCount"] == 0
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(stack["dir"] / "veil.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rec = next(r for r in map(json.loads, out.stdout.splitlines())
               if r["subject"] == "naming-agent" and r["action"] == "ListObjectsV2")
    params = json.loads(rec["params"])
    assert {"Bucket", "Prefix", "MaxKeys"} <= set(params) and not {"prefix", "max-keys"} & set(params), params


def test_a_copy_source_is_shown_decoded_as_s3_reads_it(stack, tmp_path):
    """CopyObject's source is a URL-encoded header; S3 decodes it, so a rule
    on key prefixes must see it decoded: `s%65cret/x` is `secret/x`."""
    bucket = f"copy-{time.time_ns()}"
    direct = harness.moto_client(stack["moto"], "s3")
    direct.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="secret/a b", Body=b"payload")
    with harness.agent(stack, tmp_path, sub="copy-agent") as s:
        s3 = s.client("s3")
        s3.copy_object(Bucket=bucket, Key="one", CopySource={"Bucket": bucket, "Key": "secret/a b"})

        def encode_by_hand(request, **kwargs):
            request.headers.replace_header("x-amz-copy-source", f"/{bucket}/s%65cret/a%20b")
        s3.meta.events.register("before-sign.s3.CopyObject", encode_by_hand)
        s3.copy_object(Bucket=bucket, Key="two", CopySource=f"{bucket}/secret/a b")
    assert direct.get_object(Bucket=bucket, Key="two")["Body"].read() == b"payload"
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(stack["dir"] / "veil.toml")],
                         capture_output=True, text=True, timeout=60)
    sources = [json.loads(r["params"])["CopySource"] for r in map(json.loads, out.stdout.splitlines())
               if r["subject"] == "copy-agent" and r["action"] == "CopyObject"]
    assert sources == [{"Bucket": bucket, "Key": "secret/a b"}] * 2, sources

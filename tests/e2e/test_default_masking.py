"""aws-sensitive, loaded by default: secrets in responses are masked for
every caller without an exception, whatever the service or protocol."""
import hashlib
import json
import time

import harness


def test_sts_assume_role_credentials_are_masked(stack, tmp_path):
    iam = harness.moto_client(stack["moto"], "iam")
    role = iam.create_role(RoleName=f"reader{time.time_ns()}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    with harness.agent(stack, tmp_path) as s:
        creds = s.client("sts").assume_role(RoleArn=role, RoleSessionName="agent-x")["Credentials"]
    assert creds["SecretAccessKey"] == "***"
    assert creds["SessionToken"] == "***"
    assert creds["AccessKeyId"].startswith("hmac-sha256:")


def test_lambda_environment_values_are_masked(stack, tmp_path):
    name = harness.create_function(stack["moto"], {"DB_PASSWORD": "hunter2-hunter2", "LOG_LEVEL": "debug"})
    with harness.agent(stack, tmp_path) as s:
        lam = s.client("lambda")
        env = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
        assert env["DB_PASSWORD"] == "***"
        env = lam.get_function(FunctionName=name)["Configuration"]["Environment"]["Variables"]
        assert env["DB_PASSWORD"] == "***"


def test_ssm_secure_strings_masked_plain_strings_kept(stack, tmp_path):
    ssm = harness.moto_client(stack["moto"], "ssm")
    # Owned by the caller's team (secrets-by-team lets it through); aws-sensitive still masks SecureStrings.
    base = f"/search/app{time.time_ns()}"
    ssm.put_parameter(Name=f"{base}/db-password", Value="pa55-w0rd-value", Type="SecureString")
    ssm.put_parameter(Name=f"{base}/log-level", Value="debug", Type="String")
    with harness.agent(stack, tmp_path, groups=["search"]) as s:
        params = s.client("ssm").get_parameters_by_path(Path=base, WithDecryption=True)["Parameters"]
    values = {p["Name"]: p["Value"] for p in params}
    assert values[f"{base}/db-password"] == "***"
    assert values[f"{base}/log-level"] == "debug"


def test_detectors_catch_secrets_in_unexpected_places(stack, tmp_path):
    ec2 = harness.moto_client(stack["moto"], "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "deploy-token", "Value": token}, {"Key": "team", "Value": "search"}])
    with harness.agent(stack, tmp_path) as s:
        vpcs = s.client("ec2").describe_vpcs(VpcIds=[vpc])["Vpcs"]
    tags = {t["Key"]: t["Value"] for t in vpcs[0]["Tags"]}
    assert tags["deploy-token"] == "***"
    assert tags["team"] == "search"
    sm = harness.moto_client(stack["moto"], "secretsmanager")
    name = f"app/config-{time.time_ns()}"
    sm.create_secret(Name=name, SecretString="x", Description="db url postgres://app:Sup3rS3cret@db:5432/app")
    with harness.agent(stack, tmp_path) as s:
        d = s.client("secretsmanager").describe_secret(SecretId=name)
    assert d["Description"] == "***"
    assert d["Name"] == name


def test_secrets_in_dynamodb_items_are_masked(stack, tmp_path):
    # The attribute's name says "password"; its value sits under "S". The
    # detectors judge it under the attribute's name.
    ddb = harness.moto_client(stack["moto"], "dynamodb")
    table = f"users{time.time_ns()}"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"id": {"S": "u1"}, "password": {"S": "pQ7vK2mZx9LwR4tB"}, "city": {"S": "Lisbon"},
                                        "notes": {"S": "key -----BEGIN RSA PRIVATE KEY-----\nMIIEow"}})
    with harness.agent(stack, tmp_path) as s:
        item = s.client("dynamodb").get_item(TableName=table, Key={"id": {"S": "u1"}})["Item"]
    assert item["password"]["S"] == "***"
    assert item["notes"]["S"] == "***"
    assert item["city"]["S"] == "Lisbon"
    assert item["id"]["S"] == "u1"


def test_secrets_assigned_inside_message_text_are_masked(stack, tmp_path):
    # A queue message is free text to AWS: a JSON document or a YAML config
    # in it holds secrets by name. Plain messages are kept.
    sqs = harness.moto_client(stack["moto"], "sqs")
    url = sqs.create_queue(QueueName=f"jobs{time.time_ns()}")["QueueUrl"]
    bodies = ['{"client_id": "etl", "client_secret": "9fK2xQ7vL3mN8pR4tW6yZ1bC5dE0gH2j"}',
              "db:\n  user: app\n  password: hunter2\n",
              "nightly export finished: 42 rows, password: must rotate"]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    with harness.agent(stack, tmp_path) as s:
        client = s.client("sqs")
        got = client.receive_message(QueueUrl=client.get_queue_url(QueueName=url.rsplit("/", 1)[1])["QueueUrl"],
                                     MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in got) == sorted(["***", "***", bodies[2]])


def sqs_attributes_md5(attrs):
    """MD5OfMessageAttributes as the SQS documentation specifies it."""
    def field(b):
        return len(b).to_bytes(4, "big") + b
    out = b""
    for name in sorted(attrs):
        a = attrs[name]
        out += field(name.encode()) + field(a["DataType"].encode())
        out += b"\x01" + field(a["StringValue"].encode()) if "StringValue" in a else b"\x02" + field(a["BinaryValue"])
    return hashlib.md5(out).hexdigest()


def test_masked_queue_messages_carry_digests_of_what_the_agent_gets(stack, tmp_path):
    # SDKs that check MD5OfBody / MD5OfMessageAttributes (Java, JS v3, Go)
    # would refuse a masked message whose digests are AWS's originals.
    sqs = harness.moto_client(stack["moto"], "sqs")
    url = sqs.create_queue(QueueName=f"digests{time.time_ns()}")["QueueUrl"]
    attrs = {"dsn": {"DataType": "String", "StringValue": "postgres://app:hunter2@db.internal:5432/app"},
             "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"},
             "team": {"DataType": "String.team", "StringValue": "search"}}
    sent = {"masked": sqs.send_message(QueueUrl=url, MessageBody="db:\n  password: hunter2\n", MessageAttributes=attrs),
            "plain": sqs.send_message(QueueUrl=url, MessageBody="nightly export finished",
                                      MessageAttributes={"team": attrs["team"]})}
    with harness.agent(stack, tmp_path) as s:
        client = s.client("sqs")
        got = client.receive_message(QueueUrl=client.get_queue_url(QueueName=url.rsplit("/", 1)[1])["QueueUrl"],
                                     MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    by_body = {m["Body"]: m for m in got}
    masked, plain = by_body["***"], by_body["nightly export finished"]
    assert masked["MessageAttributes"]["dsn"]["StringValue"] == "***"
    assert masked["MessageAttributes"]["team"]["StringValue"] == "search"
    for m in (masked, plain):
        assert m["MD5OfBody"] == hashlib.md5(m["Body"].encode()).hexdigest()
        assert m["MD5OfMessageAttributes"] == sqs_attributes_md5(m["MessageAttributes"])
    # The unmasked message keeps AWS's digests; the masked one's changed.
    assert plain["MD5OfBody"] == sent["plain"]["MD5OfMessageBody"]
    assert plain["MD5OfMessageAttributes"] == sent["plain"]["MD5OfMessageAttributes"]
    assert masked["MD5OfBody"] != sent["masked"]["MD5OfMessageBody"]
    assert masked["MD5OfMessageAttributes"] != sent["masked"]["MD5OfMessageAttributes"]


def test_api_key_listing_is_masked_under_its_wire_name(stack, tmp_path):
    apigw = harness.moto_client(stack["moto"], "apigateway")
    name = f"partner{time.time_ns()}"
    key = apigw.create_api_key(name=name, enabled=True)
    with harness.agent(stack, tmp_path) as s:
        items = s.client("apigateway").get_api_keys(includeValues=True, nameQuery=name)["items"]
    assert [(i["name"], i["value"]) for i in items] == [(name, "***")]
    assert key["value"] != "***"


def test_a_bare_secret_key_in_a_stack_output_is_masked(stack, tmp_path):
    # No name says "secret" here: the value's shape does (query protocol, XML).
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    cfn = harness.moto_client(stack["moto"], "cloudformation")
    name = f"keys{time.time_ns()}"
    cfn.create_stack(StackName=name, TemplateBody=json.dumps({
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"Key": {"Value": secret}, "Region": {"Value": "eu-west-1"}}}))
    with harness.agent(stack, tmp_path) as s:
        outputs = s.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]["Outputs"]
    assert {o["OutputKey"]: o["OutputValue"] for o in outputs} == {"Key": "***", "Region": "eu-west-1"}


def test_masked_blobs_stay_base64_for_the_sdk(stack, tmp_path):
    # KMS Plaintext and SecretBinary are blobs: base64 text on the wire, which
    # SDKs decode. A masked one must still decode: to the marker's bytes.
    kms = harness.moto_client(stack["moto"], "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"\x00\x01db-password")["CiphertextBlob"]
    sm = harness.moto_client(stack["moto"], "secretsmanager")
    name = f"search/cert-{time.time_ns()}"
    sm.create_secret(Name=name, SecretBinary=b"\x00-----BEGIN PRIVATE KEY-----")
    with harness.agent(stack, tmp_path, groups=["search"]) as s:
        k = s.client("kms")
        assert k.decrypt(CiphertextBlob=blob)["Plaintext"] == b"***"
        data_key = k.generate_data_key(KeyId=key, KeySpec="AES_256")
        assert s.client("secretsmanager").get_secret_value(SecretId=name)["SecretBinary"] == b"***"
    assert data_key["Plaintext"] == b"***"
    # The ciphertext beside it is no secret: untouched, it still decrypts.
    assert len(kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"]) == 32


def test_secrets_in_small_s3_objects_are_masked(stack, tmp_path):
    # An object is bytes to S3; a small text one is shown to the policies,
    # so a config file with a key in it reaches the agent masked. Binary and
    # plain objects arrive byte for byte, checksums and all.
    bucket = f"cfg{time.time_ns()}"
    s3 = harness.moto_client(stack["moto"], "s3")
    s3.create_bucket(Bucket=bucket)
    leaky = "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
    plain = "region = eu-west-1\noutput = json\n"
    binary = bytes(range(256)) * 16
    for key, body in (("leaky.ini", leaky.encode()), ("plain.ini", plain.encode()), ("blob.bin", binary)):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC32")
    with harness.agent(stack, tmp_path) as s:
        agent = s.client("s3")
        got = agent.get_object(Bucket=bucket, Key="leaky.ini", ChecksumMode="ENABLED")
        assert got["Body"].read() == b"***"
        assert got["ResponseMetadata"]["HTTPHeaders"].get("x-veil-masked") == "true"
        kept = agent.get_object(Bucket=bucket, Key="plain.ini", ChecksumMode="ENABLED")
        assert kept["Body"].read() == plain.encode() and kept.get("ChecksumCRC32")
        assert agent.get_object(Bucket=bucket, Key="blob.bin")["Body"].read() == binary

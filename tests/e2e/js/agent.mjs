// An agent written against the AWS SDK for JavaScript v3, configured only by
// its environment (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN,
// AWS_ENDPOINT_URL, AWS_REGION, NODE_EXTRA_CA_CERTS): every client below is
// built with no options, so credentials come from the SDK's default chain
// (web identity) and the endpoint from AWS_ENDPOINT_URL.
//
// `node agent.mjs SCENARIO '<json input>'` runs one scenario and prints its
// result as one JSON line; an SDK error is printed as {"error": …} with the
// class the SDK threw it as, for the tests to judge.
import { createHash } from 'node:crypto';
import { STSClient, GetCallerIdentityCommand } from '@aws-sdk/client-sts';
import { SecretsManagerClient, GetSecretValueCommand } from '@aws-sdk/client-secrets-manager';
import { SSMClient, GetParameterCommand } from '@aws-sdk/client-ssm';
import { IAMClient, ListUsersCommand, CreateUserCommand, IAMServiceException } from '@aws-sdk/client-iam';
import { EC2Client, DescribeInstancesCommand } from '@aws-sdk/client-ec2';
import { S3Client, PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { SQSClient, CreateQueueCommand, SendMessageCommand, ReceiveMessageCommand } from '@aws-sdk/client-sqs';
import { DynamoDBClient, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { KMSClient, DecryptCommand } from '@aws-sdk/client-kms';
import { CloudTrailClient, StopLoggingCommand, CloudTrailServiceException } from '@aws-sdk/client-cloudtrail';

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

// A deterministic 20 MB body from a seed, so the test can check it without
// passing 20 MB through argv.
function pseudoRandom(size, seed) {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let i = 0; i < size; i += block.length) {
    block.copy(out, i);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

const scenarios = {
  async whoami() {
    const r = await new STSClient().send(new GetCallerIdentityCommand({}));
    return { Account: r.Account, Arn: r.Arn, UserId: r.UserId };
  },
  async secret({ name }) {
    const r = await new SecretsManagerClient().send(new GetSecretValueCommand({ SecretId: name }));
    return { Name: r.Name, SecretString: r.SecretString };
  },
  async parameter({ name }) {
    const r = await new SSMClient().send(new GetParameterCommand({ Name: name, WithDecryption: true }));
    return { Name: r.Parameter.Name, Value: r.Parameter.Value, Type: r.Parameter.Type };
  },
  async users() {
    const r = await new IAMClient().send(new ListUsersCommand({}));
    return { Users: r.Users.map((u) => u.UserName) };
  },
  async createUser({ name }) {
    await new IAMClient().send(new CreateUserCommand({ UserName: name }));
    return { created: name };
  },
  async instances() {
    const r = await new EC2Client().send(new DescribeInstancesCommand({}));
    return { InstanceIds: r.Reservations.flatMap((res) => res.Instances.map((i) => i.InstanceId)) };
  },
  async bigObject({ bucket, key, size, seed }) {
    const s3 = new S3Client();
    // Where the SDK sent the requests: the Host of each one.
    const hosts = [];
    s3.middlewareStack.add((next) => async (args) => {
      hosts.push(args.request.hostname);
      return next(args);
    }, { step: 'finalizeRequest', name: 'recordHost' });
    const body = pseudoRandom(size, seed);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const bytes = await got.Body.transformToByteArray();
    return { sent: sha256(body), received: sha256(bytes), length: bytes.length, hosts };
  },
  async queue({ name, bodies }) {
    const sqs = new SQSClient();
    const urls = [];
    sqs.middlewareStack.add((next) => async (args) => {
      urls.push(`${args.request.protocol}//${args.request.hostname}:${args.request.port}${args.request.path}`);
      return next(args);
    }, { step: 'finalizeRequest', name: 'recordUrl' });
    const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName: name }));
    const sent = [];
    for (const body of bodies) {
      const r = await sqs.send(new SendMessageCommand({ QueueUrl, MessageBody: body }));
      sent.push(r.MD5OfMessageBody);
    }
    const received = [];
    while (received.length < bodies.length) {
      const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
      received.push(...(r.Messages || []).map((m) => ({ Body: m.Body, MD5OfBody: m.MD5OfBody })));
    }
    return { QueueUrl, sent, received, urls };
  },
  async item({ table, id }) {
    const r = await new DynamoDBClient().send(new GetItemCommand({ TableName: table, Key: { id: { S: id } } }));
    return { Item: r.Item };
  },
  async decrypt({ blob }) {
    const r = await new KMSClient().send(new DecryptCommand({ CiphertextBlob: Buffer.from(blob, 'base64') }));
    return { Plaintext: Buffer.from(r.Plaintext).toString('base64'), isBytes: r.Plaintext instanceof Uint8Array };
  },
  async stopLogging({ name }) {
    await new CloudTrailClient().send(new StopLoggingCommand({ Name: name }));
    return { stopped: name };
  },
};

// The service exception classes, to say which SDK type an error has.
const serviceExceptions = { IAMServiceException, CloudTrailServiceException };

const [scenario, input] = process.argv.slice(2);
try {
  console.log(JSON.stringify(await scenarios[scenario](JSON.parse(input || '{}'))));
} catch (e) {
  const types = Object.entries(serviceExceptions).filter(([, cls]) => e instanceof cls).map(([n]) => n);
  console.log(JSON.stringify({
    error: { name: e.name, message: e.message, fault: e.$fault, status: e.$metadata?.httpStatusCode, types },
  }));
}

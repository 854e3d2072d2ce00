// Unit tests of the JS SDK's helpers, on the host's Node.js (`npm test`):
// they must behave exactly like the Rust SDK's.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Config, Finding, Mask, Request, Response, ResponseDecision, Scope, Verdict, compareCodePoints, exportPolicy, glob, rustTrim, sortedValues } from "./veil-policy.js";

test("glob matches like the Rust policy", () => {
  assert.ok(glob("iam:create*", "iam:createuser"));
  assert.ok(glob("*admin*", "arn:aws:iam::1:role/admin"));
  assert.ok(glob("a*b*c", "axxbyyc"));
  assert.ok(!glob("a*b*c", "axxbyy"));
  assert.ok(glob("exact", "exact"));
  assert.ok(!glob("exact", "exactly"));
  assert.ok(!glob("*ab*ab", "ab"));
});

test("claims, params and config helpers", () => {
  const req = Request.of("iam", "CreateUser", { sub: "a", groups: "ops, dev", roles: ["x", 1] }, { UserName: "bob", Count: 3 }, { deny: ["a:*"], bad: "x" });
  assert.equal(req.qualifiedAction, "iam:CreateUser");
  assert.deepEqual(req.groups, ["ops", "dev"]);
  assert.ok(req.hasGroup("dev"));
  assert.deepEqual(req.claimList("roles"), ["x"]);
  assert.equal(req.paramStr("UserName"), "bob");
  assert.equal(req.paramStr("Count"), undefined);
  assert.deepEqual(req.configList("deny", ["d"]), ["a:*"]);
  assert.deepEqual(req.configList("absent", ["d"]), ["d"]);
  assert.throws(() => req.configList("bad", []), /config `bad` must be a list of strings/);
  assert.deepEqual(Request.of("s", "A", {}, {}, [1]).configList("k", ["d"]), ["d"]);
});

test("Rust semantics of trim and key order", () => {
  assert.equal(rustTrim("\u3000 0.0.0.0/0\t\n"), "0.0.0.0/0");
  assert.equal(rustTrim("\ufeff0.0.0.0/0"), "\ufeff0.0.0.0/0"); // not White_Space in Rust
  assert.deepEqual(sortedValues({ b: 1, Z: 2, "\u{1F600}": 3, "\uFFFD": 4, 10: 5, 9: 6 }), [5, 6, 2, 1, 4, 3]);
  assert.ok(compareCodePoints("\uFFFD", "\u{1F600}") < 0);
});

test("decisions have the WIT shapes", () => {
  assert.deepEqual(Verdict.approvalRequired("r"), { tag: "approval-required", val: "r" });
  assert.deepEqual(ResponseDecision.masks([Mask.partial("a")]), { deny: undefined, masks: [{ path: "a", style: "partial" }] });
});

test("config and scope", () => {
  const config = new Config('{"deny": ["iam:*"], "bad": [1]}');
  assert.deepEqual(config.value, { deny: ["iam:*"], bad: [1] });
  assert.deepEqual(config.list("deny", []), ["iam:*"]);
  assert.deepEqual(config.list("absent", ["x"]), ["x"]);
  assert.throws(() => config.list("bad", []), /config `bad` must be a list of strings/);
  assert.deepEqual(Scope.all(), { onRequest: ["*"], onResponse: ["*"] });
  const exports = exportPolicy({ name: "p", version: "1.0.0" });
  assert.deepEqual(exports.scope("{}"), { onRequest: ["*"], onResponse: ["*"] });
  const scoped = exportPolicy({ name: "p", version: "1.0.0", scope: (c) => ({ onRequest: c.list("ops", []), onResponse: [] }) });
  assert.deepEqual(scoped.scope('{"ops": ["s3:*"]}'), { onRequest: ["s3:*"], onResponse: [] });
});

test("findings come from the host once and carry the mask their kind calls for", () => {
  globalThis.veilTestFindings = [
    { path: '"Owner"."AccessKeyId"', kind: "access-key-id", detector: "aws-access-key-id" },
    { path: '"Note"', kind: "secret", detector: "private-key" },
  ];
  const resp = new Response({ status: 200, bodyJson: "{}" });
  const found = resp.findings();
  assert.deepEqual(found.map((f) => f.mask()), [Mask.hash('"Owner"."AccessKeyId"'), Mask.redact('"Note"')]);
  assert.equal(found[1].detector, "private-key");
  globalThis.veilTestFindings = [];
  assert.equal(resp.findings(), found);
  assert.deepEqual(new Response({ status: 200, bodyJson: "{}" }, [new Finding("a", "secret", "jwt")]).findings()[0].mask(), Mask.redact("a"));
});

// The Rust SDK's cases (policy-sdk/src/net.rs), with the same answers.
const OPEN = ["0.0.0.0/0", "10.0.0.0/0", "000.0.0.0/00", " 0.0.0.0/0 ", "::/0", "::0/0", "0:0:0:0:0:0:0:0/0", "::ffff:0.0.0.0/96",
  "::ffff:0:0/95", "2000::/3", "2000::/2", "::/1", "0::/0"];
const CLOSED = ["10.0.0.0/8", "0.0.0.0/1", "0.0.0.0", "2001:db8::/32", "::ffff:10.0.0.0/104", "2000::/4", "nonsense", "0.0.0.0/33",
  "::/129", "1.2.3/0", "::/0/0", "fe80::/0%eth0", "１.2.3.4/0", ":::/0", "1::2::3/0", "1:2:3:4:5:6:7:8:9/0"];

test("every spelling of the whole internet is open", async () => {
  const { Network, isWorldOpen } = await import("./veil-policy.js");
  assert.deepEqual(OPEN.filter((t) => !isWorldOpen(t)), []);
  assert.deepEqual(CLOSED.filter((t) => isWorldOpen(t)), []);
  const n = Network.parse("10.1.0.0/16");
  assert.ok(n.contains(Network.parse("10.1.2.3")) && !n.contains(Network.parse("10.2.0.1")));
  assert.ok(!n.contains(Network.parse("::ffff:10.1.2.3")));
  assert.ok(Network.parse("1:2:3:4:5:6:7::/0") !== undefined);
  assert.equal(Network.parse("::ffff:1.2.3.4").bits, (0xffffn << 32n) | 0x01020304n);
});

test("ARNs split into their parts", async () => {
  const { Arn } = await import("./veil-policy.js");
  const a = Arn.parse("arn:aws:iam::123456789012:role/path/admin");
  assert.deepEqual([a.partition, a.service, a.region, a.account], ["aws", "iam", "", "123456789012"]);
  assert.deepEqual(a.resourceType(), ["role", "path/admin"]);
  assert.equal(Arn.parse("arn:aws:logs:us-east-1:1:log-group:a:b").resource, "log-group:a:b");
  for (const bad of ["", "arn:aws:iam::1", "arn::iam::1:role/x", "ARN:aws:iam::1:role/x", "arn:aws:iam::1:"]) assert.equal(Arn.parse(bad), undefined, bad);
});

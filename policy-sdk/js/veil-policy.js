// JavaScript SDK for Veil policies.
//
// A Veil policy is a WebAssembly component exporting the
// `veil:policy/scoped-policy` world of wit/veil-policy.wit. componentize-js generates the bindings from
// that one WIT file when it builds the component; this module gives them the
// same small API as the Rust SDK:
//
//   import { Mask, ResponseDecision, Verdict, exportPolicy } from "veil-policy";
//
//   export const { info, scope, onRequest, onResponse } = exportPolicy({
//     name: "no-iam-writes",
//     version: "1.0.0",
//     // Optional; the default is every operation for both hooks.
//     scope: (config) => ({ onRequest: ["iam:*"], onResponse: ["*"] }),
//     onRequest(req) {
//       if (req.service === "iam" && !/^(Get|List)/.test(req.action))
//         return Verdict.deny(`${req.qualifiedAction} is not allowed through Veil`);
//       return Verdict.allow();
//     },
//     onResponse(req, resp) {
//       if (req.hasGroup("secrets-admin")) return ResponseDecision.allow();
//       return ResponseDecision.masks([Mask.redact("**.SecretAccessKey")]);
//     },
//   });
//
// Helpers behave exactly like the Rust SDK's, so a policy ported between the
// languages gives byte-for-byte the same decisions. An exception escaping a
// hook traps the instance; the gateway treats a trap as a deny (fail closed).

import { findings as hostFindings } from "veil:policy/scan@0.1.0";

/** A decision on a request, in the WIT variant's shape. */
export const Verdict = {
  allow: () => ({ tag: "allow" }),
  deny: (reason) => ({ tag: "deny", val: String(reason) }),
  approvalRequired: (reason) => ({ tag: "approval-required", val: String(reason) }),
};

/** One masking instruction: a selector and a style. */
export const Mask = {
  redact: (path) => ({ path: String(path), style: "redact" }),
  hash: (path) => ({ path: String(path), style: "hash" }),
  partial: (path) => ({ path: String(path), style: "partial" }),
};

/** A decision on a response: masks to apply, or a deny. */
export const ResponseDecision = {
  allow: () => ({ deny: undefined, masks: [] }),
  masks: (masks) => ({ deny: undefined, masks: [...masks] }),
  deny: (reason) => ({ deny: String(reason), masks: [] }),
};

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const get = (obj, key) => (isObject(obj) && Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined);

function lazy(what, text) {
  let parsed = false;
  let value;
  return () => {
    if (!parsed) {
      try {
        value = JSON.parse(text);
      } catch (e) {
        throw new Error(`veil: ${what} is not valid JSON: ${e.message}`);
      }
      parsed = true;
    }
    return value;
  };
}

/** Which operations each hook runs for: `service:Action` patterns, `*`
 * matching any run of characters, case ignored. The gateway skips a hook for
 * other calls, as if it had allowed them. */
export const Scope = {
  all: () => ({ onRequest: ["*"], onResponse: ["*"] }),
};

/** A policy's configuration (the JSON object from the gateway's config),
 * parsed on first use. */
export class Config {
  constructor(configJson) {
    this._value = lazy("config-json", configJson);
  }
  /** The configuration as JSON. */
  get value() { return this._value(); }
  /** A list of strings under `key`, or `fallback` when the key is absent.
   * Anything else throws (a trap: the gateway refuses the policy or denies,
   * and reports the misconfiguration). */
  list(key, fallback) {
    const config = this.value;
    if (!isObject(config) || !Object.prototype.hasOwnProperty.call(config, key)) return [...fallback];
    const v = config[key];
    if (Array.isArray(v) && v.every((s) => typeof s === "string")) return [...v];
    throw new Error(`config \`${key}\` must be a list of strings`);
  }
}

/** One call as a policy sees it: identity, operation, parameters, config. */
export class Request {
  /** A request from parsed parts (for unit tests of policies). */
  static of(service, action, claims = {}, params = {}, config = {}) {
    const sub = get(claims, "sub");
    return new Request({
      identity: { issuer: "https://issuer.test", subject: typeof sub === "string" ? sub : "test", claimsJson: JSON.stringify(claims) },
      operation: { service, action, region: "us-east-1", resource: undefined },
      paramsJson: JSON.stringify(params),
      configJson: JSON.stringify(config),
    });
  }

  constructor(call) {
    this.issuer = call.identity.issuer;
    this.subject = call.identity.subject;
    this.service = call.operation.service;
    this.action = call.operation.action;
    this.region = call.operation.region;
    this.resource = call.operation.resource;
    this._claims = lazy("claims-json", call.identity.claimsJson);
    this._params = lazy("params-json", call.paramsJson);
    this._config = new Config(call.configJson);
  }

  /** All claims of the token. */
  get claims() { return this._claims(); }
  /** Request parameters. */
  get params() { return this._params(); }
  /** This policy's configuration (`{}` when none). */
  get config() { return this._config.value; }
  /** `service:Action`, the form IAM policies use (`iam:CreateUser`). */
  get qualifiedAction() { return `${this.service}:${this.action}`; }

  /** A string claim, if present and a string. */
  claimStr(name) {
    const v = get(this.claims, name);
    return typeof v === "string" ? v : undefined;
  }

  /** A claim holding a list of strings (or one string of names separated by spaces or commas). */
  claimList(name) {
    const v = get(this.claims, name);
    if (Array.isArray(v)) return v.filter((s) => typeof s === "string");
    if (typeof v === "string") return v.split(/[ ,]/).filter((g) => g !== "");
    return [];
  }

  /** The caller's groups: the `groups` claim. */
  get groups() { return this.claimList("groups"); }
  /** Whether the caller is in `group`. */
  hasGroup(group) { return this.groups.includes(group); }

  /** A string parameter of the request. */
  paramStr(name) {
    const v = get(this.params, name);
    return typeof v === "string" ? v : undefined;
  }

  /** A list of strings from the policy config, or `fallback` when the key is
   * absent; see `Config.list`. */
  configList(key, fallback) {
    return this._config.list(key, fallback);
  }
}

/** A string of the response body that holds a secret, found by the
 * gateway's native detectors: its selector `path`, `kind` ("access-key-id"
 * or "secret") and `detector` name. */
export class Finding {
  constructor(path, kind, detector) {
    this.path = path;
    this.kind = kind;
    this.detector = detector;
  }
  /** The mask its kind calls for: hash a lone access key id, redact a secret. */
  mask() { return this.kind === "access-key-id" ? Mask.hash(this.path) : Mask.redact(this.path); }
}

/** The upstream response as a policy sees it. `findings` (for unit tests)
 * stands in for the gateway's detectors. */
export class Response {
  constructor(r, findings) {
    this.status = r.status;
    this._body = lazy("body-json", r.bodyJson);
    this._findings = findings;
  }
  /** The body as JSON. */
  get body() { return this._body(); }
  /** Every string of the body that holds a secret, in document order, found
   * by the gateway's detectors at native speed (far cheaper than walking
   * `body` here). */
  findings() {
    if (this._findings === undefined)
      this._findings = warming ? [] : hostFindings().map((f) => new Finding(f.path, f.kind, f.detector));
    return this._findings;
  }
}

/** The world's exports (`info`, `scope`, `onRequest`, `onResponse`) for a
 * policy object with `name`, `version` and optional `scope(config)`,
 * `onRequest(req)` / `onResponse(req, resp)`. */
export function exportPolicy(policy) {
  const exports = {
    info: () => ({ name: policy.name, version: policy.version }),
    scope: (configJson) => {
      const s = policy.scope ? policy.scope(new Config(configJson)) : Scope.all();
      return { onRequest: [...s.onRequest], onResponse: [...s.onResponse] };
    },
    onRequest: (c) => (policy.onRequest ? policy.onRequest(new Request(c)) : Verdict.allow()),
    onResponse: (c, r) => (policy.onResponse ? policy.onResponse(new Request(c), new Response(r)) : ResponseDecision.allow()),
  };
  warmUp(exports);
  return exports;
}

// componentize-js snapshots the engine after this module's top level has run,
// and every call starts from that snapshot on a fresh instance. SpiderMonkey
// compiles a function's bytecode on its first call, so without this every
// call would pay to compile the SDK and the policy again. Running both hooks
// on sample calls here puts the compiled code into the snapshot. The sample
// calls see no caller's data, so nothing of one caller can reach another.
// True while warmUp runs at build time, when there is no gateway to ask for
// findings.
let warming = false;

function warmUp(exports) {
  warming = true;
  try {
    warmUpHooks(exports);
  } finally {
    warming = false;
  }
}

function warmUpHooks(exports) {
  try {
    exports.scope("{}");
  } catch (_) {
    // Only compilation matters here.
  }
  const sample = (service, action, params, body) => {
    const call = {
      identity: { issuer: "https://issuer.test", subject: "warm-up", claimsJson: '{"sub":"warm-up","groups":["warm-up"]}' },
      operation: { service, action, region: "us-east-1", resource: undefined },
      paramsJson: JSON.stringify(params),
      configJson: "{}",
    };
    for (let i = 0; i < 3; i++) {
      try {
        exports.onRequest(call);
        exports.onResponse(call, { status: 200, bodyJson: JSON.stringify(body) });
      } catch (_) {
        // A policy may reject a sample call; only compilation matters here.
      }
    }
  };
  sample("secretsmanager", "GetSecretValue", { SecretId: "warm-up" }, { Name: "warm-up", SecretString: "{}" });
  sample("ssm", "GetParameters", { Names: ["/warm-up"] }, { Parameters: [{ Name: "/warm-up", Value: "x" }] });
  sample("ec2", "AuthorizeSecurityGroupIngress", { IpPermissions: [{ IpRanges: [{ CidrIp: "10.0.0.0/8" }] }] }, {});
  sample("sts", "AssumeRole", { RoleArn: "arn:aws:iam::123456789012:role/warm-up" }, {});
}

// Helpers with exactly the Rust standard library's semantics, so that ported
// policies decide identically.

/** Lower-case ASCII letters only (as IAM compares action names). */
export const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());

// Rust's char::is_whitespace (Unicode White_Space), which str::trim strips.
const RUST_WS = "[\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const TRIM = new RegExp(`^${RUST_WS}+|${RUST_WS}+$`, "g");

/** Strip Unicode White_Space from both ends. */
export const rustTrim = (s) => s.replace(TRIM, "");

/** Compare strings by code point (UTF-8 byte order, the Rust SDK's key order). */
export function compareCodePoints(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** An object's values in key order (the order the Rust SDK sees them). */
export const sortedValues = (obj) => Object.keys(obj).sort(compareCodePoints).map((k) => obj[k]);

/** Whether `text` matches `pattern`, where `*` matches any run. */
export function glob(pattern, text) {
  const parts = pattern.split("*");
  const first = parts.shift();
  if (!text.startsWith(first)) return false;
  let rest = text.slice(first.length);
  if (parts.length === 0) return rest === "";
  const last = parts.pop();
  for (const part of parts) {
    const i = rest.indexOf(part);
    if (i < 0) return false;
    rest = rest.slice(i + part.length);
  }
  return rest.length >= last.length && rest.endsWith(last);
}

// Values with many spellings (the Rust SDK's `net` module, same answers).

const ASCII_WS = /^[ \t\n\f\r]+|[ \t\n\f\r]+$/g;

function parseV4(text, strict) {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let out = 0n;
  for (const part of parts) {
    if (!/^[0-9]{1,3}$/.test(part) || Number(part) > 255 || (strict && part.length > 1 && part[0] === "0")) return undefined;
    out = (out << 8n) | BigInt(Number(part));
  }
  return out;
}

function parseV6(text) {
  const groups = (s, lastMayBeV4) => {
    if (s === "") return [];
    const out = [];
    const parts = s.split(":");
    for (let i = 0; i < parts.length; i++) {
      if (lastMayBeV4 && i === parts.length - 1 && parts[i].includes(".")) {
        const v4 = parseV4(parts[i], true);
        if (v4 === undefined) return undefined;
        out.push(Number(v4 >> 16n), Number(v4 & 0xffffn));
      } else if (/^[0-9a-fA-F]{1,4}$/.test(parts[i])) {
        out.push(parseInt(parts[i], 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const gap = text.indexOf("::");
  let all;
  if (gap < 0) {
    all = groups(text, true);
    if (all === undefined || all.length !== 8) return undefined;
  } else {
    if (text.indexOf("::", gap + 1) >= 0) return undefined;
    const head = groups(text.slice(0, gap), false);
    const tail = groups(text.slice(gap + 2), true);
    if (head === undefined || tail === undefined || head.length + tail.length > 7) return undefined;
    all = [...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail];
  }
  return all.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
}

/** An IPv4 or IPv6 network (an address is a network of one). */
export class Network {
  constructor(bits, v4, prefix) {
    this.bits = bits;
    this.v4 = v4;
    this.prefix = prefix;
  }

  /** `a.b.c.d/n`, an IPv6 network `x::y/n` or a bare address; surrounding
   * ASCII whitespace ignored. `undefined` for anything else. */
  static parse(text) {
    const t = text.replace(ASCII_WS, "");
    const slash = t.indexOf("/");
    const addr = slash < 0 ? t : t.slice(0, slash);
    let bits = parseV4(addr, false);
    const v4 = bits !== undefined;
    if (!v4) {
      if (!addr.includes(":")) return undefined;
      bits = parseV6(addr);
      if (bits === undefined) return undefined;
    }
    const width = v4 ? 32 : 128;
    let prefix = width;
    if (slash >= 0) {
      const p = t.slice(slash + 1);
      if (!/^[0-9]{1,3}$/.test(p) || Number(p) > width) return undefined;
      prefix = Number(p);
    }
    return new Network(bits, v4, prefix);
  }

  mask() {
    const width = BigInt(this.v4 ? 32 : 128);
    return ((1n << width) - 1n) ^ ((1n << (width - BigInt(this.prefix))) - 1n);
  }

  /** Whether `other` lies wholly inside this network. */
  contains(other) {
    const m = this.mask();
    return this.v4 === other.v4 && other.prefix >= this.prefix && (other.bits & m) === (this.bits & m);
  }

  /** Every IPv4 address, every global unicast IPv6 address (`2000::/3`) or
   * every IPv4 address mapped into IPv6. */
  isWorldOpen() {
    if (this.prefix === 0) return true;
    if (this.v4) return false;
    return this.contains(new Network(0x2000n << 112n, false, 3)) || this.contains(new Network(0xffffn << 32n, false, 96));
  }
}

/** Whether `text` is a network (any spelling) open to the whole internet. */
export function isWorldOpen(text) {
  const n = Network.parse(text);
  return n !== undefined && n.isWorldOpen();
}

/** An ARN's parts: `arn:partition:service:region:account:resource`. */
export class Arn {
  constructor(partition, service, region, account, resource) {
    Object.assign(this, { partition, service, region, account, resource });
  }

  /** `undefined` unless it has the six parts, with a partition, service and resource. */
  static parse(text) {
    const parts = [];
    let rest = text;
    for (let i = 0; i < 5; i++) {
      const at = rest.indexOf(":");
      if (at < 0) return undefined;
      parts.push(rest.slice(0, at));
      rest = rest.slice(at + 1);
    }
    parts.push(rest);
    if (parts[0] !== "arn" || !parts[1] || !parts[2] || !parts[5]) return undefined;
    return new Arn(...parts.slice(1));
  }

  /** `role/path/admin` → `["role", "path/admin"]`; `undefined` without a separator. */
  resourceType() {
    const cut = [this.resource.indexOf("/"), this.resource.indexOf(":")].filter((i) => i >= 0);
    if (cut.length === 0) return undefined;
    const i = Math.min(...cut);
    return [this.resource.slice(0, i), this.resource.slice(i + 1)];
  }
}

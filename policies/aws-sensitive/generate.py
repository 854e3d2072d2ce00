#!/usr/bin/env python3
"""Generate src/generated.rs: for every AWS operation, the selectors of
every output value that holds a secret, in Veil's selector language over the
JSON view the gateway gives policies, with the protocol's wire names:

  json / rest-json   JSON keys (locationName when set), lists `[*]`, maps `.*`
  query              inside <{Operation}Result>; lists `.member[*]` (or the
                     list's locationName), flattened lists `[*]`, maps
                     `.entry[*].value`
  ec2                inside the root; lists `.item[*]`
  rest-xml           inside the root element (or the payload's element)

A value holds a secret when
  1. its shape carries botocore's `sensitive` trait (directly or through
     structures, lists and maps);
  2. it is listed in CURATED below: secrets the models do not mark, each
     anchored at the shape that holds it, in model names, with its source;
     the walk translates them to wire names like the model's own, so no
     hand-written selector can miss the wire (`items` is `item` on
     API Gateway's wire), and an entry that reaches no output fails here;
  3. it is the value of an environment variable: a member named
     `environment`/`environmentVariables` (any case) that is a map, a list of
     name/value pairs, or a structure with a `Variables` map (Lambda),
     in any service.

botocore is pinned in tests/requirements.txt; regenerate after bumping it:
`python3 policies/aws-sensitive/generate.py`.
"""
import os
import re
import sys

import botocore
from botocore.loaders import Loader

# (service, shape, member path below the shape in model names, mask style, source).
# Path steps: a member, `[*]` every list element, `*` every map value, or a
# map's key by name (JSON protocols only).
CURATED = [
    ("sts", "Credentials", "SessionToken", "redact",
     "sts API, Credentials: the session token is as much a credential as the secret key the model marks"),
    ("sts", "Credentials", "AccessKeyId", "hash",
     "key ids are identifiers: hashed so analysts can correlate them with CloudTrail"),
    ("iam", "AccessKey", "AccessKeyId", "hash", "as sts Credentials.AccessKeyId"),
    ("ecr", "AuthorizationData", "authorizationToken", "redact",
     "ecr API, GetAuthorizationToken: a base64 docker login password"),
    ("ecr-public", "AuthorizationData", "authorizationToken", "redact", "as ecr"),
    ("ec2", "InstanceAttribute", "UserData.Value", "redact",
     "EC2 user guide, instance user data: bootstrap scripts routinely carry secrets"),
    ("codebuild", "EnvironmentVariable", "value", "redact", "codebuild API, EnvironmentVariable: PLAINTEXT values hold tokens"),
    ("codebuild", "Webhook", "secret", "redact", "codebuild API, Webhook.secret"),
    ("glue", "Connection", "ConnectionProperties.PASSWORD", "redact",
     "glue API, ConnectionPropertyKey: JDBC connections keep their password here"),
    ("glue", "Connection", "ConnectionProperties.ENCRYPTED_PASSWORD", "redact", "as PASSWORD"),
    ("apigateway", "ApiKey", "value", "redact", "apigateway API, ApiKey.value: the key itself (returned with includeValue)"),
    ("amplify", "App", "environmentVariables.*", "redact", "amplify API, App.environmentVariables"),
    ("amplify", "Branch", "environmentVariables.*", "redact", "amplify API, Branch.environmentVariables"),
]

# Also on issue 5's list and marked `sensitive` by the models themselves (the
# generator refuses a curated entry the model covers): secretsmanager
# SecretString/SecretBinary, kms Plaintext outputs, cognito-idp tokens, iam
# SecretAccessKey and ServicePassword, lambda and ecs environments, ec2
# launch template user data; batch and sagemaker environments are rule 3.

# Member names (lowercased) of environment variables, in any service.
ENVIRONMENT_MEMBERS = {"environment", "environmentvariables"}

# SSM parameter values are secret only when their type is SecureString: the
# policy masks these per item (src/lib.rs), not by the model's blanket trait.
PER_ITEM = {("ssm", op) for op in ("GetParameter", "GetParameters", "GetParametersByPath", "GetParameterHistory")}

STRONGER = {"hash": 0, "redact": 1}

MAX_DEPTH = 14
PLAIN = re.compile(r'^[^.\[\]"*\s]+$')


def step(name):
    return name if PLAIN.match(name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def join(path, part):
    return f"{path}.{part}" if path else part


class Walker:
    def __init__(self, service, model):
        self.shapes = model["shapes"]
        meta = model["metadata"]
        self.protocol = meta.get("protocol")
        if "protocols" in meta and self.protocol not in meta["protocols"]:
            self.protocol = meta["protocols"][0]
        self.xml = self.protocol in ("query", "ec2", "rest-xml")
        self.anchors = {}
        for svc, shape, path, style, _source in CURATED:
            if svc == service:
                if shape not in self.shapes:
                    sys.exit(f"generate.py: curated {svc} {shape}.{path}: no shape {shape}")
                self.anchors.setdefault(shape, []).append((tuple(re.findall(r"\[\*\]|[^.\[\]]+", path)), style, (svc, shape, path)))
        self.reached = set()
        self.redundant = set()

    def environment(self, shape_name):
        """Pending steps to the values of an environment-variable member of this shape."""
        shape = self.shapes[shape_name]
        if shape["type"] == "map":
            return [(("*",), "redact", None)]
        if shape["type"] == "list":
            entry = self.shapes[shape["member"]["shape"]]
            value = [m for m in entry.get("members", {}) if m.lower() == "value"]
            return [(("[*]", value[0]), "redact", None)] if entry["type"] == "structure" and value else []
        if shape["type"] == "structure" and "Variables" in shape.get("members", {}):
            return [(("Variables", "*"), "redact", None)]
        return []

    def add(self, out, path, style):
        if STRONGER[style] >= STRONGER.get(out.get(path), -1):
            out[path] = style

    def walk(self, shape_name, path, out, stack, ref=None, pending=()):
        shape = self.shapes[shape_name]
        pending = list(pending) + self.anchors.get(shape_name, [])
        if shape.get("sensitive") or (ref or {}).get("sensitive"):
            if path:
                self.add(out, path, "redact")
            self.redundant.update(origin for steps, _, origin in pending if not steps and origin)
            return
        done = [(style, origin) for steps, style, origin in pending if not steps]
        if done and path:
            for style, origin in done:
                self.add(out, path, style)
                if origin:
                    self.reached.add(origin)
            return
        if shape_name in stack or len(stack) > MAX_DEPTH:
            return
        stack = stack + [shape_name]
        below = lambda first: [(steps[1:], style, origin) for steps, style, origin in pending if steps and steps[0] == first]
        t = shape["type"]
        if t == "structure":
            for member, mref in shape.get("members", {}).items():
                if mref.get("location") in ("header", "headers", "statusCode", "uri", "querystring"):
                    continue
                name = mref.get("locationName", member)
                if self.protocol == "ec2" and "queryName" in mref:
                    name = mref.get("locationName", mref["queryName"])
                sub = below(member)
                if member.lower() in ENVIRONMENT_MEMBERS:
                    sub += self.environment(mref["shape"])
                self.walk(mref["shape"], join(path, step(name)), out, stack, mref, sub)
        elif t == "list":
            mref = shape["member"]
            sub = below("[*]")
            if not self.xml:
                self.walk(mref["shape"], path + "[*]", out, stack, mref, sub)
            elif shape.get("flattened") or (ref or {}).get("flattened"):
                self.walk(mref["shape"], path + "[*]", out, stack, mref, sub)
            else:
                wrapper = mref.get("locationName", "item" if self.protocol == "ec2" else "member")
                self.walk(mref["shape"], join(path, step(wrapper)) + "[*]", out, stack, mref, sub)
        elif t == "map":
            vref = shape["value"]
            for steps, style, origin in pending:
                if steps and steps[0] != "*":
                    # A map's key by name: its value, when it is the last step.
                    if self.xml or len(steps) != 1:
                        sys.exit(f"generate.py: curated {origin}: a map key must be the last step, on a JSON protocol")
                    self.add(out, join(path, step(steps[0])), style)
                    self.reached.add(origin)
            if not self.xml:
                self.walk(vref["shape"], join(path, "*"), out, stack, vref, below("*"))
            else:
                value = vref.get("locationName", "value")
                base = path + "[*]" if shape.get("flattened") else join(path, "entry") + "[*]"
                self.walk(vref["shape"], join(base, step(value)), out, stack, vref, below("*"))

    def operation(self, op):
        out = {}
        oref = op.get("output")
        if not oref:
            return out
        shape = self.shapes[oref["shape"]]
        payload = shape.get("payload")
        if payload:
            pref = shape["members"][payload]
            target = self.shapes[pref["shape"]]
            if target["type"] == "structure":
                self.walk(pref["shape"], "", out, [], pref)
            elif target.get("sensitive") or pref.get("sensitive"):
                out["**"] = "redact"  # a sensitive non-structure payload: mask it all
        else:
            self.walk(oref["shape"], "", out, [], oref)
        return out


def main():
    loader = Loader()
    table = {}
    curated = {origin[:3] for origin in CURATED}
    reached, redundant = set(), set()
    for name in sorted(loader.list_available_services("service-2")):
        model = loader.load_service_model(name, "service-2")
        signing = model["metadata"].get("signingName") or model["metadata"]["endpointPrefix"]
        w = Walker(name, model)
        for op_name, op in model["operations"].items():
            if (signing, op_name) in PER_ITEM:
                continue
            sels = w.operation(op)
            for path, style in sels.items():
                w.add(table.setdefault((signing, op_name), {}), path, style)
        reached |= w.reached
        redundant |= w.redundant
    for extra in sorted(redundant):
        sys.exit(f"generate.py: curated entry {extra}: the model marks it sensitive already; drop the entry")
    for miss in sorted(curated - reached):
        sys.exit(f"generate.py: curated entry {miss} reaches no operation's output")
    dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "generated.rs")
    styles = {"redact": "Redact", "hash": "Hash"}
    with open(dest, "w") as f:
        f.write(f"// Generated by policies/aws-sensitive/generate.py from botocore {botocore.__version__}.\n")
        f.write("// Do not edit: regenerate. Selectors of every output value that holds a secret.\n\n")
        f.write("use veil_policy_sdk::MaskStyle::{self, Hash, Redact};\n\n")
        f.write("/// The secret output selectors of `service:action` (signing name, operation), with their mask style.\n")
        f.write("pub fn selectors(service: &str, action: &str) -> &'static [(&'static str, MaskStyle)] {\n")
        f.write("    match (service, action) {\n")
        for (svc, op), sels in sorted(table.items()):
            items = ", ".join('(r#"%s"#, %s)' % (p, styles[st]) for p, st in sorted(sels.items()))
            f.write(f'        ("{svc}", "{op}") => &[{items}],\n')
        f.write("        _ => &[],\n    }\n}\n\n")
        f.write(f"/// Operations with at least one secret output value.\n#[cfg(test)]\npub const OPERATIONS: usize = {len(table)};\n")
        f.write("\n/// Every (service, action) in the table, for coverage tests.\n#[cfg(test)]\npub const ALL: &[(&str, &str)] = &[\n")
        for (svc, op) in sorted(table):
            f.write(f'    ("{svc}", "{op}"),\n')
        f.write("];\n")
    print(f"wrote {dest}: {len(table)} operations, {sum(len(v) for v in table.values())} selectors", file=sys.stderr)


if __name__ == "__main__":
    main()

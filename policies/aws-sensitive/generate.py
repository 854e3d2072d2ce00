#!/usr/bin/env python3
"""Generate src/generated.rs: for every AWS operation, the selectors of
every output value that holds a secret, in Veil's selector language over the
JSON view the gateway gives policies, with the protocol's wire names (the
walk is scripts/botocore_wire.py, shared with the gateway's operation table).

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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from botocore_wire import Walker  # noqa: E402

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

class SensitiveWalker(Walker):
    """Reports secrets: values the models mark `sensitive`, CURATED entries
    and environment-variable values."""

    RANK = {"hash": 0, "redact": 1}

    def __init__(self, service, model):
        anchors = {}
        shapes = model["shapes"]
        for svc, shape, path, style, _source in CURATED:
            if svc == service:
                if shape not in shapes:
                    sys.exit(f"generate.py: curated {svc} {shape}.{path}: no shape {shape}")
                anchors.setdefault(shape, []).append((tuple(re.findall(r"\[\*\]|[^.\[\]]+", path)), style, (svc, shape, path)))
        super().__init__(model, anchors)

    def marks(self, shape, ref):
        return "redact" if shape.get("sensitive") or ref.get("sensitive") else None

    def extra(self, member, mref):
        """Pending steps to the values of an environment-variable member."""
        if member.lower() not in ENVIRONMENT_MEMBERS:
            return []
        shape = self.shapes[mref["shape"]]
        if shape["type"] == "map":
            return [(("*",), "redact", None)]
        if shape["type"] == "list":
            entry = self.shapes[shape["member"]["shape"]]
            value = [m for m in entry.get("members", {}) if m.lower() == "value"]
            return [(("[*]", value[0]), "redact", None)] if entry["type"] == "structure" and value else []
        if shape["type"] == "structure" and "Variables" in shape.get("members", {}):
            return [(("Variables", "*"), "redact", None)]
        return []


def main():
    loader = Loader()
    table = {}
    curated = {origin[:3] for origin in CURATED}
    reached, redundant = set(), set()
    for name in sorted(loader.list_available_services("service-2")):
        model = loader.load_service_model(name, "service-2")
        signing = model["metadata"].get("signingName") or model["metadata"]["endpointPrefix"]
        w = SensitiveWalker(name, model)
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
        f.write("    TABLE.binary_search_by(|(s, a, _)| (*s, *a).cmp(&(service, action))).map_or(&[], |i| TABLE[i].2)\n}\n\n")
        f.write("/// Every operation with a secret output value, sorted by (service, action)\n")
        f.write("/// for [`selectors`]' binary search: a `match` on string pairs compares\n")
        f.write("/// them one arm after another, a thousand string comparisons per call.\n")
        f.write("pub static TABLE: &[(&str, &str, &[(&str, MaskStyle)])] = &[\n")
        for (svc, op), sels in sorted(table.items()):
            items = ", ".join('(r#"%s"#, %s)' % (p, styles[st]) for p, st in sorted(sels.items()))
            f.write(f'    ("{svc}", "{op}", &[{items}]),\n')
        f.write("];\n")
    print(f"wrote {dest}: {len(table)} operations, {sum(len(v) for v in table.values())} selectors", file=sys.stderr)


if __name__ == "__main__":
    main()

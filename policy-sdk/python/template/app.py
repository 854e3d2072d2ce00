"""my-policy: a starting point for a Veil policy in Python.

Build (from the repository root):
    componentize-py -d wit/veil-policy.wit -w scoped-policy componentize \\
        -p policy-sdk/python -p policy-sdk/python/template app -o my-policy.wasm
"""

from veil_policy import Mask, Policy, ResponseDecision, Verdict, export


class MyPolicy(Policy):
    name = "my-policy"
    version = "0.1.0"

    def on_request(self, req):
        if req.qualified_action == "s3:DeleteBucket" and not req.has_group("storage-admins"):
            return Verdict.deny("only storage admins delete buckets")
        return Verdict.allow()

    def on_response(self, req, resp):
        # Fixed selectors, plus every secret the gateway's detectors found.
        masks = [Mask.redact("**.Password"), Mask.partial("**.AccessKeyId")]
        return ResponseDecision.masks(masks + [f.mask() for f in resp.findings()])


WitWorld = export(MyPolicy)

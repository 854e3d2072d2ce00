// my-policy: a starting point for a Veil policy in JavaScript.
//
// Build (from the repository root):
//   policy-sdk/js/node_modules/.bin/componentize-js policy-sdk/js/template/policy.js \
//       --wit wit/veil-policy.wit -n scoped-policy -d http fetch-event -o my-policy.wasm

import { Mask, ResponseDecision, Verdict, exportPolicy } from "../veil-policy.js";

export const { info, scope, onRequest, onResponse } = exportPolicy({
  name: "my-policy",
  version: "0.1.0",
  onRequest(req) {
    if (req.qualifiedAction === "s3:DeleteBucket" && !req.hasGroup("storage-admins"))
      return Verdict.deny("only storage admins delete buckets");
    return Verdict.allow();
  },
  onResponse(req, resp) {
    // Fixed selectors, plus every secret the gateway's detectors found.
    const masks = [Mask.redact("**.Password"), Mask.partial("**.AccessKeyId")];
    return ResponseDecision.masks([...masks, ...resp.findings().map((f) => f.mask())]);
  },
});

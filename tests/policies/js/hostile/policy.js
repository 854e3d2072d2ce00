// A JavaScript policy that misbehaves on purpose, for the host's tests: the
// interpreter languages get the same limits and fail-closed treatment as
// Rust. The config's `mode` picks the misbehaviour.

import { Verdict, exportPolicy } from "../../../../policy-sdk/js/veil-policy.js";

function recurse(n) {
  return recurse(n + 1) + 1;
}

export const { info, scope, onRequest, onResponse } = exportPolicy({
  name: "hostile-js",
  version: "0.0.1",
  onRequest(req) {
    const mode = (req.config && req.config.mode) || "allow";
    if (mode === "trap") throw new Error("hostile policy throws on purpose");
    if (mode === "spin") for (;;) {}
    if (mode === "membomb") {
      const hoard = [];
      // Far past the memory cap in one request: fails at once instead of
      // spending the CPU deadline filling memory.
      for (;;) hoard.push(new ArrayBuffer(256 << 20));
    }
    if (mode === "recursion") recurse(0);
    return Verdict.allow();
  },
});

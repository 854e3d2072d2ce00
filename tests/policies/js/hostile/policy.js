// A JavaScript policy that misbehaves on purpose, for the host's tests: the
// interpreter languages get the same limits and fail-closed treatment as
// Rust. The config's `mode` picks the misbehaviour; `trigger` (when set)
// makes it misbehave only for calls whose action equals it; `modes` (when
// set) maps actions to modes instead. Output modes, in both hooks unless
// named for one: `print` (console.log and console.error, then allow),
// `print-mb` (a megabyte, then allow), `throw-request` / `throw-response`
// (an Error with a message in that hook).

import { ResponseDecision, Verdict, exportPolicy } from "../../../../policy-sdk/js/veil-policy.js";

function recurse(n) {
  return recurse(n + 1) + 1;
}

function modeOf(req) {
  const config = req.config || {};
  // Actions to modes: one gateway runs every mode.
  if (config.modes && typeof config.modes === "object") return config.modes[req.action] || "allow";
  if (config.trigger !== undefined && config.trigger !== req.action) return "allow";
  return config.mode || "allow";
}

function speak(mode, hook, req) {
  if (mode === "print") {
    console.log(`hostile-js ${hook} stdout: ${req.action}`);
    console.error(`hostile-js ${hook} stderr: \x1b[31mred\x1b[0m`);
  } else if (mode === "print-mb") {
    const line = "m".repeat(1023);
    for (let i = 0; i < 1024; i++) console.log(line);
    console.error(`hostile-js ${hook} printed a megabyte`);
  }
}

export const { info, scope, onRequest, onResponse } = exportPolicy({
  name: "hostile-js",
  version: "0.0.1",
  onRequest(req) {
    const mode = modeOf(req);
    speak(mode, "on-request", req);
    if (mode === "trap") throw new Error("hostile policy throws on purpose");
    if (mode === "throw-request") throw new TypeError("hostile-js throws in on-request on purpose");
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
  onResponse(req, _resp) {
    const mode = modeOf(req);
    speak(mode, "on-response", req);
    if (mode === "throw-response") throw new TypeError("hostile-js throws in on-response on purpose");
    return ResponseDecision.allow();
  },
});

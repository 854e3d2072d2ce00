// Node.js stand-in for the gateway's imports, for the SDK's unit tests
// (`node --import ./host-stub.mjs --test`): the component build resolves
// `veil:policy/scan@0.1.0` to the host's detectors instead.
import { register } from "node:module";

register("data:text/javascript," + encodeURIComponent(`
  export async function resolve(specifier, context, next) {
    if (specifier === "veil:policy/scan@0.1.0")
      return { url: "data:text/javascript,export const findings = () => globalThis.veilTestFindings ?? [];", shortCircuit: true };
    return next(specifier, context);
  }
`));

// `secrets-by-team` in JavaScript: secret values are visible only to the team
// that owns them; the same rules and configuration as the Rust policy in
// policies/secrets-by-team (see its docs). Built by `make policies` into
// target/policies/js/secrets-by-team.wasm.

import { Mask, ResponseDecision, exportPolicy } from "../../../policy-sdk/js/veil-policy.js";

const SECRET_FIELDS = ["SecretString", "SecretBinary"];
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const own = (v, key) => (isObject(v) && Object.prototype.hasOwnProperty.call(v, key) ? v[key] : undefined);

function strAt(v, key) {
  const s = own(v, key);
  return typeof s === "string" ? s : undefined;
}

function items(v, key) {
  const s = own(v, key);
  return Array.isArray(s) ? s : [];
}

function ownedPrefixes(req, groups) {
  const owners = own(req.config, "owners");
  if (owners === undefined) return [];
  if (!isObject(owners)) throw new Error("config `owners` must be an object of group -> [prefix]");
  const owned = [];
  for (const g of groups) {
    const prefixes = own(owners, g);
    if (prefixes === undefined) continue;
    if (!Array.isArray(prefixes)) throw new Error("owners: each group maps to a list of prefixes");
    for (const p of prefixes) {
      if (typeof p !== "string") throw new Error("owners: prefixes must be strings");
      owned.push(p);
    }
  }
  return owned;
}

export const { info, scope, onRequest, onResponse } = exportPolicy({
  name: "secrets-by-team",
  version: "1.0.0",
  // Only the responses that carry secret values.
  scope: () => ({
    onRequest: [],
    onResponse: [
      "secretsmanager:GetSecretValue",
      "secretsmanager:BatchGetSecretValue",
      "ssm:GetParameter",
      "ssm:GetParameters",
      "ssm:GetParametersByPath",
      "ssm:GetParameterHistory",
    ],
  }),
  onResponse(req, resp) {
    const claim = strAt(req.config, "groups_claim") ?? "groups";
    const groups = req.claimList(claim);
    const admins = req.configList("admin_groups", ["secrets-admin"]);
    if (groups.some((g) => admins.includes(g))) return ResponseDecision.allow();
    const owned = ownedPrefixes(req, groups);
    const owns = (name) => name !== "" && owned.some((p) => name.startsWith(p));
    const body = resp.body;
    const masks = [];
    const maskItem = (prefix, name, fields) => {
      if (!owns(name)) for (const f of fields) masks.push(Mask.redact(`${prefix}${f}`));
    };
    const op = `${req.service}:${req.action}`;
    if (op === "secretsmanager:GetSecretValue") {
      maskItem("", strAt(body, "Name") ?? req.paramStr("SecretId") ?? "", SECRET_FIELDS);
    } else if (op === "secretsmanager:BatchGetSecretValue") {
      items(body, "SecretValues").forEach((item, i) => maskItem(`SecretValues[${i}].`, strAt(item, "Name") ?? "", SECRET_FIELDS));
    } else if (op === "ssm:GetParameter") {
      maskItem("Parameter.", strAt(own(body, "Parameter"), "Name") ?? req.paramStr("Name") ?? "", ["Value"]);
    } else if (["ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"].includes(op)) {
      const fallback = req.paramStr("Name") ?? "";
      items(body, "Parameters").forEach((item, i) => maskItem(`Parameters[${i}].`, strAt(item, "Name") ?? fallback, ["Value"]));
    }
    return ResponseDecision.masks(masks);
  },
});

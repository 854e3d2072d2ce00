// `risky-actions` in JavaScript: the same rules, reasons and configuration as
// the Rust policy in policies/risky-actions (see its docs). Built by
// `make policies` into target/policies/js/risky-actions.wasm.

import { Arn, Network, Verdict, asciiLower, exportPolicy, glob, sortedValues } from "../../../policy-sdk/js/veil-policy.js";

const DENY = [
  "organizations:LeaveOrganization",
  "organizations:DeleteOrganization",
  "account:CloseAccount",
  "iam:DeleteAccountPasswordPolicy",
  "cloudtrail:StopLogging",
  "cloudtrail:DeleteTrail",
  "guardduty:DeleteDetector",
  "guardduty:DisassociateFromMasterAccount",
  "config:DeleteConfigurationRecorder",
  "config:StopConfigurationRecorder",
  "securityhub:DisableSecurityHub",
  "access-analyzer:DeleteAnalyzer",
];

const APPROVAL = [
  "iam:CreateUser",
  "iam:CreateAccessKey",
  "iam:CreateLoginProfile",
  "iam:UpdateLoginProfile",
  "iam:CreateServiceSpecificCredential",
  "iam:AttachUserPolicy",
  "iam:AttachRolePolicy",
  "iam:AttachGroupPolicy",
  "iam:PutUserPolicy",
  "iam:PutRolePolicy",
  "iam:PutGroupPolicy",
  "iam:AddUserToGroup",
  "iam:CreateRole",
  "iam:UpdateAssumeRolePolicy",
  "iam:CreatePolicyVersion",
  "iam:SetDefaultPolicyVersion",
  "iam:PassRole",
  "ssm:StartSession",
  "ssm:SendCommand",
  "lambda:AddPermission",
  "lambda:CreateFunctionUrlConfig",
  "s3:PutBucketPolicy",
  "s3:PutBucketAcl",
  "s3:DeletePublicAccessBlock",
  "s3:DeleteBucketPolicy",
  "kms:ScheduleKeyDeletion",
  "kms:PutKeyPolicy",
  "kms:CreateGrant",
  "secretsmanager:PutResourcePolicy",
  "ec2:ModifySnapshotAttribute",
  "ec2:ModifyImageAttribute",
];

const ADMIN_ROLE_PATTERNS = ["*admin*", "*OrganizationAccountAccessRole*", "*poweruser*"];
const OPEN_CIDRS = ["0.0.0.0/0", "::/0"];
const INGRESS_ACTIONS = ["ec2:AuthorizeSecurityGroupIngress", "ec2:ModifySecurityGroupRules"];

/** The first pattern matching `text`, ASCII case-insensitively. */
function firstMatch(patterns, text) {
  const lower = asciiLower(text);
  return patterns.find((p) => glob(asciiLower(p), lower));
}

/** Any string anywhere in `v` equal (after trimming) to one of `needles`. */
// The first string anywhere in `v` (objects in key order) that is a network
// open to the whole internet in any spelling, or one that contains a `listed`
// network wholly.
function findOpen(v, listed) {
  if (typeof v === "string") {
    const n = Network.parse(v);
    if (n === undefined) return undefined;
    const open = n.isWorldOpen() || listed.map((l) => Network.parse(l)).some((l) => l !== undefined && n.contains(l));
    return open ? v.replace(/^[ \t\n\f\r]+|[ \t\n\f\r]+$/g, "") : undefined;
  }
  const items = Array.isArray(v) ? v : v !== null && typeof v === "object" ? sortedValues(v) : [];
  for (const item of items) {
    const found = findOpen(item, listed);
    if (found !== undefined) return found;
  }
  return undefined;
}

export const { info, scope, onRequest, onResponse } = exportPolicy({
  name: "risky-actions",
  version: "1.1.0",
  // Only the listed operations need a decision; responses never do. Every
  // list is read here, so a misconfigured one rejects the policy at load.
  scope(config) {
    const onRequest = [...config.list("deny", DENY), ...config.list("approval", APPROVAL), "sts:AssumeRole",
      ...config.list("ingress_actions", INGRESS_ACTIONS)];
    config.list("admin_role_patterns", ADMIN_ROLE_PATTERNS);
    config.list("open_cidrs", OPEN_CIDRS);
    return { onRequest, onResponse: [] };
  },
  onRequest(req) {
    const action = req.qualifiedAction;
    let p = firstMatch(req.configList("deny", DENY), action);
    if (p !== undefined) return Verdict.deny(`${action} is forbidden by risky-actions (rule \`${p}\`)`);
    p = firstMatch(req.configList("approval", APPROVAL), action);
    if (p !== undefined) return Verdict.approvalRequired(`${action} changes identities or access (rule \`${p}\`)`);
    if (asciiLower(action) === "sts:assumerole") {
      const role = req.paramStr("RoleArn") ?? "";
      const arn = Arn.parse(role);
      const kind = arn !== undefined && arn.service === "iam" ? arn.resourceType() : undefined;
      if (kind === undefined || kind[0] !== "role") {
        return Verdict.approvalRequired(`sts:AssumeRole needs approval: RoleArn ${role} is not an IAM role ARN`);
      }
      p = firstMatch(req.configList("admin_role_patterns", ADMIN_ROLE_PATTERNS), role);
      if (p !== undefined) return Verdict.approvalRequired(`sts:AssumeRole into ${role} matches admin pattern \`${p}\``);
    }
    if (firstMatch(req.configList("ingress_actions", INGRESS_ACTIONS), action) !== undefined) {
      const cidr = findOpen(req.params, req.configList("open_cidrs", OPEN_CIDRS));
      if (cidr !== undefined) return Verdict.approvalRequired(`${action} opens the security group to ${cidr}`);
    }
    return Verdict.allow();
  },
});

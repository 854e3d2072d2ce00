"""`risky-actions` in Python: the same rules, reasons and configuration as
the Rust policy in policies/risky-actions (see its docs). Built by
`make policies` into target/policies/python/risky-actions.wasm."""

from veil_policy import Arn, Network, Policy, Scope, Verdict, ascii_lower, export, glob, is_world_open, sorted_items

DENY = [
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
]

APPROVAL = [
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
]

ADMIN_ROLE_PATTERNS = ["*admin*", "*OrganizationAccountAccessRole*", "*poweruser*"]
OPEN_CIDRS = ["0.0.0.0/0", "::/0"]
INGRESS_ACTIONS = ["ec2:AuthorizeSecurityGroupIngress", "ec2:ModifySecurityGroupRules"]


def first_match(patterns, text):
    """The first pattern matching `text`, ASCII case-insensitively."""
    text = ascii_lower(text)
    return next((p for p in patterns if glob(ascii_lower(p), text)), None)


def find_open(v, listed):
    """The first string anywhere in `v` (objects in key order) that is a
    network open to the whole internet in any spelling, or one that contains
    a `listed` network wholly."""
    if isinstance(v, str):
        n = Network.parse(v)
        if n is not None and (n.is_world_open() or any(l is not None and n.contains(l) for l in map(Network.parse, listed))):
            return v.strip(" \t\n\x0c\r")
        return None
    if isinstance(v, list):
        items = v
    elif isinstance(v, dict):
        items = [value for _, value in sorted_items(v)]
    else:
        return None
    for item in items:
        found = find_open(item, listed)
        if found is not None:
            return found
    return None


class RiskyActions(Policy):
    name = "risky-actions"
    version = "1.1.0"

    def scope(self, config):
        """Only the listed operations need a decision; responses never do.
        Every list is read here, so a misconfigured one rejects the policy."""
        on_request = config.list("deny", DENY) + config.list("approval", APPROVAL)
        on_request += ["sts:AssumeRole"] + config.list("ingress_actions", INGRESS_ACTIONS)
        config.list("admin_role_patterns", ADMIN_ROLE_PATTERNS)
        config.list("open_cidrs", OPEN_CIDRS)
        return Scope(on_request=on_request, on_response=[])

    def on_request(self, req):
        action = req.qualified_action
        p = first_match(req.config_list("deny", DENY), action)
        if p is not None:
            return Verdict.deny(f"{action} is forbidden by risky-actions (rule `{p}`)")
        p = first_match(req.config_list("approval", APPROVAL), action)
        if p is not None:
            return Verdict.approval_required(f"{action} changes identities or access (rule `{p}`)")
        if ascii_lower(action) == "sts:assumerole":
            role = req.param_str("RoleArn")
            role = "" if role is None else role
            arn = Arn.parse(role)
            kind = arn.resource_type() if arn is not None and arn.service == "iam" else None
            if kind is None or kind[0] != "role":
                return Verdict.approval_required(f"sts:AssumeRole needs approval: RoleArn {role} is not an IAM role ARN")
            p = first_match(req.config_list("admin_role_patterns", ADMIN_ROLE_PATTERNS), role)
            if p is not None:
                return Verdict.approval_required(f"sts:AssumeRole into {role} matches admin pattern `{p}`")
        if first_match(req.config_list("ingress_actions", INGRESS_ACTIONS), action) is not None:
            cidr = find_open(req.params, req.config_list("open_cidrs", OPEN_CIDRS))
            if cidr is not None:
                return Verdict.approval_required(f"{action} opens the security group to {cidr}")
        return Verdict.allow()


WitWorld = export(RiskyActions)

//! `risky-actions`: stops calls that change who can do what, or that destroy
//! an account's guard rails, before they reach AWS.
//!
//! - `deny`: account-destroying calls (leaving the organization, turning off
//!   CloudTrail or GuardDuty, deleting the password policy …) are refused.
//! - `approval`: identity-changing and access-opening calls (new users, keys,
//!   attached policies, shell sessions, resource policies …) wait for a human.
//! - `sts:AssumeRole` into a role whose ARN matches `admin_role_patterns`,
//!   and security-group ingress from anywhere (`open_cidrs`), need approval.
//!
//! Every list is configurable; entries are `service:Action` patterns with `*`
//! wildcards, matched without regard to case (as IAM does). A configured list
//! replaces the default one.

use serde_json::Value;
use veil_policy_sdk::{export_policy, Config, Policy, Request, Response, ResponseDecision, Scope, Verdict};

const DENY: &[&str] = &[
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

const APPROVAL: &[&str] = &[
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

const ADMIN_ROLE_PATTERNS: &[&str] = &[
    "*admin*",
    "*OrganizationAccountAccessRole*",
    "*poweruser*",
];

const OPEN_CIDRS: &[&str] = &["0.0.0.0/0", "::/0"];

const INGRESS_ACTIONS: &[&str] = &[
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:ModifySecurityGroupRules",
];

struct RiskyActions;

impl Policy for RiskyActions {
    const NAME: &'static str = "risky-actions";
    const VERSION: &'static str = "1.0.0";

    /// Only the listed operations need a decision; responses never do. Every
    /// list is read here, so a misconfigured one rejects the policy at load.
    fn scope(config: &Config) -> Scope {
        let mut on_request = config.list("deny", DENY);
        on_request.extend(config.list("approval", APPROVAL));
        on_request.push("sts:AssumeRole".into());
        on_request.extend(config.list("ingress_actions", INGRESS_ACTIONS));
        config.list("admin_role_patterns", ADMIN_ROLE_PATTERNS);
        config.list("open_cidrs", OPEN_CIDRS);
        Scope { on_request, on_response: Vec::new() }
    }

    fn on_request(req: &Request) -> Verdict {
        let action = req.qualified_action();
        if let Some(p) = first_match(&req.config_list("deny", DENY), &action) {
            return Verdict::Deny(format!("{action} is forbidden by risky-actions (rule `{p}`)"));
        }
        if let Some(p) = first_match(&req.config_list("approval", APPROVAL), &action) {
            return Verdict::ApprovalRequired(format!(
                "{action} changes identities or access (rule `{p}`)"
            ));
        }
        if action.eq_ignore_ascii_case("sts:AssumeRole") {
            let role = req.param_str("RoleArn").unwrap_or_default();
            if let Some(p) = first_match(&req.config_list("admin_role_patterns", ADMIN_ROLE_PATTERNS), role) {
                return Verdict::ApprovalRequired(format!(
                    "sts:AssumeRole into {role} matches admin pattern `{p}`"
                ));
            }
        }
        if first_match(&req.config_list("ingress_actions", INGRESS_ACTIONS), &action).is_some() {
            let open = req.config_list("open_cidrs", OPEN_CIDRS);
            if let Some(cidr) = find_string(req.params(), &open) {
                return Verdict::ApprovalRequired(format!(
                    "{action} opens the security group to {cidr}"
                ));
            }
        }
        Verdict::Allow
    }

    fn on_response(_req: &Request, _resp: &Response) -> ResponseDecision {
        ResponseDecision::allow()
    }
}

/// The first pattern that matches `text`, case-insensitively, `*` matching
/// any run of characters.
fn first_match<'a>(patterns: &'a [String], text: &str) -> Option<&'a str> {
    let text = text.to_ascii_lowercase();
    patterns
        .iter()
        .find(|p| glob(&p.to_ascii_lowercase(), &text))
        .map(String::as_str)
}

fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else { return rest.is_empty() };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Any string anywhere in `v` equal to one of `needles`.
fn find_string<'a>(v: &Value, needles: &'a [String]) -> Option<&'a str> {
    match v {
        Value::String(s) => needles.iter().find(|n| n.as_str() == s.trim()).map(String::as_str),
        Value::Array(items) => items.iter().find_map(|i| find_string(i, needles)),
        Value::Object(map) => map.values().find_map(|i| find_string(i, needles)),
        _ => None,
    }
}

export_policy!(RiskyActions);

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches() {
        assert!(glob("iam:create*", "iam:createuser"));
        assert!(glob("*admin*", "arn:aws:iam::1:role/admin"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("*ab*ab", "ab"));
    }
}

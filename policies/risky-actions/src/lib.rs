//! `risky-actions`: stops calls that change who can do what, or that destroy
//! an account's guard rails, before they reach AWS.
//!
//! - `deny`: account-destroying calls (leaving the organization, turning off
//!   CloudTrail or GuardDuty, deleting the password policy …) are refused.
//! - `approval`: identity-changing and access-opening calls (new users, keys,
//!   attached policies, shell sessions, resource policies …) wait for a human.
//! - `sts:AssumeRole` into a role whose ARN matches `admin_role_patterns`
//!   (or that is not a role ARN at all), and security-group ingress from
//!   anywhere, need approval. "Anywhere" is any spelling of a network that
//!   reaches the whole internet (`0.0.0.0/0`, `10.0.0.0/0`, `::0/0`,
//!   `2000::/3` …, see the SDK's `net` module), plus the networks listed in
//!   `open_cidrs`.
//!
//! Every list is configurable; entries are `service:Action` patterns with `*`
//! wildcards, matched without regard to case (as IAM does). A configured list
//! replaces the default one.

use serde_json::Value;
use veil_policy_sdk::net::{self, Arn, Network};
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
    const VERSION: &'static str = "1.1.0";

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
            let is_role = Arn::parse(role).is_some_and(|a| a.service == "iam" && a.resource_type().is_some_and(|(t, _)| t == "role"));
            if !is_role {
                return Verdict::ApprovalRequired(format!("sts:AssumeRole needs approval: RoleArn {role} is not an IAM role ARN"));
            }
            if let Some(p) = first_match(&req.config_list("admin_role_patterns", ADMIN_ROLE_PATTERNS), role) {
                return Verdict::ApprovalRequired(format!(
                    "sts:AssumeRole into {role} matches admin pattern `{p}`"
                ));
            }
        }
        if first_match(&req.config_list("ingress_actions", INGRESS_ACTIONS), &action).is_some() {
            let open = req.config_list("open_cidrs", OPEN_CIDRS);
            if let Some(cidr) = find_open(req.params(), &open) {
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

/// The first string anywhere in `v` (objects in key order) that is a
/// network open to the whole internet in any spelling, or one that contains
/// `listed` networks wholly.
fn find_open<'a>(v: &'a Value, listed: &[String]) -> Option<&'a str> {
    match v {
        Value::String(s) => {
            let open = net::is_world_open(s)
                || Network::parse(s).is_some_and(|n| listed.iter().filter_map(|l| Network::parse(l)).any(|l| n.contains(&l)));
            open.then_some(s.trim_matches(|c: char| c.is_ascii_whitespace()))
        }
        Value::Array(items) => items.iter().find_map(|i| find_open(i, listed)),
        Value::Object(map) => map.values().find_map(|i| find_open(i, listed)),
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

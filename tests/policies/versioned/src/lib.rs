//! A policy built twice with different versions (`VEIL_FIXTURE_VERSION` at
//! build time), for the hot-reload tests. Every version allows every call;
//! version 2 also denies `iam:DeleteUser`, so a test can tell which one
//! decides. `VEIL_FIXTURE_NAME` renames it, so the memory benchmark can
//! load many distinct policies.

use veil_policy_sdk::{export_policy, Policy, Request, Response, ResponseDecision, Verdict};

struct Versioned;

const VERSION: &str = match option_env!("VEIL_FIXTURE_VERSION") {
    Some(v) => v,
    None => "1.0.0",
};

const NAME: &str = match option_env!("VEIL_FIXTURE_NAME") {
    Some(n) => n,
    None => "versioned",
};

impl Policy for Versioned {
    const NAME: &'static str = NAME;
    const VERSION: &'static str = VERSION;

    fn on_request(req: &Request) -> Verdict {
        if VERSION.starts_with('2') && req.action() == "DeleteUser" {
            return Verdict::Deny(format!("versioned {VERSION} denies iam:DeleteUser"));
        }
        Verdict::Allow
    }

    fn on_response(_req: &Request, _resp: &Response) -> ResponseDecision {
        ResponseDecision::allow()
    }
}

export_policy!(Versioned);

//! The closed set of AWS service and operation names: every operation of
//! every service in botocore's models (`models/operations.json`, generated
//! by `models/generate.py` from the same botocore version as
//! `services.json`), by SigV4 signing name.
//!
//! Used where a name must not be caller text: a metric label is one of
//! these names (borrowed from the table, so `'static`) or nothing.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Deserialize)]
struct Table {
    #[serde(borrow)]
    operations: HashMap<&'static str, Vec<&'static str>>,
}

fn table() -> &'static HashMap<&'static str, Vec<&'static str>> {
    static TABLE: OnceLock<HashMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let t: Table = serde_json::from_str(include_str!("models/operations.json")).expect("operations.json is valid (generated)");
        // Sorted by the generator; sorted again so a lookup never depends on it.
        t.operations
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_unstable();
                (k, v)
            })
            .collect()
    })
}

/// The table's name for the service with signing name `service`, if AWS has one.
pub fn service(service: &str) -> Option<&'static str> {
    table().get_key_value(service).map(|(k, _)| *k)
}

/// The table's name for operation `action` of `service`, if it has one.
pub fn operation(service: &str, action: &str) -> Option<&'static str> {
    let ops = table().get(service)?;
    ops.binary_search(&action).ok().map(|i| ops[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_come_back_from_the_table() {
        assert_eq!(service("iam"), Some("iam"));
        assert_eq!(operation("iam", "CreateUser"), Some("CreateUser"));
        assert_eq!(operation("sts", "AssumeRoleWithWebIdentity"), Some("AssumeRoleWithWebIdentity"));
        assert_eq!(operation("s3", "GetObject"), Some("GetObject"));
        assert_eq!(operation("secretsmanager", "GetSecretValue"), Some("GetSecretValue"));
        for (s, a) in [("iam", "createuser"), ("iam", "CreateUser\n"), ("zz\",verdict=\"allow", "CreateUser"), ("", ""), ("iam", "GetSecretValue")] {
            assert_eq!(operation(s, a), None, "{s:?} {a:?}");
        }
        assert_eq!(service("zz"), None);
        // Every service of the classification table is known here.
        let services: serde_json::Value = serde_json::from_str(include_str!("models/services.json")).unwrap();
        for name in services["services"].as_object().unwrap().keys() {
            assert!(service(name).is_some(), "{name}");
        }
    }
}

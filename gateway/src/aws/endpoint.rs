//! Where a call goes: region and service names checked once, wherever they
//! enter (SigV4 scope, presigned query, Bearer headers), and the upstream
//! host built from those checked parts.
//!
//! Invariants: a region is accepted only in the syntax of an AWS partition
//! (`partitions.json`, generated from botocore's endpoint data: a partition
//! prefix, a word, a number, lower-case ASCII only); a service only as a
//! known signing name. The host Veil connects to is `<prefix>.<region>.<dns
//! suffix of the region's partition>` (or `<prefix>.amazonaws.com` for the
//! global services), built from those parts as an [`Authority`] and checked
//! to end in the partition's suffix before it is returned; the only other
//! host a call can reach is the configured `upstream.endpoint`. No caller
//! text is ever formatted into a URL that is parsed afterwards.

use std::str::FromStr;
use std::sync::OnceLock;

use http::uri::Authority;
use serde::Deserialize;

use super::Model;
use crate::policy::host::truncate;

/// Longest region name accepted (the longest AWS region today has 14 characters).
pub const MAX_REGION: usize = 32;
/// Longest service signing name accepted.
pub const MAX_SERVICE: usize = 64;

/// Why a region, service or endpoint was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    /// Not a region of any AWS partition.
    #[error("{0:?} is not an AWS region (expected lower-case <area>-<word>-<number>, such as us-east-1, in a known partition)")]
    Region(String),
    /// Not a service signing name.
    #[error("{0:?} is not an AWS service signing name")]
    Service(String),
    /// The host built for the call is not the service's endpoint.
    #[error("refusing to send the call to {0:?}: not an AWS endpoint of the region's partition")]
    Host(String),
}

/// An AWS partition: the region prefixes it owns and its DNS suffix.
#[derive(Debug, Deserialize)]
pub struct Partition {
    /// `aws`, `aws-cn` …
    pub partition: String,
    /// DNS suffix of its endpoints.
    pub suffix: String,
    prefixes: Vec<String>,
}

#[derive(Deserialize)]
struct Partitions {
    partitions: Vec<Partition>,
}

/// Every partition (generated data; see `models/generate.py`).
pub fn partitions() -> &'static [Partition] {
    static TABLE: OnceLock<Partitions> = OnceLock::new();
    &TABLE
        .get_or_init(|| serde_json::from_str(include_str!("models/partitions.json")).expect("partitions.json is valid (generated)"))
        .partitions
}

impl Partition {
    /// Whether `region` is `<prefix>-<word>-<number>` for one of this
    /// partition's prefixes (botocore's `^prefix\-\w+\-\d+$`, lower case).
    fn owns(&self, region: &str) -> bool {
        self.prefixes.iter().any(|p| {
            let Some(rest) = region.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix('-')) else { return false };
            let Some((word, number)) = rest.split_once('-') else { return false };
            !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && (1..=3).contains(&number.len())
                && number.bytes().all(|b| b.is_ascii_digit())
        })
    }
}

/// The partition of a well-formed region; the one check every entry path uses.
pub fn check_region(region: &str) -> Result<&'static Partition, EndpointError> {
    if region.is_empty() || region.len() > MAX_REGION {
        return Err(EndpointError::Region(truncate(region, MAX_REGION + 8).to_string()));
    }
    partitions().iter().find(|p| p.owns(region)).ok_or_else(|| EndpointError::Region(truncate(region, MAX_REGION + 8).to_string()))
}

/// A known service signing name (`[a-z0-9-]`, in the operation table).
pub fn check_service(service: &str) -> Result<(), EndpointError> {
    let syntax = !service.is_empty()
        && service.len() <= MAX_SERVICE
        && service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if syntax && super::table().services.contains_key(service) {
        Ok(())
    } else {
        Err(EndpointError::Service(truncate(service, MAX_SERVICE + 8).to_string()))
    }
}

/// The host of `model`'s endpoint in `region`, built from checked parts.
pub fn host(model: &Model, region: &str) -> Result<Authority, EndpointError> {
    let partition = check_region(region)?;
    let prefix_ok = !model.prefix.is_empty()
        && model.prefix.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !prefix_ok {
        return Err(EndpointError::Host(model.prefix.clone()));
    }
    let host = if model.global && partition.partition == "aws" {
        format!("{}.{}", model.prefix, partition.suffix)
    } else {
        format!("{}.{region}.{}", model.prefix, partition.suffix)
    };
    let authority = Authority::from_str(&host).map_err(|_| EndpointError::Host(host.clone()))?;
    // Belt and braces: what was parsed is a bare host name in the partition.
    let dot_suffix = format!(".{}", partition.suffix);
    if authority.as_str() != host || authority.port().is_some() || !authority.host().ends_with(&dot_suffix) {
        return Err(EndpointError::Host(host));
    }
    Ok(authority)
}

/// A lower-case DNS name: labels of `[a-z0-9-]`, 1-63 characters, not
/// starting or ending with `-`; 253 characters at most.
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The bucket of an S3 virtual-hosted request: `host` (no port) is
/// `<bucket>.<name>` for one of `names`. `Ok(None)`: path style (the host
/// is one of the names, an IP address or `localhost`, or no names are
/// configured). A host under none of the names, or a bucket that is not a
/// DNS-compatible bucket name, is refused.
pub fn virtual_bucket<'a>(host: &'a str, names: &[String]) -> Result<Option<&'a str>, String> {
    if names.is_empty() || host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Ok(None);
    }
    for name in names {
        if host.eq_ignore_ascii_case(name) {
            return Ok(None);
        }
        let Some(bucket) = host.len().checked_sub(name.len() + 1).and_then(|cut| {
            (host.is_char_boundary(cut) && host[cut..].eq_ignore_ascii_case(&format!(".{name}"))).then(|| &host[..cut])
        }) else {
            continue;
        };
        let ok = (3..=63).contains(&bucket.len())
            && is_dns_name(bucket)
            && !bucket.contains("..")
            && bucket.parse::<std::net::Ipv4Addr>().is_err();
        return if ok { Ok(Some(bucket)) } else { Err(format!("{:?} is not a valid S3 bucket name (3-63 lower-case letters, digits, dots and hyphens)", truncate(bucket, 80))) };
    }
    Err(format!("Host {:?} is not one of listener.host_names or a bucket under one", truncate(host, 256)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(service: &str) -> &'static Model {
        &super::super::table().services[service][0]
    }

    #[test]
    fn every_partition_builds_hosts_in_its_suffix() {
        let cases = [
            ("us-east-1", "secretsmanager.us-east-1.amazonaws.com"),
            ("eu-central-2", "secretsmanager.eu-central-2.amazonaws.com"),
            ("cn-north-1", "secretsmanager.cn-north-1.amazonaws.com.cn"),
            ("us-gov-west-1", "secretsmanager.us-gov-west-1.amazonaws.com"),
            ("us-iso-east-1", "secretsmanager.us-iso-east-1.c2s.ic.gov"),
            ("us-isob-east-1", "secretsmanager.us-isob-east-1.sc2s.sgov.gov"),
            ("eu-isoe-west-1", "secretsmanager.eu-isoe-west-1.cloud.adc-e.uk"),
            ("us-isof-south-1", "secretsmanager.us-isof-south-1.csp.hci.ic.gov"),
            ("eusc-de-east-1", "secretsmanager.eusc-de-east-1.amazonaws.eu"),
        ];
        for (region, want) in cases {
            assert_eq!(host(model("secretsmanager"), region).unwrap().as_str(), want, "{region}");
        }
        // Every generated partition is covered above.
        let covered: std::collections::BTreeSet<&str> = cases.iter().map(|(r, _)| check_region(r).unwrap().partition.as_str()).collect();
        assert_eq!(covered.len(), partitions().len());
        assert_eq!(host(model("iam"), "us-east-1").unwrap().as_str(), "iam.amazonaws.com");
        assert_eq!(host(model("iam"), "cn-north-1").unwrap().as_str(), "iam.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn hostile_regions_are_refused() {
        let long = "us-east-1".to_string() + &"1".repeat(60);
        for bad in [
            "x@127.0.0.1:8443/", "host#", "a/b", "..", "us east 1", "us-east-1 ", "us%2Deast-1", "US-EAST-1", "us-East-1",
            "", "us-east-", "us--1", "us-east-1a", "zz-east-1", "us-east-1.evil.com", "us-east-1:443", "us-ea\u{17f}t-1",
            "us-east-1\n", "us-east_x-1", "us-gov-west-x", long.as_str(),
        ] {
            assert!(check_region(bad).is_err(), "{bad:?} accepted");
            assert!(host(model("s3"), bad).is_err(), "{bad:?} built a host");
        }
    }

    #[test]
    fn virtual_hosted_buckets_sit_under_a_configured_name() {
        let names = vec!["veil.example.com".to_string()];
        assert_eq!(virtual_bucket("my-bucket.veil.example.com", &names), Ok(Some("my-bucket")));
        assert_eq!(virtual_bucket("logs.2024.veil.example.com", &names), Ok(Some("logs.2024")));
        assert_eq!(virtual_bucket("veil.example.com", &names), Ok(None));
        assert_eq!(virtual_bucket("127.0.0.1", &names), Ok(None));
        assert_eq!(virtual_bucket("anything.else", &[]), Ok(None));
        for bad in ["my_bucket.veil.example.com", "ab.veil.example.com", "-x-.veil.example.com", "a..b.veil.example.com", "10.0.0.1.veil.example.com", "b.evil.com", "xveil.example.com"] {
            assert!(virtual_bucket(bad, &names).is_err(), "{bad}");
        }
        assert!(is_dns_name("veil.example.com") && !is_dns_name("Veil.com") && !is_dns_name("a..b") && !is_dns_name("-a.com"));
    }

    #[test]
    fn services_are_known_signing_names() {
        assert!(check_service("secretsmanager").is_ok());
        assert!(check_service("s3").is_ok());
        for bad in ["", "S3", "s3@x", "secretsmanager.evil", "no-such-service", &"a".repeat(65)] {
            assert!(check_service(bad).is_err(), "{bad:?}");
        }
    }
}

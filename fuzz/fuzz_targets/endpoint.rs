//! Upstream targets: whatever region and service text a caller sends, a host
//! is built only for a known service and a region of a partition, and it is
//! always `<prefix>.<region>.<suffix>` (or `<prefix>.<suffix>` for a global
//! service) ending in that partition's DNS suffix, with no port, user info or
//! path: the gateway's credential can only ever go to AWS.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::aws::{endpoint, model_of};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (service, region) = text.split_once('\n').unwrap_or(("s3", &text));
    let region_ok = endpoint::check_region(region);
    if endpoint::check_service(service).is_err() {
        return;
    }
    let Some(model) = model_of(service) else { panic!("a checked service {service:?} has no model") };
    match (endpoint::host(model, region), region_ok) {
        (Ok(authority), Ok(partition)) => {
            let host = authority.as_str();
            assert!(host.ends_with(&format!(".{}", partition.suffix)), "{host} is outside {}", partition.partition);
            assert!(authority.port().is_none() && !host.contains(['@', '/', ':', '?', '#']), "{host}");
            let regional = format!("{}.{region}.{}", model.prefix, partition.suffix);
            let global = format!("{}.{}", model.prefix, partition.suffix);
            assert!(host == regional || (model.global && host == global), "{host} is not the endpoint of {service} in {region}");
        }
        (Err(_), Err(_)) => {}
        (Ok(a), Err(e)) => panic!("built {a} for a refused region: {e}"),
        (Err(e), Ok(_)) => panic!("no host for an accepted region {region:?}: {e}"),
    }
});

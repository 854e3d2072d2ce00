//! The identify stage alone, for the cost ladder (bench/gateway.py), which
//! cannot run the pipeline without one: what a caller's proof of identity
//! costs each way in, timed in process on one thread (no I/O), with the
//! calls `pipeline` makes. An OIDC token (`Authorization: Bearer`: the
//! gateway's `Verifier`, keys already fetched; after the first call the
//! token is remembered, so this times what every later call pays) and a SigV4 signature with
//! Veil session credentials (signature claims parsed, session token
//! checked — after the first call, found by its digest —, body hashed,
//! signature verified).
//!
//! `identify_bench <veil.toml> <token> <request.json> [iterations]`: a
//! gateway's config (its issuers and session key), a token of one of those
//! issuers, and a request signed with that gateway's session credentials as
//! `{"method", "path", "headers": {name: value}, "body"}`. Prints
//! `{"oidc_us": …, "sigv4_session_us": …}`, medians.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use veil_gateway::config::Config;
use veil_gateway::identity::Verifier;
use veil_gateway::sigv4;
use veil_gateway::sts::SessionKeys;

fn median_us(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, token, request, ..] = &args[..] else {
        anyhow::bail!("usage: identify_bench <veil.toml> <token> <request.json> [iterations]");
    };
    let iterations: usize = args.get(4).map(|n| n.parse()).transpose()?.unwrap_or(2000);
    let cfg = Config::load(Path::new(config))?;
    let key_file = cfg.sts.session_key_file.as_deref().ok_or_else(|| anyhow::anyhow!("sts.session_key_file is not set"))?;
    let sessions = SessionKeys::new(std::fs::read(cfg.resolve(key_file))?.trim_ascii().to_vec());
    let max_skew = Duration::from_secs(cfg.sts.max_clock_skew_secs);
    let req: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(request)?)?;
    let text = |k: &str| req[k].as_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("request.json: {k} is missing"));
    let mut builder = http::Request::builder().method(text("method")?.as_str()).uri(text("path")?);
    for (k, v) in req["headers"].as_object().into_iter().flatten() {
        builder = builder.header(k, v.as_str().unwrap_or_default());
    }
    let body = text("body")?;
    let (parts, ()) = builder.body(())?.into_parts();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let verifier = rt.block_on(Verifier::new(&cfg.identity))?;
    let mut oidc = Vec::with_capacity(iterations);
    let mut sigv4 = Vec::with_capacity(iterations);
    // Once each untimed: the first call may fetch keys or fill caches.
    for i in 0..=iterations {
        let started = Instant::now();
        rt.block_on(verifier.verify(token))?;
        let took = started.elapsed();
        let started = Instant::now();
        let signed = sigv4::parse(&parts)?;
        let session = sessions.verify(&signed.access_key, signed.security_token.as_deref().unwrap_or_default(), SystemTime::now())?;
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        sigv4::verify(&parts, &signed, &session.secret, Some(&hash), SystemTime::now(), max_skew)?;
        if i > 0 {
            oidc.push(took);
            sigv4.push(started.elapsed());
        }
    }
    println!("{}", serde_json::json!({"oidc_us": median_us(oidc), "sigv4_session_us": median_us(sigv4)}));
    Ok(())
}

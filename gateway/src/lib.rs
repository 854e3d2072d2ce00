//! Veil: a gateway between AI agents and the AWS API that runs sandboxed
//! WebAssembly policies on every call, masks secrets in responses and audits
//! everything. The binary (`src/main.rs`) is a thin CLI over this library.
#![forbid(unsafe_code)]

pub mod audit;
pub mod admin;
pub mod approvals;
pub mod aws;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod detect;
pub mod doc;
pub mod identity;
pub mod json;
pub mod listener;
pub mod logging;
pub mod masking;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod runs;
pub mod serve;
pub mod sigv4;
pub mod sts;
pub mod trust;
pub mod upstream;

/// mimalloc instead of glibc's allocator: a call allocates and frees whole
/// JSON trees, and glibc's free/consolidate was a sixth of the CPU time of a
/// large response. In the library so tests and benchmarks measure what the
/// binary runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error and its sources, joined with `: `, for messages and logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

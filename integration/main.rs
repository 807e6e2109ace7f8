//! The integration test binary: one binary, one module per topic.
//!
//! Everything a test needs (registries, a token server, dockerd, skopeo, portcullis
//! itself) lives in [`harness`]; the topic modules read like sentences on top of it.
//! Run it through `integration/run.sh`, which puts the whole run in a private network
//! namespace so nothing can leave loopback.

mod harness;

mod api;
mod blob_cache;
mod bypass;
mod cli;
mod conformance;
mod core;
mod exhaust;
mod forward;
mod gate;
mod h2;
mod harness_selftest;
mod ops;
mod outages;
mod policy;
mod policy_sources;
mod referrers;
mod search;
mod sessions;
mod shaped;
mod signatures;
mod sigstore_signed;
mod upstream_faults;

//! Prometheus metrics, registered on a registry that is passed in (never the global one).
//!
//! Every label comes from a bounded set: operations and decisions are enums, registries are
//! the configured hosts (anything else is `other`), statuses are classes. A repository name
//! is never a label, so the number of series does not grow with what clients pull.

use std::collections::HashSet;

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

const NS: &str = "portcullis";

pub struct Metrics {
    registries: HashSet<String>,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub bytes: IntCounterVec,
    pub cache: IntCounterVec,
    pub in_flight: IntGaugeVec,
    pub connections: IntGaugeVec,
    pub connections_closed: IntCounterVec,
    pub connection_limit_waits: IntCounterVec,
    pub resolutions: IntCounterVec,
    pub build_info: IntGauge,
    pub tls_handshake_failures: IntCounter,
    pub proxy_connects: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_generation: IntGauge,
    pub staged_bytes: IntGauge,
    pub search_failures: IntCounterVec,
    pub certificates_issued: IntCounter,
    pub policy_undecided: IntCounter,
    pub body_aborts: IntCounterVec,
    pub staging_sessions: IntGauge,
    pub staging_sessions_refused: IntCounterVec,
    pub staging_sessions_expired: IntCounter,
    pub referrers_index_failures: IntCounterVec,
    pub signature_reads: IntCounterVec,
    pub blob_cache_bytes: IntGauge,
    pub blob_cache_evictions: IntCounter,
    pub blob_cache_corrupt: IntCounter,
}

/// Where signatures are read from, and what a read found.
pub const SIGNATURE_STORES: [&str; 2] = ["lookaside", "attachment"];
pub const SIGNATURE_READ_RESULTS: [&str; 3] = ["found", "none", "error"];

/// The listeners, as their metric label.
pub const LISTENERS: [&str; 4] = ["registry", "mirror", "proxy", "admin"];
/// Why an upstream body was cut off before the client had it whole.
pub const BODY_ABORT_REASONS: [&str; 4] = [
    "digest_mismatch",
    "truncated",
    "idle_timeout",
    "upstream_error",
];

impl Metrics {
    /// What the blob cache reports into.
    pub fn blob_cache_counters(&self) -> crate::store::blobs::Counters {
        crate::store::blobs::Counters {
            evictions: self.blob_cache_evictions.clone(),
            bytes: self.blob_cache_bytes.clone(),
        }
    }

    pub fn new(
        registry: &Registry,
        configured: impl IntoIterator<Item = String>,
    ) -> Result<Metrics, prometheus::Error> {
        let latency = exponential_buckets(0.001, 2.5, 14)?;
        let m = Metrics {
            registries: configured.into_iter().collect(),
            requests: IntCounterVec::new(
                Opts::new(
                    "requests_total",
                    "Requests answered, by operation, registry, decision and status class",
                )
                .namespace(NS),
                &["operation", "registry", "decision", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time to response headers, by operation",
                )
                .namespace(NS)
                .buckets(latency.clone()),
                &["operation"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "upstream_request_duration_seconds",
                    "Upstream time to response headers, by registry",
                )
                .namespace(NS)
                .buckets(latency),
                &["registry"],
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "upstream_errors_total",
                    "Upstream failures by registry and kind (connect, timeout, protocol, status)",
                )
                .namespace(NS),
                &["registry", "kind"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "bytes_total",
                    "Body bytes proxied, by direction (download = to clients) and registry",
                )
                .namespace(NS),
                &["direction", "registry"],
            )?,
            cache: IntCounterVec::new(
                Opts::new(
                    "cache_requests_total",
                    "Cache lookups by cache and result (hit, miss)",
                )
                .namespace(NS),
                &["cache", "result"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new("in_flight_requests", "Requests being handled, by listener")
                    .namespace(NS),
                &["listener"],
            )?,
            connections: IntGaugeVec::new(
                Opts::new("open_connections", "Open client connections, by listener").namespace(NS),
                &["listener"],
            )?,
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "connections_closed_total",
                    "Client connections portcullis closed, by listener and reason (header_timeout: no complete request in time; idle_timeout: keep-alive or tunnel idle; evicted: closed to make room at max_connections)",
                )
                .namespace(NS),
                &["listener", "reason"],
            )?,
            connection_limit_waits: IntCounterVec::new(
                Opts::new(
                    "connection_limit_waits_total",
                    "New connections that waited to be served because every connection of the listener had a request in flight",
                )
                .namespace(NS),
                &["listener"],
            )?,
            resolutions: IntCounterVec::new(
                Opts::new(
                    "short_name_resolutions_total",
                    "Short names resolved, by the registry that served them",
                )
                .namespace(NS),
                &["registry"],
            )?,
            build_info: IntGauge::with_opts(
                Opts::new("build_info", "Always 1; the version is a label")
                    .namespace(NS)
                    .const_label("version", env!("CARGO_PKG_VERSION")),
            )?,
            tls_handshake_failures: IntCounter::with_opts(
                Opts::new(
                    "tls_handshake_failures_total",
                    "Client TLS handshakes that failed or timed out",
                )
                .namespace(NS),
            )?,
            proxy_connects: IntCounterVec::new(
                Opts::new(
                    "proxy_connects_total",
                    "Forward-proxy requests by result (intercept, tunnel, plain_http, refused, unauthorized)",
                )
                .namespace(NS),
                &["result"],
            )?,
            policy_decisions: IntCounterVec::new(
                Opts::new("policy_decisions_total", "Policy decisions by action and rule id (\"default\" when no rule matched)")
                    .namespace(NS),
                &["action", "rule"],
            )?,
            policy_reloads: IntCounterVec::new(
                Opts::new("policy_reloads_total", "Policy loads by result (ok, error)").namespace(NS),
                &["result"],
            )?,
            policy_generation: IntGauge::with_opts(
                Opts::new("policy_generation", "Generation of the policy in force (1 at start, +1 per good reload)")
                    .namespace(NS),
            )?,
            staged_bytes: IntGauge::with_opts(
                Opts::new("staged_push_bytes", "Bytes of pushes staged on disk awaiting their manifest").namespace(NS),
            )?,
            search_failures: IntCounterVec::new(
                Opts::new("search_failures_total", "Search registries skipped in a docker search, by registry")
                    .namespace(NS),
                &["registry"],
            )?,
            certificates_issued: IntCounter::with_opts(
                Opts::new("tls_certificates_issued_total", "Interception certificates issued by the local CA")
                    .namespace(NS),
            )?,
            policy_undecided: IntCounter::with_opts(
                Opts::new(
                    "policy_undecided_total",
                    "Requests refused because a rule could not be evaluated (a store failed)",
                )
                .namespace(NS),
            )?,
            body_aborts: IntCounterVec::new(
                Opts::new(
                    "body_aborts_total",
                    "Upstream bodies cut off before reaching the client whole, by registry and reason (digest_mismatch, truncated, idle_timeout, upstream_error)",
                )
                .namespace(NS),
                &["registry", "reason"],
            )?,
            staging_sessions: IntGauge::with_opts(
                Opts::new("staging_sessions", "Upload sessions of staged pushes open now").namespace(NS),
            )?,
            staging_sessions_refused: IntCounterVec::new(
                Opts::new(
                    "staging_sessions_refused_total",
                    "Upload sessions refused with 429 because too many were open, by limit (client, all)",
                )
                .namespace(NS),
                &["scope"],
            )?,
            staging_sessions_expired: IntCounter::with_opts(
                Opts::new(
                    "staging_sessions_expired_total",
                    "Upload sessions dropped because they received no byte within staging_idle_session_secs",
                )
                .namespace(NS),
            )?,
            referrers_index_failures: IntCounterVec::new(
                Opts::new(
                    "referrers_index_failures_total",
                    "Referrers tag-schema indexes portcullis could not update after the upstream accepted a manifest (or its delete), by registry",
                )
                .namespace(NS),
                &["registry"],
            )?,
            signature_reads: IntCounterVec::new(
                Opts::new(
                    "signature_reads_total",
                    "Signature store reads of the signature policy, by registry, store (lookaside, attachment) and result (found, none, error)",
                )
                .namespace(NS),
                &["registry", "store", "result"],
            )?,
            blob_cache_bytes: IntGauge::with_opts(
                Opts::new("blob_cache_bytes", "Bytes of verified blobs in the blob cache")
                    .namespace(NS),
            )?,
            blob_cache_evictions: IntCounter::with_opts(
                Opts::new(
                    "blob_cache_evictions_total",
                    "Blobs removed from the blob cache to stay within cache.blobs_max_bytes",
                )
                .namespace(NS),
            )?,
            blob_cache_corrupt: IntCounter::with_opts(
                Opts::new(
                    "blob_cache_corrupt_total",
                    "Cached blobs found not to match their digest while served (cut off, evicted, fetched again on the next request)",
                )
                .namespace(NS),
            )?,
        };
        // Every bounded label set exists from the start at 0, so a dashboard's rate() over
        // a failure that has not happened yet is 0 rather than nothing.
        for listener in LISTENERS {
            for reason in ["header_timeout", "idle_timeout", "evicted"] {
                m.connections_closed.with_label_values(&[listener, reason]);
            }
            m.connection_limit_waits.with_label_values(&[listener]);
        }
        for registry in m.registries.iter().map(String::as_str).chain(["other"]) {
            for reason in BODY_ABORT_REASONS {
                m.body_aborts.with_label_values(&[registry, reason]);
            }
        }
        registry.register(Box::new(m.policy_undecided.clone()))?;
        registry.register(Box::new(m.body_aborts.clone()))?;
        // Both scopes exist from the start, so a rate() over them is 0 rather than nothing.
        for scope in ["client", "all"] {
            m.staging_sessions_refused.with_label_values(&[scope]);
        }
        registry.register(Box::new(m.staging_sessions.clone()))?;
        registry.register(Box::new(m.staging_sessions_refused.clone()))?;
        registry.register(Box::new(m.staging_sessions_expired.clone()))?;
        for registry in m.registries.iter().map(String::as_str).chain(["other"]) {
            m.referrers_index_failures.with_label_values(&[registry]);
        }
        registry.register(Box::new(m.referrers_index_failures.clone()))?;
        for registry in m.registries.iter().map(String::as_str).chain(["other"]) {
            for store in SIGNATURE_STORES {
                for result in SIGNATURE_READ_RESULTS {
                    m.signature_reads
                        .with_label_values(&[registry, store, result]);
                }
            }
        }
        registry.register(Box::new(m.signature_reads.clone()))?;
        for cache in ["manifest", "signature_verdicts", "blobs"] {
            for result in ["hit", "miss"] {
                m.cache.with_label_values(&[cache, result]);
            }
        }
        m.cache.with_label_values(&["blobs", "coalesced"]);
        registry.register(Box::new(m.blob_cache_bytes.clone()))?;
        registry.register(Box::new(m.blob_cache_evictions.clone()))?;
        registry.register(Box::new(m.blob_cache_corrupt.clone()))?;
        registry.register(Box::new(m.proxy_connects.clone()))?;
        registry.register(Box::new(m.policy_decisions.clone()))?;
        registry.register(Box::new(m.policy_reloads.clone()))?;
        registry.register(Box::new(m.policy_generation.clone()))?;
        registry.register(Box::new(m.staged_bytes.clone()))?;
        registry.register(Box::new(m.search_failures.clone()))?;
        registry.register(Box::new(m.certificates_issued.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.cache.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connections_closed.clone()))?;
        registry.register(Box::new(m.connection_limit_waits.clone()))?;
        registry.register(Box::new(m.resolutions.clone()))?;
        registry.register(Box::new(m.build_info.clone()))?;
        registry.register(Box::new(m.tls_handshake_failures.clone()))?;
        m.build_info.set(1);
        Ok(m)
    }

    /// A registry label value: a configured host, or `other`/`none`. Never free text.
    pub fn registry_label<'a>(&self, host: Option<&'a str>) -> &'a str {
        match host {
            Some(h) if self.registries.contains(h) => h,
            Some(_) => "other",
            None => "none",
        }
    }

    /// Count an upstream body that failed on its way to the client.
    pub fn body_aborted(&self, registry: &str, reason: &str) {
        self.body_aborts
            .with_label_values(&[self.registry_label(Some(registry)), reason])
            .inc();
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_labels_are_bounded() {
        let m = Metrics::new(&Registry::new(), ["docker.io".to_owned()]).expect("metrics");
        assert_eq!(m.registry_label(Some("docker.io")), "docker.io");
        assert_eq!(m.registry_label(Some("evil.example.net")), "other");
        assert_eq!(m.registry_label(None), "none");
    }

    #[test]
    fn every_family_is_prefixed_and_registered_on_the_given_registry() {
        let registry = Registry::new();
        let m = Metrics::new(&registry, []).expect("metrics");
        m.requests
            .with_label_values(&["pull", "none", "allow", "2xx"])
            .inc();
        let families = registry.gather();
        assert!(families.len() >= 3);
        assert!(families.iter().all(|f| f.name().starts_with("portcullis_")));
        assert!(prometheus::default_registry()
            .gather()
            .iter()
            .all(|f| !f.name().starts_with("portcullis_")));
    }
}

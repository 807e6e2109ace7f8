//! The last stage: what happened to a request, and the one place it is recorded.
//!
//! While a request moves through the stages, its [`Trail`] is filled in by the stage that
//! knows each fact (the name's registry once the name is parsed, the target once a
//! registry serves it). When the response is decided, the [`Outcome`] is built from the
//! trail and the result, never from response headers or status codes, and [`Outcome::record`]
//! writes the request metrics and the access line (at the end of the body, when it is
//! known whether the client got all of it: [`super::access`]).

use http::Response;
use std::sync::OnceLock;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::{status_class, Metrics};
use crate::pipeline::plan::Target;

use super::access::{self, AccessLine};
use super::intent::Intent;

/// Facts about one request, set by the stage that learns them; each is set at most once
/// (the first setter wins: a search that tried several registries keeps the one that
/// served).
#[derive(Debug, Default)]
pub(crate) struct Trail {
    named: OnceLock<String>,
    served: OnceLock<Target>,
}

impl Trail {
    /// The registry the request's name (or connection) names, before resolution.
    pub fn named(&self, registry: &str) {
        let _ = self.named.set(registry.to_owned());
    }

    /// The registry and repository the answer comes from.
    pub fn served(&self, target: &Target) {
        let _ = self.served.set(target.clone());
    }
}

/// How the request was decided, for the `decision` label and the access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    Allow,
    Deny,
    Error,
}

impl Decided {
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::Allow => "allow",
            Decided::Deny => "deny",
            Decided::Error => "error",
        }
    }

    pub fn of(result: &Result<Response<ProxyBody>, ProxyError>) -> Decided {
        match result {
            Ok(_) => Decided::Allow,
            Err(e) if e.is_denial() => Decided::Deny,
            Err(_) => Decided::Error,
        }
    }
}

/// The end of a request's journey.
pub(crate) struct Outcome {
    pub intent: Intent,
    pub response: Response<ProxyBody>,
    pub decided: Decided,
    /// Where the answer came from, if a registry served it.
    pub target: Option<Target>,
    /// The registry the request named, when none served it.
    pub named: Option<String>,
}

impl Outcome {
    pub fn new(
        intent: Intent,
        response: Response<ProxyBody>,
        decided: Decided,
        trail: Trail,
    ) -> Outcome {
        Outcome {
            intent,
            response,
            decided,
            target: trail.served.into_inner(),
            named: trail.named.into_inner(),
        }
    }

    /// The registry label: the one that served, else the one named (an unconfigured host
    /// counts under `other`, a request that names none under `none`).
    fn registry(&self) -> Option<&str> {
        match &self.target {
            Some(target) => Some(target.registry.as_str()),
            None => self.named.as_deref(),
        }
    }

    /// Count the request and log it when its body ends; the response goes to the client.
    pub fn record(self, metrics: &Metrics) -> Response<ProxyBody> {
        let registry = metrics.registry_label(self.registry());
        let status = self.response.status().as_u16();
        let intent = &self.intent;
        metrics
            .requests
            .with_label_values(&[
                intent.operation,
                registry,
                self.decided.as_str(),
                status_class(status),
            ])
            .inc();
        metrics
            .request_duration
            .with_label_values(&[intent.operation])
            .observe(intent.started.elapsed().as_secs_f64());
        let downloaded = metrics.bytes.with_label_values(&["download", registry]);
        let resolved = self
            .target
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let Outcome {
            intent,
            response,
            decided,
            ..
        } = self;
        let line = AccessLine {
            intent,
            resolved,
            decision: decided.as_str(),
            status,
        };
        response.map(|body| access::logged(body, line, downloaded))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http::{Method, Version};

    use super::*;
    use crate::reference::Repository;

    fn metrics() -> (prometheus::Registry, Metrics) {
        let registry = prometheus::Registry::new();
        let m = Metrics::new(&registry, ["quay.io".to_owned()]).expect("metrics");
        (registry, m)
    }

    fn intent() -> Intent {
        Intent {
            peer: "127.0.0.1:1".parse().expect("addr"),
            method: Method::GET,
            path: "/v2/x/manifests/1".to_owned(),
            version: Version::HTTP_11,
            listener: "registry",
            operation: "pull",
            started: Instant::now(),
        }
    }

    fn count(registry: &prometheus::Registry, labels: &[(&str, &str)]) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "portcullis_requests_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[test]
    fn the_registry_label_is_the_target_that_served_else_the_one_named() {
        let (registry, m) = metrics();
        let trail = Trail::default();
        trail.named("docker.io");
        trail.served(&Target {
            registry: "quay.io".to_owned(),
            repository: Repository::parse("team/app").expect("repo"),
        });
        // A later registry (a search that went on) does not replace the one that served.
        trail.served(&Target {
            registry: "docker.io".to_owned(),
            repository: Repository::parse("team/app").expect("repo"),
        });
        let resp = Response::new(crate::body::empty());
        let outcome = Outcome::new(intent(), resp, Decided::Allow, trail);
        assert_eq!(
            outcome.target.as_ref().map(ToString::to_string).as_deref(),
            Some("quay.io/team/app")
        );
        let _ = outcome.record(&m);
        assert_eq!(
            count(&registry, &[("registry", "quay.io"), ("decision", "allow")]),
            1.0
        );

        let trail = Trail::default();
        trail.named("evil.example.net");
        let resp = ProxyError::RegistryNotAllowed("evil.example.net".to_owned()).into_response();
        let _ = Outcome::new(intent(), resp, Decided::Deny, trail).record(&m);
        assert_eq!(
            count(&registry, &[("registry", "other"), ("decision", "deny")]),
            1.0
        );

        let resp = Response::new(crate::body::empty());
        let _ = Outcome::new(intent(), resp, Decided::Error, Trail::default()).record(&m);
        assert_eq!(
            count(&registry, &[("registry", "none"), ("decision", "error")]),
            1.0
        );
    }

    #[test]
    fn the_decision_comes_from_the_result_not_the_status() {
        let ok: Result<Response<ProxyBody>, ProxyError> = Ok(Response::new(crate::body::empty()));
        assert_eq!(Decided::of(&ok), Decided::Allow);
        let denied = Err(ProxyError::RegistryNotAllowed("x.example.com".to_owned()));
        assert_eq!(Decided::of(&denied), Decided::Deny);
        let unauthorized = Err(ProxyError::Unauthorized);
        assert_eq!(Decided::of(&unauthorized), Decided::Error);
    }
}

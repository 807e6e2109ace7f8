//! The last stage: what happened to a request, and the one place it is recorded.
//!
//! While a request moves through the stages, its [`Trail`] is filled in by the stage that
//! knows each fact (the name's registry once the name is parsed, the target once a
//! registry serves it). When the response is decided, the [`Outcome`] is built from the
//! trail and the result, never from response headers or status codes, and [`Outcome::record`]
//! writes everything recorded about it: the policy's verdicts (counted, logged when not a
//! plain allow, audited), the request metrics and the access line (at the end of the body,
//! when it is known whether the client got all of it: [`super::access`]).

use http::Response;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tracing::warn;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::{status_class, Metrics};
use crate::pipeline::plan::Target;
use crate::pipeline::verdict::Verdict;
use crate::policy::Action;
use crate::store::audit::{now_rfc3339, Audit, Record};

use super::access::{self, AccessLine};
use super::intent::Intent;

/// Facts about one request, set by the stage that learns them; each is set at most once
/// (the first setter wins: a search that tried several registries keeps the one that
/// served).
#[derive(Debug, Default)]
pub(crate) struct Trail {
    named: OnceLock<String>,
    served: OnceLock<Target>,
    /// Every verdict of the policy about this request, in the order they were taken (a
    /// search decides once per registry it tries, a staged push once more on its content).
    verdicts: Mutex<Vec<Verdict>>,
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

    /// A verdict of the policy, to be counted and audited with the outcome.
    pub fn decided(&self, verdict: Verdict) {
        self.verdicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(verdict);
    }
}

/// How the request was decided, for the `decision` label and the access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    Allow,
    /// Allowed by a `warn` rule.
    Warn,
    Deny,
    Error,
}

impl Decided {
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::Allow => "allow",
            Decided::Warn => "warn",
            Decided::Deny => "deny",
            Decided::Error => "error",
        }
    }

    /// From the result, and for an answered request from the verdicts it went through.
    pub fn of(result: &Result<Response<ProxyBody>, ProxyError>, trail: &Trail) -> Decided {
        let warned = || {
            let verdicts = trail
                .verdicts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            verdicts.iter().any(|v| v.action == Action::Warn)
        };
        match result {
            Ok(_) if warned() => Decided::Warn,
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
    /// The policy's verdicts, in order.
    pub verdicts: Vec<Verdict>,
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
            verdicts: trail
                .verdicts
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
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

    /// Count, log and audit the request's verdicts, count the request and log it when its
    /// body ends; the response goes to the client. Audit records are written (to the kernel)
    /// before the response is returned.
    pub async fn record(self, metrics: &Metrics, audit: &Arc<Audit>) -> Response<ProxyBody> {
        // One write task for every record: once it is spawned, a client that goes away
        // cannot cut the trail short. Only the intent and verdicts are borrowed across it:
        // the response body is not `Sync`.
        let records: Vec<Record> = self
            .verdicts
            .iter()
            .filter_map(|v| note_verdict(&self.intent, v, metrics))
            .collect();
        audit.append_all(&records).await;
        drop(records);
        self.request(metrics)
    }

    fn request(self, metrics: &Metrics) -> Response<ProxyBody> {
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

/// Count and log a verdict; its audit record, unless it is a plain allow.
fn note_verdict<'a>(intent: &'a Intent, v: &'a Verdict, metrics: &Metrics) -> Option<Record<'a>> {
    let rule = v.rule_label();
    metrics
        .policy_decisions
        .with_label_values(&[v.action.as_str(), rule])
        .inc();
    if v.action == Action::Allow {
        return None;
    }
    let action = v.action_label();
    if matches!(v.action, Action::Warn | Action::Deny) {
        warn!(
            target: "portcullis::pipeline::verdict",
            reference = %v.reference, rule, action, message = %v.message,
            "policy decision"
        );
    }
    Some(Record {
        time: now_rfc3339(),
        client: intent.peer.to_string(),
        user: intent.user.as_deref(),
        operation: v.op.as_str(),
        reference: &v.reference,
        digest: v.digest.as_deref(),
        rule: v.rule.as_deref(),
        action,
        message: &v.message,
        listener: intent.listener,
    })
}

/// Records the verdicts of a request that never reaches its outcome: the client went away
/// while it was forwarded (hyper drops the request's future), after the policy had decided
/// it. A decision is audited whether or not its request finished. Written from `drop`, so
/// with the blocking [`Audit::write`]; [`Unrecorded::disarm`] once the outcome records.
pub(crate) struct Unrecorded<'a> {
    pub intent: &'a Intent,
    pub trail: &'a Trail,
    pub metrics: &'a Metrics,
    pub audit: &'a Audit,
    armed: bool,
}

impl<'a> Unrecorded<'a> {
    pub fn new(
        intent: &'a Intent,
        trail: &'a Trail,
        metrics: &'a Metrics,
        audit: &'a Audit,
    ) -> Self {
        Unrecorded {
            intent,
            trail,
            metrics,
            audit,
            armed: true,
        }
    }

    /// The outcome records the verdicts.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let verdicts = std::mem::take(
            &mut *self
                .trail
                .verdicts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for v in &verdicts {
            if let Some(record) = note_verdict(self.intent, v, self.metrics) {
                self.audit.write(&record);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Instant;

    use http::{Method, Version};

    use super::*;
    use crate::reference::Repository;

    fn metrics() -> (prometheus::Registry, Metrics) {
        let registry = prometheus::Registry::new();
        let m = Metrics::new(&registry, ["quay.io".to_owned()]).expect("metrics");
        (registry, m)
    }

    pub(crate) fn intent() -> Intent {
        Intent {
            peer: "127.0.0.1:1".parse().expect("addr"),
            method: Method::GET,
            path: "/v2/x/manifests/1".to_owned(),
            version: Version::HTTP_11,
            listener: "registry",
            operation: "pull",
            user: Some("alice".to_owned()),
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

    fn audit() -> Arc<Audit> {
        Arc::new(Audit::disabled())
    }

    #[tokio::test]
    async fn the_registry_label_is_the_target_that_served_else_the_one_named() {
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
        let _ = outcome.record(&m, &audit()).await;
        assert_eq!(
            count(&registry, &[("registry", "quay.io"), ("decision", "allow")]),
            1.0
        );

        let trail = Trail::default();
        trail.named("evil.example.net");
        let resp = ProxyError::RegistryNotAllowed("evil.example.net".to_owned()).into_response();
        let _ = Outcome::new(intent(), resp, Decided::Deny, trail)
            .record(&m, &audit())
            .await;
        assert_eq!(
            count(&registry, &[("registry", "other"), ("decision", "deny")]),
            1.0
        );

        let resp = Response::new(crate::body::empty());
        let outcome = Outcome::new(intent(), resp, Decided::Error, Trail::default());
        let _ = outcome.record(&m, &audit()).await;
        assert_eq!(
            count(&registry, &[("registry", "none"), ("decision", "error")]),
            1.0
        );
    }

    #[test]
    fn the_decision_comes_from_the_result_not_the_status() {
        let ok: Result<Response<ProxyBody>, ProxyError> = Ok(Response::new(crate::body::empty()));
        let trail = Trail::default();
        assert_eq!(Decided::of(&ok, &trail), Decided::Allow);
        let denied = Err(ProxyError::RegistryNotAllowed("x.example.com".to_owned()));
        assert_eq!(Decided::of(&denied, &trail), Decided::Deny);
        let unauthorized = Err(ProxyError::Unauthorized);
        assert_eq!(Decided::of(&unauthorized, &trail), Decided::Error);
    }

    #[tokio::test]
    async fn verdicts_are_counted_and_audited_with_the_intent_and_a_warning_is_its_own_decision() {
        let (registry, m) = metrics();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let audit = Arc::new(Audit::open(Some(&path)).expect("audit"));
        let verdict = |action, rule: Option<&str>, reference: &str| Verdict {
            action,
            confirmed: false,
            rule: rule.map(Into::into),
            message: "why".to_owned(),
            op: crate::policy::Operation::Pull,
            reference: reference.to_owned(),
            digest: None,
        };
        let trail = Trail::default();
        trail.decided(verdict(Action::Deny, Some("no-a"), "quay.io/a:1"));
        trail.decided(verdict(Action::Allow, None, ""));
        trail.decided(verdict(Action::Warn, Some("old"), "quay.io/b:1"));
        let ok: Result<Response<ProxyBody>, ProxyError> = Ok(Response::new(crate::body::empty()));
        let decided = Decided::of(&ok, &trail);
        assert_eq!(
            decided,
            Decided::Warn,
            "a warned request is not a plain allow"
        );
        let resp = Response::new(crate::body::empty());
        let _ = Outcome::new(intent(), resp, decided, trail)
            .record(&m, &audit)
            .await;

        let text = std::fs::read_to_string(&path).expect("audit log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2, "the plain allow is not audited: {text}");
        assert_eq!(lines[0]["action"], "deny");
        assert_eq!(lines[0]["rule"], "no-a");
        assert_eq!(lines[0]["reference"], "quay.io/a:1");
        assert_eq!(lines[0]["user"], "alice");
        assert_eq!(lines[0]["client"], "127.0.0.1:1");
        assert_eq!(lines[0]["listener"], "registry");
        assert_eq!(lines[1]["action"], "warn");

        let decisions = |action: &str, rule: &str| {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == "portcullis_policy_decisions_total")
                .flat_map(|f| f.get_metric().iter())
                .filter(|m| {
                    let label = |k: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == k)
                            .map(|l| l.value().to_owned())
                    };
                    label("action").as_deref() == Some(action)
                        && label("rule").as_deref() == Some(rule)
                })
                .map(|m| m.get_counter().get_value())
                .sum::<f64>()
        };
        assert_eq!(decisions("deny", "no-a"), 1.0);
        assert_eq!(decisions("allow", "default"), 1.0);
        assert_eq!(decisions("warn", "old"), 1.0);
        assert_eq!(count(&registry, &[("decision", "warn")]), 1.0);
    }

    #[test]
    fn the_verdicts_of_a_request_dropped_before_its_outcome_are_still_audited() {
        let (registry, m) = metrics();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let audit = Audit::open(Some(&path)).expect("audit");
        let (intent, trail) = (intent(), Trail::default());
        let guard = Unrecorded::new(&intent, &trail, &m, &audit);
        trail.decided(Verdict {
            action: Action::Warn,
            confirmed: false,
            rule: Some("old".into()),
            message: "old base".to_owned(),
            op: crate::policy::Operation::Pull,
            reference: "quay.io/b:1".to_owned(),
            digest: None,
        });
        // The client hangs up while the request is upstream: its future is dropped.
        drop(guard);
        let text = std::fs::read_to_string(&path).expect("audit log");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r#""action":"warn""#), "{text}");
        let decided = registry
            .gather()
            .iter()
            .filter(|f| f.name() == "portcullis_policy_decisions_total")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| m.get_counter().get_value())
            .sum::<f64>();
        assert_eq!(decided, 1.0);

        // Disarmed (the outcome records them), nothing is written twice.
        let trail = Trail::default();
        trail.decided(Verdict {
            action: Action::Deny,
            confirmed: false,
            rule: None,
            message: "no".to_owned(),
            op: crate::policy::Operation::Pull,
            reference: "quay.io/c:1".to_owned(),
            digest: None,
        });
        Unrecorded::new(&intent, &trail, &m, &audit).disarm();
        let text = std::fs::read_to_string(&path).expect("audit log");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}

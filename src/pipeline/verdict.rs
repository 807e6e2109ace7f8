//! The policy stage of the pipeline: every request is decided by the current [`Policy`]
//! before anything is sent upstream, and every decision that is not a plain allow is
//! audited and counted.
//!
//! The policy is not loaded here: the request took one `Arc<Policy>` when it started
//! ([`crate::policy::live`]) and every [`Check`] carries it, so one request is decided by
//! one policy from start to end.
//!
//! Confirmation (Atomic's `--confirm-def-push`) works with the stock docker CLI: the first
//! attempt is refused with a message saying how to confirm, and **repeating the same push**
//! from the same client between [`CONFIRM_MIN_AGE`] and the confirmation window later goes
//! through. The minimum age keeps the parallel requests of the first attempt (docker pushes
//! layers concurrently) from confirming themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pipeline::plan::Target;
use crate::policy::{Action, Decision, Operation, Policy, Subject};
use crate::store::audit::{Audit, Record};

/// A repeat sooner than this is part of the same attempt, not a confirmation.
pub const CONFIRM_MIN_AGE: Duration = Duration::from_secs(3);

/// One request as the gate sees it.
pub struct Check<'a> {
    /// The policy the request took when it started.
    pub policy: &'a Policy,
    pub op: Operation,
    pub target: &'a Target,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub peer: SocketAddr,
    pub user: Option<&'a str>,
    pub listener: &'a str,
}

impl Check<'_> {
    fn reference(&self) -> String {
        match (self.tag, self.digest) {
            (_, Some(d)) => format!("{}@{d}", self.target),
            (Some(t), None) => format!("{}:{t}", self.target),
            (None, None) => self.target.to_string(),
        }
    }
}

/// What a permitted request carries on with.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed, with this text for a `Warning: 299` header.
    Warn(String),
}

pub struct Gate {
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    /// (client IP, fully qualified repository) -> when confirmation was first asked.
    asked: moka::sync::Cache<(String, String), Instant>,
    confirm_window: Duration,
}

impl Gate {
    pub fn new(audit: Audit, metrics: Arc<Metrics>, confirm_window: Duration) -> Gate {
        Gate {
            audit: Arc::new(audit),
            metrics,
            asked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(confirm_window)
                .build(),
            confirm_window,
        }
    }

    /// Decide one request. Deny and unconfirmed confirm become a `403 DENIED` error.
    pub async fn check(&self, c: &Check<'_>) -> Result<Verdict, ProxyError> {
        let policy = c.policy;
        let subject = Subject {
            op: c.op,
            registry: &c.target.registry,
            repository: c.target.repository.as_str(),
            tag: c.tag,
            digest: c.digest,
        };
        let mut decision = policy.evaluate(&subject);
        if c.op == Operation::Push {
            if let Some(private) =
                policy.private_push_by_name(&c.target.registry, c.target.repository.as_str())
            {
                decision = decision.stronger(private);
            }
        }
        self.enforce(decision, c).await
    }

    /// Would a push to `target` be refused by name? Decided without counting or auditing
    /// it: it only picks the answer to a request already refused.
    pub fn refuses_push(&self, policy: &Policy, target: &Target) -> bool {
        let subject = Subject {
            op: Operation::Push,
            registry: &target.registry,
            repository: target.repository.as_str(),
            tag: None,
            digest: None,
        };
        let mut decision = policy.evaluate(&subject);
        if let Some(private) =
            policy.private_push_by_name(&target.registry, target.repository.as_str())
        {
            decision = decision.stronger(private);
        }
        matches!(decision.action, Action::Deny | Action::Confirm)
    }

    /// Apply a decision (also used for content-based push decisions).
    pub async fn enforce(&self, d: Decision, c: &Check<'_>) -> Result<Verdict, ProxyError> {
        let rule = d.rule_id.as_deref().unwrap_or("default");
        // Allowing is the common case: count it and go, without formatting anything.
        let reference = match d.action {
            Action::Allow => {
                self.count(Action::Allow, rule);
                return Ok(Verdict::Allow);
            }
            _ => c.reference(),
        };
        let (action, result) = match d.action {
            Action::Allow => ("allow", Ok(Verdict::Allow)), // returned above
            Action::Warn => (
                "warn",
                Ok(Verdict::Warn(format!(
                    "{reference}: {} (rule {rule})",
                    d.message
                ))),
            ),
            Action::Deny => (
                "deny",
                Err(ProxyError::Denied(crate::error::Denial {
                    reference: reference.clone(),
                    rule: rule.to_owned(),
                    action: crate::error::DenialAction::Deny,
                    message: d.message.clone(),
                })),
            ),
            Action::Confirm if self.confirmed(c) => ("confirmed", Ok(Verdict::Allow)),
            Action::Confirm => (
                "confirm",
                Err(ProxyError::Denied(crate::error::Denial {
                    reference: reference.clone(),
                    rule: rule.to_owned(),
                    action: crate::error::DenialAction::Confirm {
                        within_minutes: self.confirm_window.as_secs().div_ceil(60),
                    },
                    message: d.message.clone(),
                })),
            ),
        };
        self.count(d.action, rule);
        if matches!(d.action, Action::Warn | Action::Deny) {
            warn!(%reference, rule, action, message = %d.message, "policy decision");
        }
        let record = Record {
            time: crate::store::audit::now_rfc3339(),
            client: c.peer.to_string(),
            user: c.user,
            operation: c.op.as_str(),
            reference: &reference,
            digest: c.digest,
            rule: d.rule_id.as_deref(),
            action,
            message: &d.message,
            listener: c.listener,
        };
        self.audit.append(&record).await;
        result
    }

    fn count(&self, action: Action, rule: &str) {
        self.metrics
            .policy_decisions
            .with_label_values(&[action.as_str(), rule])
            .inc();
    }

    /// Has this client asked for this push before, long enough ago to be a repeat?
    fn confirmed(&self, c: &Check) -> bool {
        let key = (c.peer.ip().to_string(), c.target.to_string());
        match self.asked.get(&key) {
            Some(asked) => asked.elapsed() >= CONFIRM_MIN_AGE,
            None => {
                self.asked.insert(key, Instant::now());
                false
            }
        }
    }
}

//! The policy stage of the pipeline: every request is decided by the current [`Policy`]
//! before anything is sent upstream. A decision is a [`Verdict`] value: what the policy
//! said (action, rule, message) about which reference. The gate hands it back to the stage
//! that asked and adds it to the request's [`Trail`]; the outcome stage counts, logs and
//! audits every verdict of the request in one place ([`super::outcome`]).
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

use crate::error::{Denial, DenialAction, ProxyError};
use crate::pipeline::outcome::Trail;
use crate::pipeline::plan::Target;
use crate::policy::{Action, Decision, Operation, Policy, Subject};

/// A repeat sooner than this is part of the same attempt, not a confirmation.
pub const CONFIRM_MIN_AGE: Duration = Duration::from_secs(3);

/// One request as the gate sees it.
pub(crate) struct Check<'a> {
    /// The policy the request took when it started.
    pub policy: &'a Policy,
    /// Where the verdict is kept for the outcome.
    pub trail: &'a Trail,
    pub op: Operation,
    pub target: &'a Target,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    /// Confirmations are per client address.
    pub peer: SocketAddr,
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

/// One decision of the policy about one reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// A confirm rule satisfied by a repeat of the same push: the request goes through.
    pub confirmed: bool,
    /// The winning rule; `None` when the mode's default applied.
    pub rule: Option<Arc<str>>,
    pub message: String,
    pub op: Operation,
    /// The reference decided (`registry/repository:tag` or `@digest`). Empty for a plain
    /// allow, which is counted but never logged or audited: formatting it would cost every
    /// request an allocation for nothing.
    pub reference: String,
    pub digest: Option<String>,
}

impl Verdict {
    /// Does the request go on?
    pub fn permits(&self) -> bool {
        self.action.permits() || self.confirmed
    }

    /// The rule for metrics and messages: its id, or `default`.
    pub fn rule_label(&self) -> &str {
        self.rule.as_deref().unwrap_or("default")
    }

    /// The `action` of metrics and audit records: the policy's action, or `confirmed`.
    pub fn action_label(&self) -> &'static str {
        if self.confirmed {
            "confirmed"
        } else {
            self.action.as_str()
        }
    }

    /// The text of the `Warning: 299` header of a warned request.
    pub fn warning(&self) -> Option<String> {
        (self.action == Action::Warn).then(|| {
            format!(
                "{}: {} (rule {})",
                self.reference,
                self.message,
                self.rule_label()
            )
        })
    }

    /// The `403 DENIED` of a verdict that does not permit the request.
    fn denial(&self, confirm_window: Duration) -> ProxyError {
        let action = match self.action {
            Action::Confirm => DenialAction::Confirm {
                within_minutes: confirm_window.as_secs().div_ceil(60),
            },
            _ => DenialAction::Deny,
        };
        ProxyError::Denied(Denial {
            reference: self.reference.clone(),
            rule: self.rule_label().to_owned(),
            action,
            message: self.message.clone(),
        })
    }
}

pub(crate) struct Gate {
    /// (client IP, fully qualified repository) -> when confirmation was first asked.
    asked: moka::sync::Cache<(String, String), Instant>,
    confirm_window: Duration,
}

impl Gate {
    pub fn new(confirm_window: Duration) -> Gate {
        Gate {
            asked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(confirm_window)
                .build(),
            confirm_window,
        }
    }

    /// Decide one request. Deny and unconfirmed confirm become a `403 DENIED` error.
    pub fn check(&self, c: &Check<'_>) -> Result<Verdict, ProxyError> {
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
        self.enforce(decision, c)
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

    /// Turn a decision (also a content-based push decision) into the request's verdict, kept
    /// on its trail: `Ok` when the request goes on, the `403 DENIED` when it does not.
    pub fn enforce(&self, d: Decision, c: &Check<'_>) -> Result<Verdict, ProxyError> {
        let confirmed = d.action == Action::Confirm && self.confirmed(c);
        let verdict = Verdict {
            action: d.action,
            confirmed,
            reference: match d.action {
                Action::Allow => String::new(),
                _ => c.reference(),
            },
            rule: d.rule_id,
            message: d.message,
            op: c.op,
            digest: c.digest.map(str::to_owned),
        };
        c.trail.decided(verdict.clone());
        if verdict.permits() {
            Ok(verdict)
        } else {
            Err(verdict.denial(self.confirm_window))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Repository;

    fn policy() -> Policy {
        let text = r#"
[[rule]]
id = "no-withdrawn"
action = "deny"
message = "withdrawn"
registry = "quay.io"
repository = "team/withdrawn"

[[rule]]
id = "old"
action = "warn"
message = "old base"
registry = "quay.io"
repository = "team/old"

[[rule]]
id = "ask"
action = "confirm"
message = "public"
operations = ["push"]
registry = "quay.io"
"#;
        crate::policy::parse("test.toml", text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn target(repository: &str) -> Target {
        Target {
            registry: "quay.io".to_owned(),
            repository: Repository::parse(repository).expect("repository"),
        }
    }

    fn check<'a>(p: &'a Policy, trail: &'a Trail, op: Operation, t: &'a Target) -> Check<'a> {
        Check {
            policy: p,
            trail,
            op,
            target: t,
            tag: Some("1"),
            digest: None,
            peer: "10.0.0.1:5000".parse().expect("addr"),
        }
    }

    fn verdicts(trail: Trail) -> Vec<Verdict> {
        let outcome = crate::pipeline::outcome::Outcome::new(
            crate::pipeline::outcome::tests::intent(),
            http::Response::new(crate::body::empty()),
            crate::pipeline::outcome::Decided::Allow,
            trail,
        );
        outcome.verdicts
    }

    #[test]
    fn every_verdict_is_a_value_on_the_trail_and_a_denial_carries_its_rule() {
        let (gate, p) = (Gate::new(Duration::from_secs(600)), policy());
        let trail = Trail::default();
        let (allowed, withdrawn, old) = (
            target("team/app"),
            target("team/withdrawn"),
            target("team/old"),
        );

        let allow = gate.check(&check(&p, &trail, Operation::Pull, &allowed));
        let allow = allow.expect("allowed");
        assert_eq!((allow.action, allow.rule.as_deref()), (Action::Allow, None));
        assert_eq!(allow.warning(), None);
        assert!(allow.reference.is_empty(), "a plain allow formats nothing");

        let warn = gate.check(&check(&p, &trail, Operation::Pull, &old));
        let warn = warn.expect("a warning lets the pull through");
        assert_eq!(
            warn.warning().as_deref(),
            Some("quay.io/team/old:1: old base (rule old)")
        );

        let denied = gate.check(&check(&p, &trail, Operation::Pull, &withdrawn));
        match denied {
            Err(ProxyError::Denied(d)) => {
                assert_eq!(d.reference, "quay.io/team/withdrawn:1");
                assert_eq!(d.rule, "no-withdrawn");
                assert_eq!(d.action, DenialAction::Deny);
                assert_eq!(d.message, "withdrawn");
            }
            other => panic!("expected a denial, got {other:?}"),
        }

        let taken: Vec<_> = verdicts(trail)
            .iter()
            .map(|v| (v.action_label(), v.rule_label().to_owned()))
            .collect();
        assert_eq!(
            taken,
            [
                ("allow", "default".to_owned()),
                ("warn", "old".to_owned()),
                ("deny", "no-withdrawn".to_owned())
            ]
        );
    }

    #[test]
    fn a_confirm_rule_refuses_the_first_attempt_and_is_confirmed_on_the_trail() {
        let (gate, p) = (Gate::new(Duration::from_secs(600)), policy());
        let app = target("team/app");
        let trail = Trail::default();
        match gate.check(&check(&p, &trail, Operation::Push, &app)) {
            Err(ProxyError::Denied(d)) => {
                assert_eq!(d.action, DenialAction::Confirm { within_minutes: 10 });
            }
            other => panic!("expected a confirmation request, got {other:?}"),
        }
        // The repeat is too soon to count as a confirmation: still refused.
        assert!(gate
            .check(&check(&p, &trail, Operation::Push, &app))
            .is_err());
        let taken = verdicts(trail);
        assert_eq!(taken.len(), 2);
        assert!(taken
            .iter()
            .all(|v| v.action_label() == "confirm" && !v.permits()));
    }
}

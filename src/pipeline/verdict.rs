//! The policy stage of the pipeline: every request is decided by the current [`Policy`]
//! before anything is sent upstream, and every decision that is not a plain allow is
//! audited and counted.
//!
//! The compiled policy sits behind an `ArcSwap`: a reload swaps it whole, so a request sees
//! one policy from start to end and a broken edit never replaces a good policy.
//!
//! Confirmation (Atomic's `--confirm-def-push`) works with the stock docker CLI: the first
//! attempt is refused with a message saying how to confirm, and **repeating the same push**
//! from the same client between [`CONFIRM_MIN_AGE`] and the confirmation window later goes
//! through. The minimum age keeps the parallel requests of the first attempt (docker pushes
//! layers concurrently) from confirming themselves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pipeline::plan::Target;
use crate::policy::{self, Action, Decision, Operation, Policy, Problem, Subject};
use crate::store::audit::{Audit, Record};

/// A repeat sooner than this is part of the same attempt, not a confirmation.
pub const CONFIRM_MIN_AGE: Duration = Duration::from_secs(3);

/// The policy shipped in the binary, used when the configuration names no policy files.
pub const EMBEDDED_POLICY: &str = include_str!("../../policies/default.toml");

/// Where policies come from: files and directories (`*.toml` policies, `*.conf`
/// registries.conf), or the embedded default.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub paths: Vec<PathBuf>,
}

impl Sources {
    pub fn load(&self) -> Result<Policy, Vec<Problem>> {
        if self.paths.is_empty() {
            return policy::parse("<embedded policies/default.toml>", EMBEDDED_POLICY);
        }
        policy::load(&self.paths)
    }

    /// A cheap fingerprint (size and modification time of every file) to notice edits.
    /// Metadata follows symlinks, so a Kubernetes ConfigMap's `..data` swap is seen too.
    pub fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut out = Vec::new();
        for path in &self.paths {
            let entries: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(dir) => dir.filter_map(Result::ok).map(|e| e.path()).collect(),
                Err(_) => vec![path.clone()],
            };
            for p in entries {
                let meta = std::fs::metadata(&p).ok();
                out.push((
                    p,
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.and_then(|m| m.modified().ok()),
                ));
            }
        }
        out.sort();
        out
    }
}

/// The outcome of the last reload, for `/policy` and `portcullis policy status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub sources: Vec<String>,
    pub loaded_at: String,
    pub last_attempt_at: String,
    pub last_result: String,
    pub problems: Vec<String>,
}

/// One request as the gate sees it.
pub struct Check<'a> {
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
    policy: ArcSwap<Policy>,
    sources: Sources,
    status: Mutex<ReloadStatus>,
    generation: AtomicU64,
    audit: Audit,
    metrics: Arc<Metrics>,
    /// (client IP, fully qualified repository) -> when confirmation was first asked.
    asked: moka::sync::Cache<(String, String), Instant>,
    confirm_window: Duration,
}

impl Gate {
    pub fn new(
        sources: Sources,
        audit: Audit,
        metrics: Arc<Metrics>,
        confirm_window: Duration,
    ) -> Result<Gate, Vec<Problem>> {
        let policy = sources.load()?;
        let now = crate::store::audit::now_rfc3339();
        let status = ReloadStatus {
            generation: 1,
            sources: source_names(&sources),
            loaded_at: now.clone(),
            last_attempt_at: now,
            last_result: "ok".to_owned(),
            problems: Vec::new(),
        };
        metrics.policy_generation.set(1);
        metrics.policy_reloads.with_label_values(&["ok"]).inc();
        Ok(Gate {
            policy: ArcSwap::from_pointee(policy),
            sources,
            status: Mutex::new(status),
            generation: AtomicU64::new(1),
            audit,
            metrics,
            asked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(confirm_window)
                .build(),
            confirm_window,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Load the sources again; on success swap the new policy in whole, on failure keep
    /// the old one and report every problem.
    pub fn reload(&self) -> Result<u64, Vec<Problem>> {
        let now = crate::store::audit::now_rfc3339();
        let result = self.sources.load();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = now.clone();
        match result {
            Ok(policy) => {
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                self.policy.store(Arc::new(policy));
                self.metrics.policy_generation.set(generation as i64);
                self.metrics.policy_reloads.with_label_values(&["ok"]).inc();
                info!(generation, "policy reloaded");
                status.generation = generation;
                status.loaded_at = now;
                status.last_result = "ok".to_owned();
                status.problems.clear();
                Ok(generation)
            }
            Err(problems) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["error"])
                    .inc();
                for p in &problems {
                    error!(problem = %p, "policy reload refused; the last good policy stays in force");
                }
                status.last_result = "error".to_owned();
                status.problems = problems.iter().map(ToString::to_string).collect();
                Err(problems)
            }
        }
    }

    /// Decide one request. Deny and unconfirmed confirm become a `403 DENIED` error.
    pub fn check(&self, c: &Check) -> Result<Verdict, ProxyError> {
        let policy = self.policy.load();
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
    pub fn refuses_push(&self, target: &Target) -> bool {
        let policy = self.policy.load();
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
    pub fn enforce(&self, d: Decision, c: &Check) -> Result<Verdict, ProxyError> {
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
        if action == "warn" || action == "deny" {
            warn!(%reference, rule, action, message = %d.message, "policy decision");
        }
        self.audit.write(&Record {
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
        });
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

fn source_names(sources: &Sources) -> Vec<String> {
    if sources.paths.is_empty() {
        return vec!["<embedded policies/default.toml>".to_owned()];
    }
    sources
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

/// Reload when the files change (polled: works for editors, `mv`, and ConfigMap swaps) or
/// on SIGHUP, until `shutdown` changes.
pub async fn watch(
    gate: Arc<Gate>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = gate.sources.fingerprint();
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                let now = gate.sources.fingerprint();
                if now == seen {
                    continue;
                }
                seen = now;
                info!("policy files changed; reloading");
            }
            _ = hangup => info!("SIGHUP; reloading policy"),
            _ = shutdown.changed() => return,
        }
        let _ = gate.reload();
    }
}

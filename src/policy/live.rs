//! The policy in force, and its live reload.
//!
//! The compiled [`Policy`] sits behind an `ArcSwap`: a reload swaps it whole, and a request
//! takes one `Arc<Policy>` when it starts and passes it down, so every decision of that
//! request is made by the same policy even when a reload lands in the middle. A broken edit
//! never replaces a good policy: every problem is reported and the last good one stays.
//!
//! Reading and compiling the files (file I/O, regex compilation) and the once-per-interval
//! fingerprint run on the blocking pool, never on a runtime thread that serves requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::policy::{self, Policy, Problem};

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

pub struct LivePolicy {
    policy: ArcSwap<Policy>,
    sources: Sources,
    status: Mutex<ReloadStatus>,
    generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl LivePolicy {
    pub fn new(sources: Sources, metrics: Arc<Metrics>) -> Result<LivePolicy, Vec<Problem>> {
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
        Ok(LivePolicy {
            policy: ArcSwap::from_pointee(policy),
            sources,
            status: Mutex::new(status),
            generation: AtomicU64::new(1),
            metrics,
        })
    }

    /// The policy in force now. A request takes it once, at its start.
    pub fn current(&self) -> Arc<Policy> {
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
    /// the old one and report every problem. Blocking (file reads, regex compilation):
    /// from async code, call it through [`LivePolicy::reload_off_runtime`].
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

    /// [`LivePolicy::reload`] on the blocking pool. A reload that cannot run (the pool
    /// shut down) keeps the policy in force, as a failed one does.
    pub async fn reload_off_runtime(self: &Arc<Self>) {
        let live = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || live.reload()).await {
            warn!(error = %e, "policy reload did not run; the policy in force stays");
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
    live: Arc<LivePolicy>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = fingerprint(&live).await;
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                let now = fingerprint(&live).await;
                if now == seen {
                    continue;
                }
                seen = now;
                info!("policy files changed; reloading");
            }
            _ = hangup => info!("SIGHUP; reloading policy"),
            _ = shutdown.changed() => return,
        }
        live.reload_off_runtime().await;
    }
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The sources' fingerprint, read on the blocking pool (a `read_dir` and a `stat` per
/// file). If it cannot be read, an empty one: the next successful read differs from it
/// and triggers a reload, which then reports what is wrong.
async fn fingerprint(live: &Arc<LivePolicy>) -> Fingerprint {
    let live = live.clone();
    tokio::task::spawn_blocking(move || live.sources.fingerprint())
        .await
        .unwrap_or_default()
}

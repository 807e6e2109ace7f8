//! The audit trail: one JSON object per line, appended to a file.
//!
//! Records are rare (denials, warnings, confirmations), so each is written with a single
//! `write_all` of the whole line straight to the file, no user-space buffer: a record is in
//! the kernel when [`Audit::write`] returns, and a crash of portcullis (not of the machine:
//! there is no fsync) cannot lose it. Lines are written under a mutex, so writers in this
//! process never interleave; the file is opened with `O_APPEND`, so each line lands at the
//! current end even when another process appends too, or `logrotate` truncates the file
//! (`copytruncate`; portcullis does not reopen the file on rotation).
//!
//! JSON escapes control characters, so a newline inside a value cannot split a record or
//! forge another one.
//!
//! The schema is stable: every key of [`Record`] is present in every line (`null` when a
//! value is absent), and a test pins the key names. Add keys, never rename or remove them.
//!
//! Auditing must never take the proxy down: a failed write is logged and counted
//! ([`Audit::failures`]), not returned.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroU8;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use time::format_description::well_known::iso8601::{Config, EncodedConfig, TimePrecision};
use time::format_description::well_known::Iso8601;
use time::OffsetDateTime;

/// One audited decision. Serialized as one JSON object per line with exactly these keys.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Record<'a> {
    /// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z` ([`now_rfc3339`]).
    pub time: String,
    /// Client address, `ip:port`.
    pub client: String,
    /// The authenticated user (from Basic auth), if any; never a password.
    pub user: Option<&'a str>,
    /// `pull`, `push`, `search`, `list` or `delete`.
    pub operation: &'a str,
    /// Fully qualified, e.g. `docker.io/library/alpine:latest` or `...@sha256:...`.
    pub reference: &'a str,
    pub digest: Option<&'a str>,
    /// The id of the rule that decided, if a rule did.
    pub rule: Option<&'a str>,
    /// `allow`, `warn`, `confirm`, `deny` or `reject`.
    pub action: &'a str,
    pub message: &'a str,
    /// The listener the request came through: `registry`, `proxy` or `mirror`.
    pub listener: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path} for appending")]
    Open { path: PathBuf, source: io::Error },
}

/// The audit log; `None` as the path disables it. `Send + Sync`, share it behind `Arc`.
#[derive(Debug)]
pub struct Audit {
    /// `None` when auditing is disabled.
    file: Option<(PathBuf, Mutex<File>)>,
    failures: AtomicU64,
}

impl Audit {
    /// Opens `path` for appending, creating it with mode 0640 (the trail names users and
    /// images, so it is not world-readable). The parent directory must exist: creating it
    /// would hide a typo in the configured path.
    pub fn open(path: Option<&Path>) -> Result<Audit, AuditError> {
        let file = match path {
            None => None,
            Some(path) => {
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Some((path.to_path_buf(), Mutex::new(file)))
            }
        };
        Ok(Audit {
            file,
            failures: AtomicU64::new(0),
        })
    }

    /// An audit log that writes nothing (`open(None)`, without a `Result`).
    pub fn disabled() -> Audit {
        Audit {
            file: None,
            failures: AtomicU64::new(0),
        }
    }

    /// True when records go to a file.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `record` as one line. Never panics and never fails the caller: a failed write
    /// is logged and counted in [`failures`](Audit::failures). Blocking (a `write(2)`): from
    /// async code use [`Audit::append`].
    pub fn write(&self, record: &Record) {
        if let Some(line) = self.line(record) {
            self.write_line(&line);
        }
    }

    /// [`Audit::write`] with the `write(2)` on the blocking pool, awaited: the record is in
    /// the kernel before the caller answers the request it audits, as with `write`.
    pub async fn append(self: &Arc<Self>, record: &Record<'_>) {
        let Some(line) = self.line(record) else {
            return;
        };
        let audit = self.clone();
        let written = tokio::task::spawn_blocking(move || audit.write_line(&line)).await;
        if let (Err(error), Some((path, _))) = (written, &self.file) {
            self.fail(path, &error);
        }
    }

    /// [`Audit::append`] for several records, written by one task on the blocking pool: once
    /// this is called they are all written, even if the caller is dropped while it waits.
    pub async fn append_all(self: &Arc<Self>, records: &[Record<'_>]) {
        let lines: Vec<Vec<u8>> = records.iter().filter_map(|r| self.line(r)).collect();
        if lines.is_empty() {
            return;
        }
        let audit = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            for line in &lines {
                audit.write_line(line);
            }
        })
        .await;
        if let (Err(error), Some((path, _))) = (written, &self.file) {
            self.fail(path, &error);
        }
    }

    /// The record as one JSON line; `None` when auditing is off or it cannot be serialized.
    fn line(&self, record: &Record) -> Option<Vec<u8>> {
        let (path, _) = self.file.as_ref()?;
        match serde_json::to_vec(record) {
            Ok(mut line) => {
                line.push(b'\n');
                Some(line)
            }
            Err(error) => {
                self.fail(path, &error);
                None
            }
        }
    }

    fn write_line(&self, line: &[u8]) {
        let Some((path, file)) = &self.file else {
            return;
        };
        // A writer that panicked held the lock between whole lines, so the file is still
        // consistent and the poison can be ignored.
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = file.write_all(line).and_then(|()| file.flush()) {
            self.fail(path, &error);
        }
    }

    /// The number of records that could not be written since the log was opened.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn fail(&self, path: &Path, error: &dyn std::error::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %path.display(), %error, "cannot write audit record");
    }
}

/// RFC 3339 with exactly three fractional digits, so lines sort and align as text.
const MILLIS: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: NonZeroU8::new(3),
    })
    .encode();

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

fn format_rfc3339(time: OffsetDateTime) -> String {
    // Formatting only fails for years outside 0000..=9999; `Display` still gives a time.
    time.format(&Iso8601::<MILLIS>)
        .unwrap_or_else(|_| time.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;

    fn record(message: &str) -> Record<'_> {
        Record {
            time: now_rfc3339(),
            client: "127.0.0.1:40000".into(),
            user: Some("alice"),
            operation: "push",
            reference: "registry.example/team/app:1.0",
            digest: Some("sha256:0123"),
            rule: Some("no-private-layers"),
            action: "deny",
            message,
            listener: "registry",
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read audit log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn schema_keys_are_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let audit = Audit::open(Some(&path)).expect("open");
        audit.write(&Record {
            user: None,
            digest: None,
            rule: None,
            // A newline in a value must not split the record (or forge a second one).
            ..record("no rule matched\n{\"action\":\"allow\"}")
        });
        let lines = lines(&path);
        assert_eq!(lines.len(), 1);
        let value: serde_json::Value = serde_json::from_str(&lines[0]).expect("valid JSON");
        let object = value.as_object().expect("an object");
        let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = [
            "time",
            "client",
            "user",
            "operation",
            "reference",
            "digest",
            "rule",
            "action",
            "message",
            "listener",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected);
        // Absent values are explicit nulls, so consumers can rely on every key.
        assert!(object["user"].is_null());
        assert!(object["digest"].is_null());
        assert!(object["rule"].is_null());
        assert_eq!(object["action"], "deny");
        assert_eq!(object["client"], "127.0.0.1:40000");
        assert_eq!(object["message"], "no rule matched\n{\"action\":\"allow\"}");
    }

    #[test]
    fn appends_and_creates_with_mode_0640() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        std::fs::write(&path, b"{\"earlier\":true}\n").expect("seed");
        Audit::open(Some(&path))
            .expect("open")
            .write(&record("first"));
        Audit::open(Some(&path))
            .expect("reopen")
            .write(&record("second"));
        let lines = lines(&path);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].contains("\"first\"") && lines[2].contains("\"second\""));

        let fresh = dir.path().join("fresh.log");
        Audit::open(Some(&fresh)).expect("open");
        let mode = std::fs::metadata(&fresh)
            .expect("stat")
            .permissions()
            .mode();
        // The umask may take bits away, never add them.
        assert_eq!(mode & 0o777 & !0o640, 0, "mode {mode:o}");
    }

    #[test]
    fn concurrent_writers_never_interleave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let audit = Arc::new(Audit::open(Some(&path)).expect("open"));
        const THREADS: usize = 8;
        const PER_THREAD: usize = 200;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    // Long messages make a torn or interleaved write likely if it could happen.
                    let filler = "x".repeat(4096 + t * 37);
                    for i in 0..PER_THREAD {
                        let message = format!("{t}/{i}/{filler}");
                        audit.write(&record(&message));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("writer thread");
        }
        let lines = lines(&path);
        assert_eq!(lines.len(), THREADS * PER_THREAD);
        let mut seen = BTreeSet::new();
        for line in &lines {
            let value: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
            let message = value["message"].as_str().expect("message");
            let mut parts = message.splitn(3, '/');
            let t: usize = parts.next().and_then(|p| p.parse().ok()).expect("thread");
            let i: usize = parts.next().and_then(|p| p.parse().ok()).expect("index");
            assert_eq!(parts.next().map(str::len), Some(4096 + t * 37));
            assert!(seen.insert((t, i)), "duplicate {t}/{i}");
        }
        assert_eq!(audit.failures(), 0);
    }

    #[test]
    fn disabled_audit_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::open(None).expect("open disabled");
        assert!(!audit.enabled());
        audit.write(&record("dropped"));
        assert_eq!(audit.failures(), 0);
        let entries = std::fs::read_dir(dir.path()).expect("read dir").count();
        assert_eq!(entries, 0);
    }

    #[test]
    fn missing_parent_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-dir").join("audit.log");
        let error = Audit::open(Some(&path)).expect_err("parent is missing");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        assert!(!path.parent().expect("parent").exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn failed_writes_are_counted_not_raised() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let audit = Audit::open(Some(Path::new("/dev/full"))).expect("open /dev/full");
        audit.write(&record("lost"));
        audit.write(&record("lost too"));
        assert_eq!(audit.failures(), 2);
    }

    #[test]
    fn time_is_rfc3339_utc_with_millis() {
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("valid timestamp");
        assert_eq!(format_rfc3339(time), "2023-11-14T22:13:20.123Z");
        let whole = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid timestamp");
        assert_eq!(format_rfc3339(whole), "2023-11-14T22:13:20.000Z");
        let now = now_rfc3339();
        assert_eq!(now.len(), "2023-11-14T22:13:20.123Z".len(), "{now}");
        assert!(now.ends_with('Z'));
    }
}

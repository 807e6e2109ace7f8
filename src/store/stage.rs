//! Local staging of pushed blobs.
//!
//! A content-based decision (labels, provenance) needs the manifest, which a client sends
//! last. So that a rejected push leaves **no byte** at the destination, pushes to public
//! registries under content rules are answered by portcullis itself: upload sessions are
//! written to disk here (hashed while they stream), and only after the manifest passes are
//! the blobs it references sent upstream. Staging is bounded in bytes and in open upload
//! sessions (in all and per client IP), and blobs that no manifest claims are swept after a
//! while. An upload session costs no file until its first byte, and one that receives no byte
//! within the idle limit is dropped: opening sessions and sending nothing holds nothing long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::body::ProxyBody;
use crate::metrics::Metrics;

/// Prefix of session ids portcullis hands out, so they never collide with an upstream's.
pub const SESSION_PREFIX: &str = "pcs-";

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("upload session {0} is unknown or expired")]
    UnknownSession(String),
    #[error("staging is full ({limit} bytes); try again later")]
    Full { limit: u64 },
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("only sha256 digests can be staged, got {0}")]
    UnsupportedDigest(String),
    #[error("staging {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the upload: {0}")]
    Body(String),
}

/// Why a new upload session was refused: too many are open. A client should retry later.
#[derive(Debug, thiserror::Error)]
pub enum SessionLimit {
    #[error("{client} has {limit} upload sessions open, the most one client may; finish or cancel one, or retry in {idle_secs} s when sessions that received nothing have expired")]
    Client {
        client: IpAddr,
        limit: usize,
        idle_secs: u64,
    },
    #[error(
        "portcullis has {limit} upload sessions open, the most it holds; retry in {idle_secs} s"
    )]
    All { limit: usize, idle_secs: u64 },
}

/// What staging may hold: bytes on disk and open upload sessions.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    /// A session that has received no byte for this long is dropped, so that opening
    /// sessions and sending nothing cannot hold the session slots.
    pub idle_session: Duration,
}

struct Session {
    registry: String,
    /// The push this session belongs to: only it may read what the session stages.
    owner: Owner,
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    touched: Instant,
    /// Appends streaming into the session now; a session being written is never swept.
    streaming: u32,
}

impl Session {
    /// Swept as empty: never received a byte, nothing streaming, idle past `idle`.
    fn idle_empty(&self, idle: Duration) -> bool {
        self.size == 0 && self.streaming == 0 && self.touched.elapsed() > idle
    }
}

/// Open sessions and how many each client holds, kept together under one lock so the
/// limits are checked and counted atomically.
#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, Session>,
    per_client: HashMap<IpAddr, usize>,
}

impl Sessions {
    fn insert(&mut self, id: String, session: Session) {
        *self.per_client.entry(session.owner.client).or_default() += 1;
        self.by_id.insert(id, session);
    }

    fn remove(&mut self, id: &str) -> Option<Session> {
        let session = self.by_id.remove(id)?;
        if let Some(n) = self.per_client.get_mut(&session.owner.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&session.owner.client);
            }
        }
        Some(session)
    }
}

/// A staged, verified blob waiting for its manifest.
#[derive(Debug, Clone)]
pub struct StagedBlob {
    pub path: PathBuf,
    pub size: u64,
}

/// Who staged a blob: the client (by IP) and the repository it pushes to. A staged blob is
/// not yet judged, so nobody else may read it, not even by digest through another name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub client: IpAddr,
    pub repository: String,
}

/// A finished blob, when it was staged, and every push that staged it (the same content
/// staged twice shares one file).
struct Staged {
    blob: StagedBlob,
    at: Instant,
    owners: Vec<Owner>,
}

/// An [`Stage::append`] under way. Its future is dropped without finishing when hyper drops
/// the request (an HTTP/2 client resets the stream while portcullis writes, a connection
/// closes): then the session is cancelled here, or its `streaming` count would never come
/// down, and the sweeper would keep its half-written file and reserved bytes for ever.
struct Appending<'a> {
    stage: &'a Stage,
    id: &'a str,
    written: u64,
    done: bool,
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stage.release(self.written);
            self.stage.cancel(self.id);
        }
    }
}

pub struct Stage {
    dir: PathBuf,
    limits: Limits,
    used: AtomicU64,
    sessions: Mutex<Sessions>,
    blobs: Mutex<HashMap<(String, String), Staged>>,
    open_sessions: IntGauge,
    refused: IntCounterVec,
    expired: IntCounter,
}

/// Remove a file nobody owns any more. On a runtime thread the `unlink(2)` goes to the
/// blocking pool (its bytes were already released from the budget); elsewhere (the
/// sweeper, which runs on the blocking pool already) it runs in place.
fn unlink(path: PathBuf) {
    let remove = move || {
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot remove a staged file");
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

/// [`unlink`], awaited: for a caller that answers only once the file is gone.
async fn unlink_now(path: PathBuf) {
    let shown = path.clone();
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(error)) => {
            tracing::warn!(path = %shown.display(), %error, "cannot remove a staged file")
        }
        Err(error) => {
            tracing::warn!(path = %shown.display(), %error, "cannot remove a staged file")
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Stage {
    /// Opens the staging directory, dropping leftovers of an earlier run: their manifest
    /// never came, so no client is waiting for them.
    pub fn open(dir: &Path, limits: Limits, metrics: &Metrics) -> Result<Stage, StageError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        metrics.staging_sessions.set(0);
        Ok(Stage {
            dir: dir.to_owned(),
            limits,
            used: AtomicU64::new(0),
            sessions: Mutex::new(Sessions::default()),
            blobs: Mutex::new(HashMap::new()),
            open_sessions: metrics.staging_sessions.clone(),
            refused: metrics.staging_sessions_refused.clone(),
            expired: metrics.staging_sessions_expired.clone(),
        })
    }

    /// A poisoned lock only means another request panicked mid-update; the map is still
    /// usable, and refusing every upload from then on would be worse.
    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Upload sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions().by_id.len()
    }

    /// Start an upload session for a push to `registry` from `owner`. An empty session
    /// costs a map entry, no file: the file is made when the first byte arrives.
    pub fn start(&self, registry: &str, owner: Owner) -> Result<String, SessionLimit> {
        let client = owner.client;
        let id = format!("{SESSION_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let mut sessions = self.sessions();
        let full = |s: &Sessions| {
            s.by_id.len() >= self.limits.max_sessions
                || s.per_client.get(&client).copied().unwrap_or(0)
                    >= self.limits.max_sessions_per_client
        };
        if full(&sessions) {
            // Sessions past their idle time may not have been swept yet: they go first.
            let expired = self.reap_idle(&mut sessions);
            self.expired.inc_by(expired as u64);
        }
        let idle_secs = self.limits.idle_session.as_secs();
        if sessions.per_client.get(&client).copied().unwrap_or(0)
            >= self.limits.max_sessions_per_client
        {
            self.refused.with_label_values(&["client"]).inc();
            return Err(SessionLimit::Client {
                client,
                limit: self.limits.max_sessions_per_client,
                idle_secs,
            });
        }
        if full(&sessions) {
            self.refused.with_label_values(&["all"]).inc();
            return Err(SessionLimit::All {
                limit: self.limits.max_sessions,
                idle_secs,
            });
        }
        sessions.insert(
            id.clone(),
            Session {
                registry: registry.to_owned(),
                owner,
                path: self.dir.join(&id),
                size: 0,
                hasher: Sha256::new(),
                touched: Instant::now(),
                streaming: 0,
            },
        );
        self.open_sessions.set(sessions.by_id.len() as i64);
        Ok(id)
    }

    /// Drop empty sessions idle past the limit; they hold no bytes and no file.
    fn reap_idle(&self, sessions: &mut Sessions) -> usize {
        let idle = self.limits.idle_session;
        let ids: Vec<String> = sessions
            .by_id
            .iter()
            .filter(|(_, s)| s.idle_empty(idle))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            sessions.remove(id);
        }
        self.open_sessions.set(sessions.by_id.len() as i64);
        ids.len()
    }

    /// Bytes received so far in a session.
    pub fn status(&self, id: &str) -> Option<u64> {
        self.sessions().by_id.get(id).map(|s| s.size)
    }

    pub fn cancel(&self, id: &str) -> bool {
        let removed = {
            let mut sessions = self.sessions();
            let removed = sessions.remove(id);
            self.open_sessions.set(sessions.by_id.len() as i64);
            removed
        };
        match removed {
            Some(session) => {
                self.release(session.size);
                unlink(session.path);
                true
            }
            None => false,
        }
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Append a body to a session, streaming it to disk and into the session's hash. The
    /// session's file is created with its first byte.
    pub async fn append(&self, id: &str, mut body: ProxyBody) -> Result<u64, StageError> {
        let (path, mut hasher) = {
            let mut sessions = self.sessions();
            let s = sessions
                .by_id
                .get_mut(id)
                .ok_or_else(|| StageError::UnknownSession(id.to_owned()))?;
            s.touched = Instant::now();
            s.streaming += 1;
            (s.path.clone(), s.hasher.clone())
        };
        let mut appending = Appending {
            stage: self,
            id,
            written: 0,
            done: false,
        };
        let mut file: Option<tokio::fs::File> = None;
        let result = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| StageError::Body(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                self.reserve(data.len() as u64)?;
                appending.written += data.len() as u64;
                hasher.update(&data);
                let f = match &mut file {
                    Some(f) => f,
                    // Opened in place, not on the blocking pool: an open still running there
                    // after a cancelled append would create the file after its removal.
                    None => file.insert(tokio::fs::File::from_std(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .map_err(io(&path))?,
                    )),
                };
                f.write_all(&data).await.map_err(io(&path))?;
            }
            match file.as_mut() {
                Some(f) => f.flush().await.map_err(io(&path)),
                None => Ok(()),
            }
        }
        .await;
        appending.done = true;
        let written = appending.written;
        drop(file);
        let cut = {
            let mut sessions = self.sessions();
            let Some(s) = sessions.by_id.get_mut(id) else {
                // Cancelled while streaming: its file and these bytes belong to no one now.
                drop(sessions);
                self.release(written);
                unlink(path);
                return Err(StageError::UnknownSession(id.to_owned()));
            };
            s.streaming = s.streaming.saturating_sub(1);
            match result {
                Ok(()) => {
                    s.hasher = hasher;
                    s.size += written;
                    s.touched = Instant::now();
                    return Ok(s.size);
                }
                Err(e) => {
                    // The session's bytes on disk no longer match its hash: it cannot go on.
                    let removed = sessions.remove(id);
                    self.open_sessions.set(sessions.by_id.len() as i64);
                    (e, removed)
                }
            }
        };
        let (e, removed) = cut;
        self.release(written);
        if let Some(session) = removed {
            self.release(session.size);
            // Gone before the client hears so, not some time after.
            unlink_now(session.path).await;
        }
        Err(e)
    }

    fn reserve(&self, bytes: u64) -> Result<(), StageError> {
        let limit = self.limits.max_bytes;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + bytes <= limit).then_some(u + bytes)
            })
            .map(|_| ())
            .map_err(|_| StageError::Full { limit })
    }

    /// Finish a session: the content must hash to `digest`. The blob is then staged
    /// under (registry, digest) until its manifest decides its fate.
    pub async fn finish(
        &self,
        id: &str,
        digest: &str,
        body: ProxyBody,
    ) -> Result<StagedBlob, StageError> {
        let Some(expected_hex) = digest.strip_prefix("sha256:") else {
            self.cancel(id);
            return Err(StageError::UnsupportedDigest(digest.to_owned()));
        };
        self.append(id, body).await?;
        let session = {
            let mut sessions = self.sessions();
            let removed = sessions.remove(id);
            self.open_sessions.set(sessions.by_id.len() as i64);
            removed
        }
        .ok_or_else(|| StageError::UnknownSession(id.to_owned()))?;
        let actual = hex::encode(session.hasher.finalize());
        if actual != expected_hex {
            self.release(session.size);
            unlink(session.path);
            return Err(StageError::DigestMismatch {
                expected: digest.to_owned(),
                actual: format!("sha256:{actual}"),
            });
        }
        let path = self
            .dir
            .join(format!("{}-{actual}", sanitize(&session.registry)));
        if session.size == 0 {
            // An empty blob never had a byte, so never a file.
            tokio::fs::write(&path, b"").await.map_err(io(&path))?;
        } else {
            tokio::fs::rename(&session.path, &path)
                .await
                .map_err(io(&path))?;
        }
        let blob = StagedBlob {
            path,
            size: session.size,
        };
        let replaced = self.blobs.lock().ok().and_then(|mut b| {
            let key = (session.registry.clone(), digest.to_owned());
            let mut owners = b.get(&key).map(|s| s.owners.clone()).unwrap_or_default();
            if !owners.contains(&session.owner) {
                owners.push(session.owner.clone());
            }
            b.insert(
                key,
                Staged {
                    blob: blob.clone(),
                    at: Instant::now(),
                    owners,
                },
            )
        });
        if let Some(Staged { blob: old, .. }) = replaced {
            // The same content staged twice shares one file name: count it once.
            self.release(old.size);
        }
        Ok(blob)
    }

    pub fn blob(&self, registry: &str, digest: &str) -> Option<StagedBlob> {
        let blobs = self.blobs.lock().ok()?;
        blobs
            .get(&(registry.to_owned(), digest.to_owned()))
            .map(|s| s.blob.clone())
    }

    /// A staged blob, if `owner` staged it.
    pub fn owned(&self, registry: &str, digest: &str, owner: &Owner) -> Option<StagedBlob> {
        let blobs = self.blobs.lock().ok()?;
        blobs
            .get(&(registry.to_owned(), digest.to_owned()))
            .filter(|s| s.owners.contains(owner))
            .map(|s| s.blob.clone())
    }

    /// Drop a staged blob (sent upstream, or its push rejected).
    pub fn remove(&self, registry: &str, digest: &str) {
        let removed = self
            .blobs
            .lock()
            .ok()
            .and_then(|mut b| b.remove(&(registry.to_owned(), digest.to_owned())));
        if let Some(Staged { blob, .. }) = removed {
            self.release(blob.size);
            unlink(blob.path);
        }
    }

    /// Remove sessions that received no byte within the idle limit, sessions idle and
    /// blobs unclaimed for longer than `age`, except sessions being written to.
    pub fn sweep(&self, age: Duration) -> usize {
        let (expired, stale_sessions) = {
            let mut sessions = self.sessions();
            let expired = self.reap_idle(&mut sessions);
            let stale: Vec<String> = sessions
                .by_id
                .iter()
                .filter(|(_, v)| v.streaming == 0 && v.touched.elapsed() > age)
                .map(|(k, _)| k.clone())
                .collect();
            (expired, stale)
        };
        self.expired.inc_by(expired as u64);
        let stale_blobs: Vec<(String, String)> = self
            .blobs
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|(_, s)| s.at.elapsed() > age)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let n = expired + stale_sessions.len() + stale_blobs.len();
        for id in stale_sessions {
            self.cancel(&id);
        }
        for (registry, digest) in stale_blobs {
            self.remove(&registry, &digest);
        }
        n
    }

    /// How often the sweeper should run so that empty sessions go about on time.
    pub fn sweep_interval(&self) -> Duration {
        (self.limits.idle_session / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

fn sanitize(registry: &str) -> String {
    registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Read a staged blob back as a body (to send it upstream or answer a GET).
pub async fn read(blob: &StagedBlob) -> Result<ProxyBody, StageError> {
    let file = tokio::fs::File::open(&blob.path)
        .await
        .map_err(io(&blob.path))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let body = http_body_util::StreamBody::new(futures_util::StreamExt::map(stream, |chunk| {
        chunk
            .map(http_body::Frame::data)
            .map_err(|e| Box::new(e) as crate::body::BoxError)
    }));
    Ok(crate::body::boxed(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_body(data: &'static str) -> ProxyBody {
        crate::body::full(bytes::Bytes::from_static(data.as_bytes()))
    }

    fn digest(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn owner(client: IpAddr) -> Owner {
        Owner {
            client,
            repository: "someone/app".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_staged_blob_is_readable_only_by_the_push_that_staged_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(dir.path(), limits(1 << 20));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        let d = digest(b"secret");
        stage
            .finish(&id, &d, bytes_body("secret"))
            .await
            .expect("finish");
        assert!(stage.owned("docker.io", &d, &owner(CLIENT)).is_some());
        assert!(stage.owned("docker.io", &d, &owner(OTHER)).is_none());
        let elsewhere = Owner {
            client: CLIENT,
            repository: "other/x".to_owned(),
        };
        assert!(stage.owned("docker.io", &d, &elsewhere).is_none());
        // The same content staged by a second push is that push's too, and still nobody
        // else's.
        let id = stage.start("docker.io", owner(OTHER)).expect("start");
        stage
            .finish(&id, &d, bytes_body("secret"))
            .await
            .expect("finish");
        assert!(stage.owned("docker.io", &d, &owner(OTHER)).is_some());
        assert!(stage.owned("docker.io", &d, &owner(CLIENT)).is_some());
        assert!(stage.owned("docker.io", &d, &elsewhere).is_none());
    }

    fn limits(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_sessions: 1024,
            max_sessions_per_client: 64,
            idle_session: Duration::from_secs(60),
        }
    }

    fn open(dir: &Path, limits: Limits) -> (Stage, Metrics) {
        let metrics = Metrics::new(&prometheus::Registry::new(), []).expect("metrics");
        let stage = Stage::open(&dir.join("stage"), limits, &metrics).expect("stage");
        (stage, metrics)
    }

    /// The files in the stage once removals handed to the blocking pool have run.
    async fn files(dir: &Path) -> usize {
        for _ in 0..200 {
            if count_files(dir) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        count_files(dir)
    }

    fn count_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("stage"))
            .map(|d| d.count())
            .unwrap_or(99)
    }

    #[tokio::test]
    async fn chunked_uploads_are_hashed_verified_and_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(dir.path(), limits(1 << 20));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        assert!(id.starts_with(SESSION_PREFIX));
        assert_eq!(
            stage
                .append(&id, bytes_body("hello "))
                .await
                .expect("append"),
            6
        );
        assert_eq!(stage.status(&id), Some(6));
        let blob = stage
            .finish(&id, &digest(b"hello world"), bytes_body("world"))
            .await
            .expect("finish");
        assert_eq!(blob.size, 11);
        let staged = stage
            .blob("docker.io", &digest(b"hello world"))
            .expect("staged");
        let back = read(&staged)
            .await
            .expect("read")
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&back[..], b"hello world");
        assert_eq!(stage.used_bytes(), 11);
        stage.remove("docker.io", &digest(b"hello world"));
        assert_eq!(stage.used_bytes(), 0);
        for _ in 0..200 {
            if !staged.path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!staged.path.exists());
    }

    #[tokio::test]
    async fn wrong_digests_and_overflows_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(dir.path(), limits(8));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        let err = stage
            .finish(&id, &digest(b"other"), bytes_body("abc"))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
        assert_eq!(stage.used_bytes(), 0);
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        let err = stage
            .append(&id, bytes_body("0123456789"))
            .await
            .expect_err("too big");
        assert!(matches!(err, StageError::Full { limit: 8 }), "{err}");
        assert_eq!(stage.status(&id), None, "a failed session is dropped");
        assert_eq!(stage.used_bytes(), 0);
        assert_eq!(stage.open_sessions(), 0);
    }

    #[tokio::test]
    async fn cancelled_and_stale_uploads_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(dir.path(), limits(1 << 20));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        stage.append(&id, bytes_body("abc")).await.expect("append");
        assert!(stage.cancel(&id));
        assert!(!stage.cancel(&id));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        stage.append(&id, bytes_body("abc")).await.expect("append");
        assert_eq!(stage.sweep(Duration::ZERO), 1);
        assert_eq!(stage.used_bytes(), 0);
        assert_eq!(files(dir.path()).await, 0);
    }

    #[tokio::test]
    async fn a_body_cut_mid_upload_has_its_file_removed_before_the_error_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(dir.path(), limits(1 << 20));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        let frames: Vec<Result<http_body::Frame<bytes::Bytes>, crate::body::BoxError>> = vec![
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"half"))),
            Err("no body data for 3s".into()),
        ];
        let cut = crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )));
        let result = stage.append(&id, cut).await;
        assert!(matches!(result, Err(StageError::Body(_))), "{result:?}");
        // No waiting: the client is answered once the file is gone.
        assert_eq!(count_files(dir.path()), 0);
        assert_eq!(stage.used_bytes(), 0);
        assert!(!stage.cancel(&id), "the session is gone too");
    }

    #[tokio::test]
    async fn empty_sessions_cost_no_file_and_empty_blobs_still_stage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(dir.path(), limits(1 << 20));
        let ids: Vec<String> = (0..10)
            .map(|_| stage.start("docker.io", owner(CLIENT)).expect("start"))
            .collect();
        for id in &ids {
            // What `POST /blobs/uploads/` with no body and an empty PATCH do.
            assert_eq!(
                stage
                    .append(id, crate::body::empty())
                    .await
                    .expect("append"),
                0
            );
        }
        assert_eq!(files(dir.path()).await, 0, "no file before the first byte");
        let blob = stage
            .finish(&ids[0], &digest(b""), crate::body::empty())
            .await
            .expect("an empty blob is a blob");
        assert_eq!(blob.size, 0);
        assert_eq!(std::fs::read(&blob.path).expect("staged"), b"");
    }

    #[test]
    fn sessions_are_bounded_per_client_and_in_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, metrics) = open(
            dir.path(),
            Limits {
                max_sessions: 5,
                max_sessions_per_client: 3,
                ..limits(1 << 20)
            },
        );
        for _ in 0..3 {
            stage
                .start("docker.io", owner(CLIENT))
                .expect("within the client limit");
        }
        let err = stage
            .start("docker.io", owner(CLIENT))
            .expect_err("past the client limit");
        assert!(
            matches!(err, SessionLimit::Client { limit: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("192.0.2.1"), "{err}");
        // Another client still has room, until the total is reached.
        let mut other: Vec<String> = (0..2)
            .map(|_| {
                stage
                    .start("docker.io", owner(OTHER))
                    .expect("another client")
            })
            .collect();
        let err = stage
            .start("docker.io", owner(OTHER))
            .expect_err("past the total");
        assert!(matches!(err, SessionLimit::All { limit: 5, .. }), "{err}");
        assert_eq!(metrics.staging_sessions.get(), 5);
        let refused = |scope: &str| {
            metrics
                .staging_sessions_refused
                .with_label_values(&[scope])
                .get()
        };
        assert_eq!((refused("client"), refused("all")), (1, 1));
        // A finished or cancelled session frees its slot and its client's share.
        assert!(stage.cancel(&other.pop().expect("one")));
        assert_eq!(metrics.staging_sessions.get(), 4);
        stage.start("docker.io", owner(OTHER)).expect("room again");
    }

    #[tokio::test]
    async fn empty_sessions_expire_after_the_idle_limit_and_sessions_with_bytes_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, metrics) = open(
            dir.path(),
            Limits {
                max_sessions_per_client: 2,
                idle_session: Duration::from_millis(50),
                ..limits(1 << 20)
            },
        );
        let with_bytes = stage.start("docker.io", owner(CLIENT)).expect("start");
        stage
            .append(&with_bytes, bytes_body("abc"))
            .await
            .expect("append");
        let _empty = stage.start("docker.io", owner(CLIENT)).expect("start");
        assert!(stage.start("docker.io", owner(CLIENT)).is_err(), "full");
        tokio::time::sleep(Duration::from_millis(80)).await;
        // A full client gets the slot of its own expired empty session at once.
        let again = stage
            .start("docker.io", owner(CLIENT))
            .expect("the empty one expired");
        assert_eq!(metrics.staging_sessions_expired.get(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(stage.sweep(Duration::from_secs(3600)), 1, "only `again`");
        assert_eq!(stage.status(&with_bytes), Some(3), "bytes keep a session");
        assert_eq!(stage.status(&again), None);
        assert_eq!(metrics.staging_sessions.get(), 1);
        assert_eq!(metrics.staging_sessions_expired.get(), 2);
    }

    #[tokio::test]
    async fn a_session_being_written_is_not_swept_and_a_cancel_mid_stream_frees_its_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, _) = open(
            dir.path(),
            Limits {
                idle_session: Duration::ZERO,
                ..limits(1 << 20)
            },
        );
        let stage = std::sync::Arc::new(stage);
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<bytes::Bytes>, crate::body::BoxError>,
        >(1);
        let body = crate::body::boxed(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        let writer = {
            let (stage, id) = (stage.clone(), id.clone());
            tokio::spawn(async move { stage.append(&id, body).await })
        };
        tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"abc",
        ))))
        .await
        .expect("send");
        while stage.used_bytes() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            stage.sweep(Duration::ZERO),
            0,
            "streaming into it right now"
        );
        assert!(stage.cancel(&id));
        drop(tx);
        let err = writer.await.expect("join").expect_err("cancelled");
        assert!(matches!(err, StageError::UnknownSession(_)), "{err}");
        assert_eq!(stage.used_bytes(), 0);
        assert_eq!(files(dir.path()).await, 0);
    }

    #[tokio::test]
    async fn an_append_dropped_mid_body_cancels_its_session_and_frees_its_file_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stage, metrics) = open(dir.path(), limits(1 << 20));
        let id = stage.start("docker.io", owner(CLIENT)).expect("start");
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<bytes::Bytes>, crate::body::BoxError>,
        >(1);
        let body = crate::body::boxed(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"abc",
        ))))
        .await
        .expect("send");
        // What hyper does to a request whose HTTP/2 stream the client resets: the handler's
        // future is dropped where it stands, here waiting for more body.
        let append = stage.append(&id, body);
        let cut = tokio::time::timeout(Duration::from_millis(200), append).await;
        assert!(
            cut.is_err(),
            "the body never ends: the append must still be waiting"
        );
        assert_eq!(stage.status(&id), None, "the session is gone");
        assert_eq!(stage.used_bytes(), 0);
        assert_eq!(files(dir.path()).await, 0);
        assert_eq!(metrics.staging_sessions.get(), 0);
        drop(tx);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

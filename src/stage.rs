//! Local staging of pushed blobs.
//!
//! A content-based decision (labels, provenance) needs the manifest, which a client sends
//! last. So that a rejected push leaves **no byte** at the destination, pushes to public
//! registries under content rules are answered by portcullis itself: upload sessions are
//! written to disk here (hashed while they stream), and only after the manifest passes are
//! the blobs it references sent upstream. Staging is bounded in bytes, and sessions and
//! blobs that no manifest claims are swept after a while.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::body::ProxyBody;

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

struct Session {
    registry: String,
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    touched: Instant,
}

/// A staged, verified blob waiting for its manifest.
#[derive(Debug, Clone)]
pub struct StagedBlob {
    pub path: PathBuf,
    pub size: u64,
}

pub struct Stage {
    dir: PathBuf,
    limit: u64,
    used: AtomicU64,
    sessions: Mutex<HashMap<String, Session>>,
    blobs: Mutex<HashMap<(String, String), (StagedBlob, Instant)>>,
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
    pub fn open(dir: &Path, limit: u64) -> Result<Stage, StageError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Stage {
            dir: dir.to_owned(),
            limit,
            used: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
        })
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Start an upload session for a push to `registry`.
    pub fn start(&self, registry: &str) -> String {
        let id = format!("{SESSION_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let session = Session {
            registry: registry.to_owned(),
            path: self.dir.join(&id),
            size: 0,
            hasher: Sha256::new(),
            touched: Instant::now(),
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(id.clone(), session);
        }
        id
    }

    /// Bytes received so far in a session.
    pub fn status(&self, id: &str) -> Option<u64> {
        self.sessions.lock().ok()?.get(id).map(|s| s.size)
    }

    pub fn cancel(&self, id: &str) -> bool {
        let removed = self.sessions.lock().ok().and_then(|mut s| s.remove(id));
        match removed {
            Some(session) => {
                self.release(session.size);
                let _ = std::fs::remove_file(&session.path);
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

    /// Append a body to a session, streaming it to disk and into the session's hash.
    pub async fn append(&self, id: &str, mut body: ProxyBody) -> Result<u64, StageError> {
        let (path, mut hasher, mut size) = {
            let mut sessions = self
                .sessions
                .lock()
                .map_err(|_| StageError::UnknownSession(id.to_owned()))?;
            let s = sessions
                .get_mut(id)
                .ok_or_else(|| StageError::UnknownSession(id.to_owned()))?;
            s.touched = Instant::now();
            (s.path.clone(), s.hasher.clone(), s.size)
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io(&path))?;
        let mut written = 0u64;
        let result = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| StageError::Body(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                self.reserve(data.len() as u64)?;
                written += data.len() as u64;
                hasher.update(&data);
                file.write_all(&data).await.map_err(io(&path))?;
            }
            file.flush().await.map_err(io(&path))
        }
        .await;
        size += written;
        if let Err(e) = result {
            // The session's bytes on disk no longer match its hash: it cannot go on.
            self.release(written);
            self.cancel(id);
            return Err(e);
        }
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| StageError::UnknownSession(id.to_owned()))?;
        let s = sessions
            .get_mut(id)
            .ok_or_else(|| StageError::UnknownSession(id.to_owned()))?;
        s.hasher = hasher;
        s.size = size;
        Ok(size)
    }

    fn reserve(&self, bytes: u64) -> Result<(), StageError> {
        let limit = self.limit;
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
        let session = self
            .sessions
            .lock()
            .ok()
            .and_then(|mut s| s.remove(id))
            .ok_or_else(|| StageError::UnknownSession(id.to_owned()))?;
        let actual = hex::encode(session.hasher.finalize());
        if actual != expected_hex {
            self.release(session.size);
            let _ = std::fs::remove_file(&session.path);
            return Err(StageError::DigestMismatch {
                expected: digest.to_owned(),
                actual: format!("sha256:{actual}"),
            });
        }
        let path = self
            .dir
            .join(format!("{}-{actual}", sanitize(&session.registry)));
        tokio::fs::rename(&session.path, &path)
            .await
            .map_err(io(&path))?;
        let blob = StagedBlob {
            path,
            size: session.size,
        };
        let replaced = self.blobs.lock().ok().and_then(|mut b| {
            b.insert(
                (session.registry.clone(), digest.to_owned()),
                (blob.clone(), Instant::now()),
            )
        });
        if let Some((old, _)) = replaced {
            // The same content staged twice shares one file name: count it once.
            self.release(old.size);
        }
        Ok(blob)
    }

    pub fn blob(&self, registry: &str, digest: &str) -> Option<StagedBlob> {
        let blobs = self.blobs.lock().ok()?;
        blobs
            .get(&(registry.to_owned(), digest.to_owned()))
            .map(|(b, _)| b.clone())
    }

    /// Drop a staged blob (sent upstream, or its push rejected).
    pub fn remove(&self, registry: &str, digest: &str) {
        let removed = self
            .blobs
            .lock()
            .ok()
            .and_then(|mut b| b.remove(&(registry.to_owned(), digest.to_owned())));
        if let Some((blob, _)) = removed {
            self.release(blob.size);
            let _ = std::fs::remove_file(&blob.path);
        }
    }

    /// Remove sessions idle, and blobs unclaimed, for longer than `age`.
    pub fn sweep(&self, age: Duration) -> usize {
        let stale_sessions: Vec<String> = self
            .sessions
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, v)| v.touched.elapsed() > age)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let stale_blobs: Vec<(String, String)> = self
            .blobs
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|(_, (_, at))| at.elapsed() > age)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let n = stale_sessions.len() + stale_blobs.len();
        for id in stale_sessions {
            self.cancel(&id);
        }
        for (registry, digest) in stale_blobs {
            self.remove(&registry, &digest);
        }
        n
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

    #[tokio::test]
    async fn chunked_uploads_are_hashed_verified_and_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stage = Stage::open(&dir.path().join("stage"), 1 << 20).expect("stage");
        let id = stage.start("docker.io");
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
        assert!(!staged.path.exists());
    }

    #[tokio::test]
    async fn wrong_digests_and_overflows_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stage = Stage::open(&dir.path().join("stage"), 8).expect("stage");
        let id = stage.start("docker.io");
        let err = stage
            .finish(&id, &digest(b"other"), bytes_body("abc"))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
        assert_eq!(stage.used_bytes(), 0);
        let id = stage.start("docker.io");
        let err = stage
            .append(&id, bytes_body("0123456789"))
            .await
            .expect_err("too big");
        assert!(matches!(err, StageError::Full { limit: 8 }), "{err}");
        assert_eq!(stage.status(&id), None, "a failed session is dropped");
        assert_eq!(stage.used_bytes(), 0);
    }

    #[tokio::test]
    async fn cancelled_and_stale_uploads_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stage = Stage::open(&dir.path().join("stage"), 1 << 20).expect("stage");
        let id = stage.start("docker.io");
        stage.append(&id, bytes_body("abc")).await.expect("append");
        assert!(stage.cancel(&id));
        assert!(!stage.cancel(&id));
        let id = stage.start("docker.io");
        stage.append(&id, bytes_body("abc")).await.expect("append");
        assert_eq!(stage.sweep(Duration::ZERO), 1);
        assert_eq!(stage.used_bytes(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("stage"))
                .map(|d| d.count())
                .unwrap_or(99),
            0
        );
    }
}

//! One upstream fetch of a blob, shared by every client that asks for it meanwhile.
//!
//! The leader writes the blob under `tmp/` as it arrives and publishes how far it got;
//! readers ([`super::read::follow`]) stream the same file behind it, so nobody waits for
//! the whole blob. The bytes written must come from a stream that checks them against the
//! digest as they pass ([`crate::body::Verified`]): the leader commits only when that
//! stream ended cleanly, and the readers hold the last byte back until it has.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::BlobCache;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Committed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Known once the upstream answered.
    pub size: Option<u64>,
    pub written: u64,
    pub phase: Phase,
}

pub struct Fill {
    pub(super) tmp: PathBuf,
    pub(super) committed: PathBuf,
    /// `registry/repository` the leader fetches from, when it acts as an identity every
    /// client shares: a follower asking there needs no confirmation of its own.
    pub origin: Option<String>,
    state: watch::Sender<State>,
}

pub enum Begin {
    /// Nobody is fetching it: this request does, for everyone.
    Leader(FillHandle),
    /// Somebody is: read behind them.
    Follower(Arc<Fill>),
}

impl Fill {
    pub(super) fn new(tmp_dir: PathBuf, hex: &str, origin: Option<&str>) -> io::Result<Fill> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = tmp_dir.join(format!("{hex}.{}.{n}", std::process::id()));
        std::fs::File::create(&tmp)?;
        let committed = tmp_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("sha256")
            .join(hex);
        Ok(Fill {
            tmp,
            committed,
            origin: origin.map(str::to_owned),
            state: watch::channel(State {
                size: None,
                written: 0,
                phase: Phase::Running,
            })
            .0,
        })
    }

    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Waits until the size is known; `None` if the fill failed first.
    pub async fn size(&self) -> Option<u64> {
        let mut rx = self.watch();
        loop {
            let state = *rx.borrow_and_update();
            match (state.phase, state.size) {
                (Phase::Failed, _) => return None,
                (_, Some(size)) => return Some(size),
                (Phase::Running | Phase::Committed, None) => {}
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    fn publish(&self, change: impl FnOnce(&mut State)) {
        self.state.send_modify(change);
    }
}

/// The leader's side: writes, then commits or fails. Dropped unfinished, it fails.
pub struct FillHandle {
    cache: Arc<BlobCache>,
    fill: Arc<Fill>,
    hex: String,
    file: Option<tokio::fs::File>,
    written: u64,
    size: Option<u64>,
    done: bool,
}

impl FillHandle {
    pub(super) fn new(cache: Arc<BlobCache>, fill: Arc<Fill>) -> FillHandle {
        let hex = fill
            .committed
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        FillHandle {
            cache,
            fill,
            hex,
            file: None,
            written: 0,
            size: None,
            done: false,
        }
    }

    /// The cache's bound: a larger blob is not worth a fill.
    pub fn max_bytes(&self) -> u64 {
        self.cache.max_bytes
    }

    pub fn fill(&self) -> Arc<Fill> {
        self.fill.clone()
    }

    /// The upstream answered with this `Content-Length`.
    pub fn start(&mut self, size: u64) {
        self.size = Some(size);
        self.fill.publish(|s| s.size = Some(size));
    }

    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&self.fill.tmp)
                .await?;
            self.file = Some(f);
        }
        let too_long = self
            .size
            .is_some_and(|size| self.written + bytes.len() as u64 > size);
        if too_long {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more bytes than the Content-Length",
            ));
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes).await?;
            // tokio's File hands writes to a blocking thread and returns first: readers may
            // only be told of bytes that are in the file.
            f.flush().await?;
        }
        self.written += bytes.len() as u64;
        let written = self.written;
        self.fill.publish(|s| s.written = written);
        Ok(())
    }

    /// The stream ended cleanly: make the blob durable and visible.
    pub async fn commit(mut self) -> io::Result<u64> {
        let size = self.size.unwrap_or(self.written);
        if self.written != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} of {size} bytes", self.written),
            ));
        }
        let file = match self.file.take() {
            Some(f) => f,
            None => tokio::fs::File::open(&self.fill.tmp).await?,
        };
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.fill.tmp, &self.fill.committed).await?;
        if let Some(dir) = self.fill.committed.parent() {
            // The rename itself must survive a crash.
            tokio::fs::File::open(dir).await?.sync_all().await?;
        }
        self.done = true;
        self.cache.finished(&self.hex, Some(size));
        self.fill.publish(|s| s.phase = Phase::Committed);
        Ok(size)
    }
}

impl Drop for FillHandle {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = std::fs::remove_file(&self.fill.tmp);
        self.cache.finished(&self.hex, None);
        self.fill.publish(|s| s.phase = Phase::Failed);
    }
}

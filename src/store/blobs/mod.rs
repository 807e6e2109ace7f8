//! The blob cache: content-addressed files on local disk, shared by every registry and
//! listener.
//!
//! A blob enters only whole and verified: it is written under `tmp/` while its digest is
//! checked as it streams, fsynced, and renamed to `sha256/<hex>`, so a crash leaves at most
//! a file under `tmp/`, which the next start removes; nothing under `sha256/` was ever
//! half-written. The index (digest to size) is rebuilt from `sha256/` at start, oldest
//! first, and evicts the least recently used within the byte bound; a hit touches the
//! file, so the order survives a restart. Concurrent misses for one blob share one upstream
//! fetch ([`fill`]): every client reads the file as it grows.
//!
//! A digest names content, not access: a registry serves a blob only from a repository that
//! has it. So the cache also remembers where each blob was seen (`registry/repository`, as
//! an identity every client shares); a hit anywhere else is served only once the upstream
//! confirms it there ([`crate::pipeline`]'s cached stage asks with a `HEAD`). That memory is
//! this process's: after a restart, the first hit in each repository is confirmed again.

pub mod admin;
pub mod fill;
pub mod read;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use prometheus::{IntCounter, IntGauge};

use fill::{Begin, Fill, FillHandle};

/// The index weighs entries in KiB: moka's weights are `u32`.
const UNIT: u64 = 1024;

/// What the cache reports as it changes.
#[derive(Clone)]
pub struct Counters {
    /// Blobs removed to stay within the bound.
    pub evictions: IntCounter,
    /// Bytes held.
    pub bytes: IntGauge,
}

pub struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    counters: Counters,
    /// Hex digest to size in bytes.
    index: moka::sync::Cache<String, u64>,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    /// (hex digest, `registry/repository`) where a shared identity found the blob.
    seen: moka::sync::Cache<(String, String), ()>,
}

/// Where-seen entries kept: about 200 bytes each.
const MAX_SEEN: u64 = 100_000;

/// What the cache holds, for `portcullis cache status` and the size gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub blobs: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl BlobCache {
    /// Opens (or creates) the cache in `dir`: removes what a crash left in `tmp/`, and
    /// indexes `sha256/`.
    pub fn open(dir: &Path, max_bytes: u64, counters: Counters) -> io::Result<BlobCache> {
        let blobs = dir.join("sha256");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let on_disk = blobs.clone();
        let c = counters.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(max_bytes.div_ceil(UNIT))
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_, size: &u64| u32::try_from(size.div_ceil(UNIT)).unwrap_or(u32::MAX))
            .eviction_listener(move |hex: Arc<String>, size: u64, cause| {
                // Replaced: the same digest, the same file, committed again.
                if cause == RemovalCause::Replaced {
                    return;
                }
                if cause == RemovalCause::Size {
                    c.evictions.inc();
                }
                c.bytes.sub(i64::try_from(size).unwrap_or(i64::MAX));
                let _ = std::fs::remove_file(on_disk.join(hex.as_str()));
            })
            .build();
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if !is_hex_digest(&name) || !meta.is_file() {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            found.push((meta.modified()?, name, meta.len()));
        }
        found.sort();
        for (_, hex, size) in found {
            counters.bytes.add(i64::try_from(size).unwrap_or(i64::MAX));
            index.insert(hex, size);
        }
        index.run_pending_tasks();
        Ok(BlobCache {
            dir: dir.to_owned(),
            max_bytes,
            counters,
            index,
            fills: Mutex::new(HashMap::new()),
            seen: moka::sync::Cache::new(MAX_SEEN),
        })
    }

    /// The file of a cached blob and its size; a hit counts as a use.
    pub fn get(&self, hex: &str) -> Option<(PathBuf, u64)> {
        let size = self.index.get(hex)?;
        let path = self.blob_path(hex);
        // Best effort: the order of the next start's index; the live order is the index's.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some((path, size))
    }

    /// Was the blob found in `repository` (`registry/repository`) by a shared identity?
    pub fn seen_in(&self, hex: &str, repository: &str) -> bool {
        self.seen
            .contains_key(&(hex.to_owned(), repository.to_owned()))
    }

    pub fn saw_in(&self, hex: &str, repository: &str) {
        self.seen
            .insert((hex.to_owned(), repository.to_owned()), ());
    }

    /// Starts a fill of `hex` from `origin` (`None`: as a client's own identity), or joins
    /// the one in flight.
    pub fn begin(self: &Arc<Self>, hex: &str, origin: Option<&str>) -> io::Result<Begin> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = fills.get(hex) {
            return Ok(Begin::Follower(fill.clone()));
        }
        let fill = Arc::new(Fill::new(self.dir.join("tmp"), hex, origin)?);
        fills.insert(hex.to_owned(), fill.clone());
        Ok(Begin::Leader(FillHandle::new(self.clone(), fill)))
    }

    /// A fill is over: committed (its file renamed into place) or not.
    fn finished(&self, hex: &str, committed: Option<u64>) {
        if let Some(size) = committed {
            if !self.index.contains_key(hex) {
                self.counters
                    .bytes
                    .add(i64::try_from(size).unwrap_or(i64::MAX));
            }
            self.index.insert(hex.to_owned(), size);
            // Commits are rare next to reads: keep the bound, and the order of uses, now.
            self.index.run_pending_tasks();
        }
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        fills.remove(hex);
    }

    /// Drops a blob: its bytes did not match its digest, or an admin purged it.
    pub fn evict(&self, hex: &str) {
        self.index.invalidate(hex);
        self.index.run_pending_tasks();
    }

    pub fn usage(&self) -> Usage {
        self.index.run_pending_tasks();
        Usage {
            blobs: self.index.entry_count(),
            bytes: u64::try_from(self.counters.bytes.get()).unwrap_or(0),
            max_bytes: self.max_bytes,
        }
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(hex)
    }
}

pub(crate) fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn counters() -> Counters {
        Counters {
            evictions: IntCounter::new("evictions", "test").expect("counter"),
            bytes: IntGauge::new("bytes", "test").expect("gauge"),
        }
    }

    async fn put(cache: &Arc<BlobCache>, bytes: &[u8]) {
        let Begin::Leader(mut fill) = cache.begin(&hex(bytes), None).expect("begin") else {
            panic!("a fill in flight");
        };
        fill.start(bytes.len() as u64);
        fill.write(bytes).await.expect("write");
        fill.commit().await.expect("commit");
    }

    #[tokio::test]
    async fn a_committed_blob_survives_a_restart_and_a_crashed_fill_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20, counters()).expect("open"));
        put(&cache, b"one blob").await;
        // A fill that never finished: its bytes are under tmp/ only.
        let Begin::Leader(mut crashed) = cache.begin(&hex(b"two"), None).expect("begin") else {
            panic!("a fill in flight");
        };
        crashed.start(3);
        crashed.write(b"tw").await.expect("write");
        std::mem::forget(crashed);
        drop(cache);

        let cache = BlobCache::open(dir.path(), 1 << 20, counters()).expect("reopen");
        let (path, size) = cache.get(&hex(b"one blob")).expect("indexed again");
        assert_eq!(
            (std::fs::read(path).expect("read"), size),
            (b"one blob".to_vec(), 8)
        );
        assert!(cache.get(&hex(b"two")).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn the_least_recently_used_blob_goes_first_when_the_bound_is_reached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counters = counters();
        let cache =
            Arc::new(BlobCache::open(dir.path(), 3 * 1024, counters.clone()).expect("open"));
        let (a, b, c) = (vec![b'a'; 1024], vec![b'b'; 1024], vec![b'c'; 1024]);
        put(&cache, &a).await;
        put(&cache, &b).await;
        assert!(cache.get(&hex(&a)).is_some(), "a used after b");
        put(&cache, &c).await;
        put(&cache, &vec![b'd'; 1024]).await;
        let usage = cache.usage();
        assert!(usage.bytes <= 3 * 1024, "{usage:?}");
        assert!(
            cache.get(&hex(&b)).is_none(),
            "b was the least recently used"
        );
        assert!(cache.get(&hex(&a)).is_some());
        assert!(!dir.path().join("sha256").join(hex(&b)).exists());
        assert_eq!(counters.evictions.get(), 1);
        assert_eq!(counters.bytes.get(), 3 * 1024);
    }

    #[tokio::test]
    async fn a_wrong_size_or_an_abandoned_fill_commits_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20, counters()).expect("open"));
        let Begin::Leader(mut short) = cache.begin(&hex(b"four"), None).expect("begin") else {
            panic!("a fill in flight");
        };
        short.start(4);
        short.write(b"fou").await.expect("write");
        assert!(short.commit().await.is_err());
        assert!(cache.get(&hex(b"four")).is_none());
        let Begin::Leader(abandoned) = cache.begin(&hex(b"four"), None).expect("begin again")
        else {
            panic!("the failed fill is still in flight");
        };
        drop(abandoned);
        assert!(matches!(
            cache.begin(&hex(b"four"), None).expect("begin"),
            Begin::Leader(_)
        ));
    }
}

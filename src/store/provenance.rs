//! Where blobs have been seen: only in private registries, or also in a public one.
//!
//! Private-push protection asks whether a layer or config blob has been seen **only** in
//! private registries: such a blob is probably proprietary, and pushing it to a public
//! registry would leak it. Blob pulls and pushes record the digest with the kind of
//! registry they went to; the answer is a heuristic, so losing the last few records in a
//! crash is acceptable, but losing everything on restart is not. Hence an embedded on-disk
//! store (redb) in the state directory.
//!
//! Layout: `digests` maps a digest to its flags and the sequence number of its last write;
//! `by_seq` maps that sequence number back to the digest, so the least recently written
//! entries are found in key order and evicted, in the same transaction, when the store is
//! over its bound.
//!
//! Records are buffered in memory and written by a background thread, one durable
//! transaction per batch. A durable redb commit measured 1 to 7 ms on this project's 2-core
//! machines (an fsync on a virtual disk), over the budget for something done on every blob
//! pull; and redb's `Durability::Eventual` is the same fsync on Linux, so it is no way out.
//! Buffered, a record is a hash-map insert under a mutex (about 2 µs). The batch is written
//! [`FLUSH_AFTER`] after its first record, or as soon as it holds [`FLUSH_AT`] digests: a
//! crash loses at most that window, which only weakens the heuristic.
//! [`Provenance::private_only`] sees buffered records at once; dropping the store (or
//! [`Provenance::flush`]) writes everything.
//!
//! A third table, `names`, keeps up to [`MAX_NAMES`] fully qualified names each digest was
//! seen under (most recent first), for `[[private]]` `name` patterns: an image pulled from
//! `corp.example.com/team/app` and retagged keeps its origin in its blobs' records. It is
//! evicted with its digest.
//!
//! A store written before portcullis moved to redb 3 (redb 2's file format) is upgraded, once,
//! when it is opened; see `migrate`.
//!
//! The store is opened once per process: redb locks the file, and a second `open` of the same
//! directory fails until the first [`Provenance`] is dropped.

use std::collections::HashMap;
use std::fmt;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod migrate;

pub use migrate::MigrateError;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

/// The store's file name inside the directory given to [`Provenance::open`].
pub const FILE_NAME: &str = "provenance.redb";

const DIGESTS: TableDefinition<&str, (u8, u64)> = TableDefinition::new("digests");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");

/// Names kept per digest: enough for the places one layer is really pulled from, bounded so
/// that a base layer pulled under thousands of names costs the same as any other.
pub const MAX_NAMES: usize = 8;
/// Longer names are not recorded (a repository name is far shorter in practice).
pub const MAX_NAME_BYTES: usize = 255;

/// redb's errors are large (clippy's `result_large_err`); boxed, the `Ok` path stays small.
type StoreResult<T> = Result<T, Box<redb::Error>>;

trait Boxed<T> {
    fn boxed(self) -> StoreResult<T>;
}

impl<T, E: Into<redb::Error>> Boxed<T> for Result<T, E> {
    fn boxed(self) -> StoreResult<T> {
        self.map_err(|e| Box::new(e.into()))
    }
}

const SEEN_PRIVATE: u8 = 1;
const SEEN_PUBLIC: u8 = 2;

/// How long a record may wait in memory: what a crash can lose.
pub const FLUSH_AFTER: Duration = Duration::from_millis(500);
/// A batch this large is written without waiting for [`FLUSH_AFTER`].
pub const FLUSH_AT: usize = 1024;
/// Past this many buffered digests (the disk is failing, or cannot keep up) records are
/// refused rather than held in memory without bound.
pub const MAX_BUFFERED: usize = 64 * 1024;
/// redb's default cache is 1 GiB; this store's hot set (recent digests and the B-tree
/// interior pages) is far smaller, and the proxy should not look like it is leaking.
const CACHE_BYTES: usize = 16 << 20;
/// Evicting in batches of up to this many amortises the eviction over many records.
const MAX_EVICT_BATCH: u64 = 1024;

/// The kind of registry a blob was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Private,
    Public,
}

impl Seen {
    fn flag(self) -> u8 {
        match self {
            Seen::Private => SEEN_PRIVATE,
            Seen::Public => SEEN_PUBLIC,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("provenance store bound (max_entries) must be at least 1, got 0")]
    ZeroBound,
    #[error("cannot create directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open provenance store {path}")]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("cannot start the writer thread of provenance store {path}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("provenance store {path} failed")]
    Store {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "provenance store {path} is not keeping up: {buffered} records are waiting to be written"
    )]
    Backlog { path: PathBuf, buffered: usize },
    #[error(
        "cannot upgrade provenance store {path} from redb 2's file format; it is left as it was"
    )]
    Migrate {
        path: PathBuf,
        source: Box<MigrateError>,
    },
}

/// A buffered record: its flags, the names it was seen under (most recent first) and its
/// place in the order records arrived.
#[derive(Clone, Debug)]
struct Buffered {
    flags: u8,
    names: Vec<Arc<str>>,
    order: u64,
}

/// Put `name` first in `names`, once, keeping at most [`MAX_NAMES`].
fn remember_name(names: &mut Vec<Arc<str>>, name: &str) {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return;
    }
    names.retain(|n| &**n != name);
    names.insert(0, Arc::from(name));
    names.truncate(MAX_NAMES);
}

/// Newer names first, then older ones not already there, at most [`MAX_NAMES`].
fn merge_names(newer: &[Arc<str>], older: impl IntoIterator<Item = Arc<str>>) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = newer.to_vec();
    for name in older {
        if out.len() >= MAX_NAMES {
            break;
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out.truncate(MAX_NAMES);
    out
}

type Batch = HashMap<String, Buffered>;

#[derive(Default)]
struct Buffer {
    pending: Batch,
    /// The batch being written, still visible to lookups until its commit is done.
    inflight: Option<Arc<Batch>>,
    next_order: u64,
    /// When the oldest pending record arrived.
    since: Option<Instant>,
    shutdown: bool,
}

impl Buffer {
    fn add(&mut self, digest: &str, flag: u8, name: Option<&str>) {
        let order = self.next_order;
        self.next_order += 1;
        match self.pending.get_mut(digest) {
            Some(entry) => {
                entry.flags |= flag;
                entry.order = order;
                if let Some(name) = name {
                    remember_name(&mut entry.names, name);
                }
            }
            None => {
                let mut names = Vec::new();
                if let Some(name) = name {
                    remember_name(&mut names, name);
                }
                self.pending.insert(
                    digest.to_owned(),
                    Buffered {
                        flags: flag,
                        names,
                        order,
                    },
                );
            }
        }
    }

    /// Buffered names of `digest`: the pending batch's, then the one being written.
    fn names(&self, digest: &str) -> Vec<Arc<str>> {
        let pending = self.pending.get(digest).map(|b| b.names.as_slice());
        let inflight = self
            .inflight
            .as_ref()
            .and_then(|batch| batch.get(digest))
            .map(|b| b.names.clone())
            .unwrap_or_default();
        merge_names(pending.unwrap_or_default(), inflight)
    }

    fn flags(&self, digest: &str) -> u8 {
        let pending = self.pending.get(digest).map_or(0, |b| b.flags);
        let inflight = self
            .inflight
            .as_ref()
            .and_then(|batch| batch.get(digest))
            .map_or(0, |b| b.flags);
        pending | inflight
    }
}

struct Shared {
    db: Database,
    path: PathBuf,
    max_entries: u64,
    /// How far below `max_entries` an eviction goes, so the next records do not evict again.
    batch: u64,
    buffer: Mutex<Buffer>,
    /// Wakes the writer thread: first record of a batch, a full batch, shutdown.
    wake: Condvar,
    /// Serialises flushes, so batches commit in the order they were taken.
    flushing: Mutex<()>,
}

/// The on-disk record of where digests have been seen; `Send + Sync`, share it behind `Arc`.
///
/// [`record`](Provenance::record) and [`private_only`](Provenance::private_only) are cheap
/// enough to call on the async runtime (a buffered insert; a lookup is a B-tree read of tens
/// of microseconds). [`flush`](Provenance::flush), [`open`](Provenance::open) and dropping
/// the store wait for an fsync.
pub struct Provenance {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provenance")
            .field("path", &self.shared.path)
            .field("max_entries", &self.shared.max_entries)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the buffer consistent between statements that cannot
    // panic, so a poisoned lock still guards valid data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Provenance {
    /// Opens (creating, with its directory at 0700) `<dir>/provenance.redb`; `max_entries`
    /// bounds the number of digests kept.
    pub fn open(dir: &Path, max_entries: u64) -> Result<Provenance, ProvenanceError> {
        if max_entries == 0 {
            return Err(ProvenanceError::ZeroBound);
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ProvenanceError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = dir.join(FILE_NAME);
        let create = || {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
        };
        let db = match create() {
            // Written by portcullis before redb 3: upgraded once, in place (see `migrate`).
            Err(redb::DatabaseError::UpgradeRequired(_)) => {
                let contents = migrate::upgrade(dir, &path).map_err(|source| {
                    ProvenanceError::Migrate {
                        path: path.clone(),
                        source: Box::new(source),
                    }
                })?;
                tracing::info!(path = %path.display(), %contents, "provenance store upgraded from redb 2's file format");
                create()
            }
            opened => opened,
        }
        .map_err(|source| ProvenanceError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let shared = Arc::new(Shared {
            db,
            path,
            max_entries,
            // Small stores evict exactly the excess; a batch would be most of the store.
            batch: (max_entries / 64).min(MAX_EVICT_BATCH),
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
            flushing: Mutex::new(()),
        });
        // Creating the tables up front means readers never meet a missing table, and it
        // proves now, not on the first pull, that the file is writable. A bound lower than
        // last time takes effect here too.
        shared.write(&[])?;
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("provenance".into())
            .spawn(move || for_writer.run_writer())
            .map_err(|source| ProvenanceError::Spawn {
                path: shared.path.clone(),
                source,
            })?;
        Ok(Provenance {
            shared,
            writer: Some(writer),
        })
    }

    /// Records that `digest` (e.g. `sha256:<hex>`) was seen in a registry of this kind.
    ///
    /// Buffered: written within [`FLUSH_AFTER`], visible to
    /// [`private_only`](Provenance::private_only) at once. Fails only when the store is
    /// not keeping up ([`MAX_BUFFERED`] records waiting).
    pub fn record(&self, digest: &str, seen: Seen) -> Result<(), ProvenanceError> {
        self.shared.add(std::iter::once(digest), seen.flag(), None)
    }

    /// Records that `digest` was seen in a registry of this kind under the fully qualified
    /// `name` (`corp.example.com/team/app`).
    pub fn record_named(
        &self,
        digest: &str,
        seen: Seen,
        name: &str,
    ) -> Result<(), ProvenanceError> {
        self.shared
            .add(std::iter::once(digest), seen.flag(), Some(name))
    }

    /// Records several digests at once; they are written in the same transaction.
    pub fn record_many(&self, digests: &[String], seen: Seen) -> Result<(), ProvenanceError> {
        self.shared
            .add(digests.iter().map(String::as_str), seen.flag(), None)
    }

    /// Records several digests seen under one name, in one transaction.
    pub fn record_many_named(
        &self,
        digests: &[String],
        seen: Seen,
        name: &str,
    ) -> Result<(), ProvenanceError> {
        self.shared
            .add(digests.iter().map(String::as_str), seen.flag(), Some(name))
    }

    /// The fully qualified names `digest` was seen under, most recent first (at most
    /// [`MAX_NAMES`]; none for an unknown or evicted digest).
    pub fn names(&self, digest: &str) -> Result<Vec<String>, ProvenanceError> {
        let buffered = lock(&self.shared.buffer).names(digest);
        let stored = self.shared.read(|txn| {
            let table = txn.open_table(NAMES).boxed()?;
            let names = table
                .get(digest)
                .boxed()?
                .map(|entry| split_names(entry.value()))
                .unwrap_or_default();
            Ok(names)
        })?;
        Ok(merge_names(&buffered, stored)
            .iter()
            .map(|n| n.to_string())
            .collect())
    }

    /// True when the digest was seen in a private registry and never in a public one
    /// (as far as the store remembers: an evicted or unknown digest is `false`).
    pub fn private_only(&self, digest: &str) -> Result<bool, ProvenanceError> {
        // The buffer is read before the store: a batch leaves the buffer only after its
        // commit, so a record is always in one or the other.
        let buffered = lock(&self.shared.buffer).flags(digest);
        if buffered & SEEN_PUBLIC != 0 {
            return Ok(false);
        }
        let stored = self.shared.read(|txn| {
            let table = txn.open_table(DIGESTS).boxed()?;
            let flags = table
                .get(digest)
                .boxed()?
                .map_or(0, |entry| entry.value().0);
            Ok(flags)
        })?;
        let flags = buffered | stored;
        Ok(flags & SEEN_PRIVATE != 0 && flags & SEEN_PUBLIC == 0)
    }

    /// The number of digests written to the store (records still buffered are not counted).
    pub fn len(&self) -> Result<u64, ProvenanceError> {
        self.shared
            .read(|txn| txn.open_table(DIGESTS).boxed()?.len().boxed())
    }

    /// True when no digest has been written to the store.
    pub fn is_empty(&self) -> Result<bool, ProvenanceError> {
        Ok(self.len()? == 0)
    }

    /// Writes every buffered record now, durably (an fsync). Dropping the store does the same.
    pub fn flush(&self) -> Result<(), ProvenanceError> {
        self.shared.flush()
    }
}

impl Drop for Provenance {
    fn drop(&mut self) {
        lock(&self.shared.buffer).shutdown = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            // The writer's last act is a final flush; joining it means the database is
            // closed (and its file lock released) when the last `Arc` here goes.
            if writer.join().is_err() {
                tracing::error!(path = %self.shared.path.display(), "provenance writer panicked");
            }
        }
    }
}

impl Shared {
    fn add<'d>(
        &self,
        digests: impl ExactSizeIterator<Item = &'d str>,
        flag: u8,
        name: Option<&str>,
    ) -> Result<(), ProvenanceError> {
        if digests.len() == 0 {
            return Ok(());
        }
        let mut buffer = lock(&self.buffer);
        let waiting = buffer.pending.len();
        if waiting >= MAX_BUFFERED {
            return Err(ProvenanceError::Backlog {
                path: self.path.clone(),
                buffered: waiting,
            });
        }
        for digest in digests {
            buffer.add(digest, flag, name);
        }
        // The writer sleeps until a batch starts, then until it is due or full.
        let starts = buffer.since.is_none();
        if starts {
            buffer.since = Some(Instant::now());
        }
        if starts || (waiting < FLUSH_AT && buffer.pending.len() >= FLUSH_AT) {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn run_writer(&self) {
        // After a failed flush, retrying at once would spin on a broken disk.
        let mut not_before = Instant::now();
        let mut buffer = lock(&self.buffer);
        loop {
            let now = Instant::now();
            let due = buffer.since.map(|since| {
                let due = if buffer.pending.len() >= FLUSH_AT {
                    now
                } else {
                    since + FLUSH_AFTER
                };
                due.max(not_before)
            });
            if buffer.shutdown || due.is_some_and(|due| due <= now) {
                let last = buffer.shutdown;
                drop(buffer);
                if let Err(error) = self.flush() {
                    tracing::error!(error = %crate::error::chain(&error), "cannot write provenance records");
                    not_before = Instant::now() + FLUSH_AFTER;
                }
                if last {
                    return;
                }
                buffer = lock(&self.buffer);
                continue;
            }
            buffer = match due {
                None => self
                    .wake
                    .wait(buffer)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(due) => {
                    self.wake
                        .wait_timeout(buffer, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Writes the pending batch in one durable transaction. On failure the batch goes back
    /// to the buffer (as far as there is room) to be tried again with the next one.
    fn flush(&self) -> Result<(), ProvenanceError> {
        let _serial = lock(&self.flushing);
        let batch = {
            let mut buffer = lock(&self.buffer);
            if buffer.pending.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut buffer.pending));
            buffer.inflight = Some(batch.clone());
            buffer.since = None;
            batch
        };
        let mut ordered: Vec<(&str, &Buffered)> =
            batch.iter().map(|(d, b)| (d.as_str(), b)).collect();
        ordered.sort_unstable_by_key(|(_, b)| b.order);
        let result = self.write(&ordered);
        let mut buffer = lock(&self.buffer);
        buffer.inflight = None;
        if result.is_err() {
            for (digest, old) in ordered {
                if let Some(newer) = buffer.pending.get_mut(digest) {
                    newer.flags |= old.flags;
                    newer.names = merge_names(&newer.names, old.names.iter().cloned());
                } else if buffer.pending.len() < MAX_BUFFERED {
                    buffer.pending.insert(digest.to_owned(), old.clone());
                }
            }
            buffer.since.get_or_insert_with(Instant::now);
        }
        result
    }

    fn store_error(&self, source: Box<redb::Error>) -> ProvenanceError {
        ProvenanceError::Store {
            path: self.path.clone(),
            source,
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T>,
    ) -> Result<T, ProvenanceError> {
        let txn = self
            .db
            .begin_read()
            .boxed()
            .map_err(|e| self.store_error(e))?;
        f(&txn).map_err(|e| self.store_error(e))
    }

    /// Records `batch` (in order) in one durable write transaction, evicting the least
    /// recently written entries if the store is over its bound.
    fn write(&self, batch: &[(&str, &Buffered)]) -> Result<(), ProvenanceError> {
        let txn = self
            .db
            .begin_write()
            .boxed()
            .map_err(|e| self.store_error(e))?;
        self.write_tables(&txn, batch)
            .map_err(|e| self.store_error(e))?;
        txn.commit().boxed().map_err(|e| self.store_error(e))
    }

    fn write_tables(&self, txn: &WriteTransaction, batch: &[(&str, &Buffered)]) -> StoreResult<()> {
        let by_seq = txn.open_table(BY_SEQ).boxed()?;
        // The sequence lives in the data itself, so it survives restarts without a counter.
        let next = by_seq.last().boxed()?.map_or(0, |(seq, _)| seq.value() + 1);
        let mut tables = Tables {
            digests: txn.open_table(DIGESTS).boxed()?,
            by_seq,
            names: txn.open_table(NAMES).boxed()?,
            next,
        };
        for (digest, buffered) in batch {
            tables.record(digest, buffered.flags, &buffered.names)?;
        }
        tables.evict(self.max_entries, self.batch)
    }
}

/// The tables of one write transaction and the next sequence number to hand out.
struct Tables<'t> {
    digests: Table<'t, &'static str, (u8, u64)>,
    by_seq: Table<'t, u64, &'static str>,
    names: Table<'t, &'static str, &'static str>,
    next: u64,
}

/// Names are stored newline-separated: a newline cannot occur in a repository name.
fn split_names(stored: &str) -> Vec<Arc<str>> {
    stored
        .split('\n')
        .filter(|n| !n.is_empty())
        .map(Arc::from)
        .collect()
}

impl Tables<'_> {
    fn record(&mut self, digest: &str, flag: u8, names: &[Arc<str>]) -> StoreResult<()> {
        if !names.is_empty() {
            let stored = self
                .names
                .get(digest)
                .boxed()?
                .map(|entry| split_names(entry.value()))
                .unwrap_or_default();
            let merged = merge_names(names, stored);
            let joined = merged.iter().map(|n| &**n).collect::<Vec<_>>().join("\n");
            self.names.insert(digest, joined.as_str()).boxed()?;
        }
        let old = self.digests.get(digest).boxed()?.map(|entry| entry.value());
        let flags = match old {
            Some((flags, old_seq)) => {
                self.by_seq.remove(old_seq).boxed()?;
                flags | flag
            }
            None => flag,
        };
        let seq = self.next;
        self.next += 1;
        self.digests.insert(digest, (flags, seq)).boxed()?;
        self.by_seq.insert(seq, digest).boxed()?;
        Ok(())
    }

    /// Over `max_entries`, drops the least recently written entries down to
    /// `max_entries - batch`, so the store never holds more than `max_entries` after a commit.
    fn evict(&mut self, max_entries: u64, batch: u64) -> StoreResult<()> {
        let len = self.digests.len().boxed()?;
        if len <= max_entries {
            return Ok(());
        }
        for _ in max_entries - batch..len {
            let Some((_, digest)) = self.by_seq.pop_first().boxed()? else {
                break;
            };
            self.digests.remove(digest.value()).boxed()?;
            self.names.remove(digest.value()).boxed()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn digest(n: u64) -> String {
        format!("sha256:{n:064x}")
    }

    fn record_flushed(store: &Provenance, n: u64, seen: Seen) {
        store.record(&digest(n), seen).expect("record");
        store.flush().expect("flush");
    }

    #[test]
    fn is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Provenance>();
    }

    #[test]
    fn private_only_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 100).expect("open");
        // Each case once from the buffer, once from disk.
        for flush in [false, true] {
            let base = if flush { 100 } else { 0 };
            let check = |n: u64, seen: Seen, expect: bool, why: &str| {
                store.record(&digest(base + n), seen).expect("record");
                if flush {
                    store.flush().expect("flush");
                }
                let answer = store.private_only(&digest(base + n)).expect("lookup");
                assert_eq!(answer, expect, "{why} (flushed: {flush})");
            };
            assert!(!store.private_only(&digest(base)).expect("unknown"));
            check(1, Seen::Private, true, "private");
            check(1, Seen::Private, true, "private twice");
            check(1, Seen::Public, false, "private then public");
            check(
                1,
                Seen::Private,
                false,
                "a public sighting is never forgotten",
            );
            check(2, Seen::Public, false, "public");
            check(2, Seen::Private, false, "public then private");
        }
        store.flush().expect("flush");
        assert_eq!(store.len().expect("len"), 4);
    }

    #[test]
    fn buffered_and_stored_flags_combine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 100).expect("open");
        record_flushed(&store, 1, Seen::Public);
        store.record(&digest(1), Seen::Private).expect("buffered");
        assert!(!store.private_only(&digest(1)).expect("public on disk"));
        record_flushed(&store, 2, Seen::Private);
        store.record(&digest(2), Seen::Public).expect("buffered");
        assert!(!store.private_only(&digest(2)).expect("public in buffer"));
    }

    #[test]
    fn record_many_is_one_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 100).expect("open");
        let digests: Vec<String> = (0..10).map(digest).collect();
        store.record_many(&digests, Seen::Private).expect("many");
        store.record_many(&[], Seen::Public).expect("none");
        store
            .record_many(&digests[..5], Seen::Public)
            .expect("some");
        store.flush().expect("flush");
        assert_eq!(store.len().expect("len"), 10);
        for (n, d) in digests.iter().enumerate() {
            assert_eq!(store.private_only(d).expect("lookup"), n >= 5, "{d}");
        }
    }

    #[test]
    fn the_writer_thread_flushes_by_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 10 * FLUSH_AT as u64).expect("open");
        store.record(&digest(1), Seen::Private).expect("record");
        // Generous: the machine is shared, and only "eventually, unprompted" matters.
        let deadline = Instant::now() + FLUSH_AFTER + Duration::from_secs(20);
        while store.len().expect("len") == 0 {
            assert!(
                Instant::now() < deadline,
                "not written after {FLUSH_AFTER:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A full batch does not wait for the timer.
        let many: Vec<String> = (100..100 + FLUSH_AT as u64).map(digest).collect();
        store.record_many(&many, Seen::Private).expect("many");
        while store.len().expect("len") < 1 + FLUSH_AT as u64 {
            assert!(Instant::now() < deadline, "full batch not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn eviction_keeps_the_newest_under_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 200;
        let store = Provenance::open(dir.path(), max).expect("open");
        for n in 0..1000 {
            store.record(&digest(n), Seen::Private).expect("record");
            if n % 50 == 49 {
                store.flush().expect("flush");
                assert!(store.len().expect("len") <= max);
            }
        }
        let len = store.len().expect("len");
        let batch = max / 64;
        assert!(len >= max - batch, "evicted too much: {len}");
        // The last `len` written survive; everything before them is gone.
        for n in 0..1000 {
            let kept = n >= 1000 - len;
            assert_eq!(store.private_only(&digest(n)).expect("lookup"), kept, "{n}");
        }

        // A re-recorded digest is recently written again and outlives older ones.
        let old = 1000 - len;
        record_flushed(&store, old, Seen::Private);
        for n in 1000..1000 + max - batch - 2 {
            store.record(&digest(n), Seen::Private).expect("record");
        }
        store.flush().expect("flush");
        assert!(store.private_only(&digest(old)).expect("refreshed entry"));
        assert!(!store.private_only(&digest(old + 1)).expect("older entry"));
    }

    #[test]
    fn a_bound_of_one_keeps_the_last_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 1).expect("open");
        record_flushed(&store, 1, Seen::Private);
        record_flushed(&store, 2, Seen::Private);
        assert_eq!(store.len().expect("len"), 1);
        assert!(store.private_only(&digest(2)).expect("newest"));
        let many: Vec<String> = (10..20).map(digest).collect();
        store.record_many(&many, Seen::Private).expect("many");
        store.flush().expect("flush");
        assert_eq!(store.len().expect("len"), 1);
        assert!(store.private_only(&digest(19)).expect("last of the batch"));
    }

    #[test]
    fn reopening_keeps_the_data_and_the_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Provenance::open(dir.path(), 10).expect("open");
            for n in 0..10 {
                record_flushed(&store, n, Seen::Private);
            }
            // Still buffered: dropping the store must write it.
            store.record(&digest(3), Seen::Public).expect("record");
        }
        let store = Provenance::open(dir.path(), 10).expect("reopen");
        assert_eq!(store.len().expect("len"), 10);
        assert!(store.private_only(&digest(0)).expect("kept"));
        assert!(!store.private_only(&digest(3)).expect("public kept"));
        // Sequence numbers continue after a restart: new records evict the oldest, not
        // the ones written just before the restart.
        record_flushed(&store, 100, Seen::Private);
        assert!(!store.private_only(&digest(0)).expect("oldest evicted"));
        assert!(store.private_only(&digest(9)).expect("newest kept"));
        drop(store);

        // A lower bound at the next start applies at once.
        let store = Provenance::open(dir.path(), 4).expect("reopen smaller");
        assert_eq!(store.len().expect("len"), 4);
        assert!(store.private_only(&digest(100)).expect("newest kept"));
    }

    #[test]
    fn unusable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").expect("file");
        let error = Provenance::open(&file, 10).expect_err("a file is not a directory");
        assert!(
            error.to_string().contains(&file.display().to_string()),
            "{error}"
        );
        let under = file.join("state");
        let error = Provenance::open(&under, 10).expect_err("cannot create under a file");
        assert!(
            error.to_string().contains(&under.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn corrupt_store_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("garbage");
        let error = Provenance::open(dir.path(), 10).expect_err("corrupt");
        assert!(matches!(error, ProvenanceError::Open { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn names_are_kept_most_recent_first_bounded_across_flushes_and_evicted_with_their_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 2).expect("open");
        let d = digest(1);
        store
            .record_named(&d, Seen::Private, "corp.example.com/team/app")
            .expect("record");
        assert_eq!(
            store.names(&d).expect("names"),
            ["corp.example.com/team/app"],
            "buffered names are visible at once"
        );
        store.flush().expect("flush");
        store
            .record_named(&d, Seen::Private, "corp.example.com/other/app")
            .expect("record");
        assert_eq!(
            store.names(&d).expect("names"),
            ["corp.example.com/other/app", "corp.example.com/team/app"],
            "buffered and stored names combine, newest first"
        );
        for n in 0..20 {
            store
                .record_named(&d, Seen::Private, &format!("r.example/n{n}"))
                .expect("record");
        }
        store.flush().expect("flush");
        let names = store.names(&d).expect("names");
        assert_eq!(names.len(), MAX_NAMES);
        assert_eq!(names[0], "r.example/n19");
        store.record(&digest(2), Seen::Private).expect("record");
        store.record(&digest(3), Seen::Private).expect("record");
        store.flush().expect("flush");
        assert!(
            store.names(&d).expect("names").is_empty(),
            "an evicted digest keeps no names"
        );
        assert!(store.names(&digest(9)).expect("names").is_empty());
    }

    #[test]
    fn zero_bound_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Provenance::open(dir.path(), 0),
            Err(ProvenanceError::ZeroBound)
        ));
    }

    /// Run with `--nocapture` to see the numbers. No assertion on time: the machine is shared.
    #[test]
    fn record_latency() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 100_000).expect("open");
        const N: u64 = 1000;
        let mut each = Vec::with_capacity(N as usize);
        let start = Instant::now();
        for n in 0..N {
            let t = Instant::now();
            store.record(&digest(n), Seen::Private).expect("record");
            each.push(t.elapsed());
        }
        let total = start.elapsed();
        each.sort();
        let at = |q: f64| each[((each.len() - 1) as f64 * q) as usize];
        println!(
            "provenance record: {N} in {total:?}, mean {:?}, p50 {:?}, p99 {:?}, max {:?}",
            total / N as u32,
            at(0.5),
            at(0.99),
            at(1.0),
        );

        let t = Instant::now();
        store.flush().expect("flush");
        println!(
            "provenance flush of up to {N} buffered records: {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        for n in 0..N {
            store.private_only(&digest(n)).expect("lookup");
        }
        println!("provenance private_only: mean {:?}", t.elapsed() / N as u32);

        // What a durable commit per record would cost instead of buffering.
        let t = Instant::now();
        for n in 0..20 {
            record_flushed(&store, N + n, Seen::Public);
        }
        println!(
            "provenance one record per durable commit: mean {:?}",
            t.elapsed() / 20
        );
    }
}

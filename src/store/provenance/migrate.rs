//! Upgrades a provenance store written in redb 2's file format (v2) to the one redb 3 and
//! later read (v3).
//!
//! Why it exists: portcullis wrote its store with redb 2, which creates v2 files; redb 3
//! dropped v2 support, and its changelog (3.0.0) gives one upgrade path, redb 2.6's
//! `Database::upgrade()`. Hence the migration-only `redb2` dependency, used nowhere else.
//! The tables need no conversion: `&str`, `u64` and the fixed-width `(u8, u64)` are encoded
//! the same in both (only variable-width tuples changed, and 4.x dropped their `Legacy` shim).
//!
//! Crash safety: `upgrade()` rewrites the file's header slots in place, and redb does not
//! document that step as atomic, so it never runs on the only copy. The original is locked
//! (as redb locks it: a running old server makes this fail rather than race), copied to
//! [`TEMP_NAME`] in the same directory, the copy is upgraded, read back with the current redb
//! and compared with what redb 2 read before the upgrade, fsynced, and renamed over the
//! original; then the directory is fsynced. A crash at any point leaves either the untouched
//! v2 file (upgraded again at the next start; a leftover copy is overwritten) or the
//! complete v3 one. Any failure leaves the original untouched and is an error: this store
//! decides private-push, so it is never replaced by an empty one. The copy needs free space
//! for a second store while it lasts; a full store (10^6 digests, 540 MB in the v2 format)
//! took 5.8 s on this project's 2-core machines (release build).
//!
//! When it can be dropped: once every deployment has started at least once on a release with
//! this module (its store is then v3). Drop this file and `redb2` from Cargo.toml; a v2 file
//! left anywhere then fails to open with redb's "manual upgrade required" error.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::ReadableDatabase;
use sha2::{Digest, Sha256};

use super::{BY_SEQ, DIGESTS, NAMES};

/// The copy being upgraded, next to the store (a rename within one directory is atomic).
pub const TEMP_NAME: &str = "provenance.redb.upgrading";

const OLD_DIGESTS: redb2::TableDefinition<&str, (u8, u64)> = redb2::TableDefinition::new("digests");
const OLD_BY_SEQ: redb2::TableDefinition<u64, &str> = redb2::TableDefinition::new("by_seq");
const OLD_NAMES: redb2::TableDefinition<&str, &str> = redb2::TableDefinition::new("names");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the store is in use by another process (an older portcullis still running?)")]
    InUse,
    #[error("redb 2 cannot read or upgrade the copy {path}")]
    Old {
        path: PathBuf,
        source: Box<redb2::Error>,
    },
    #[error("redb panicked reading or upgrading the copy {path}: it is probably corrupt")]
    Panicked { path: PathBuf },
    #[error("the upgraded copy {path} cannot be read")]
    New {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("the upgraded copy holds {after}, the original {before}")]
    Changed {
        before: Box<Contents>,
        after: Box<Contents>,
    },
}

/// What the store holds: the size of each table and a hash over every entry in key order.
#[derive(Debug, PartialEq, Eq)]
pub struct Contents {
    digests: u64,
    by_seq: u64,
    names: u64,
    sha256: [u8; 32],
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} digests, {} sequence numbers, {} name lists (sha256 {})",
            self.digests,
            self.by_seq,
            self.names,
            hex::encode(self.sha256)
        )
    }
}

/// Upgrades the v2 store at `path` (inside `dir`) to v3, or fails leaving it untouched.
///
/// Another process holding the store, or having just replaced it with its own upgrade, is
/// [`MigrateError::InUse`].
pub fn upgrade(dir: &Path, path: &Path) -> Result<Contents, MigrateError> {
    let io_error = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Io { what, path, source }
    };
    let mut original = File::open(path).map_err(io_error("open", path))?;
    match original.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(MigrateError::InUse),
        Err(TryLockError::Error(source)) => return Err(io_error("lock", path)(source)),
    }
    let locked = original.metadata().map_err(io_error("stat", path))?;
    let now = fs::metadata(path).map_err(io_error("stat", path))?;
    if (locked.dev(), locked.ino()) != (now.dev(), now.ino()) {
        return Err(MigrateError::InUse);
    }

    let temp = dir.join(TEMP_NAME);
    let mut guard = RemoveOnDrop(Some(temp.clone()));
    {
        let mut copy = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_error("create", &temp))?;
        io::copy(&mut original, &mut copy).map_err(io_error("copy the store to", &temp))?;
    }

    // redb 2 asserts on some corrupt files (a truncated one, for one) instead of returning
    // an error; on the copy that is an error like any other. Nothing is shared with the
    // closure but the path, so unwinding out of it leaves no broken state behind.
    let after = panic::catch_unwind(AssertUnwindSafe(|| upgrade_copy(&temp)))
        .map_err(|_| MigrateError::Panicked { path: temp.clone() })??;

    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io_error("fsync", &temp))?;
    fs::rename(&temp, path).map_err(io_error("rename the upgraded copy over", path))?;
    guard.0 = None;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))?;
    Ok(after)
}

/// Upgrades the copy at `temp` and checks that it still holds what it held.
fn upgrade_copy(temp: &Path) -> Result<Contents, MigrateError> {
    let old_error = |source: Box<redb2::Error>| MigrateError::Old {
        path: temp.to_path_buf(),
        source,
    };
    let before = {
        let mut db = redb2::Database::open(temp).map_err(|e| old_error(Box::new(e.into())))?;
        let before = old_contents(&db).map_err(old_error)?;
        db.upgrade().map_err(|e| old_error(Box::new(e.into())))?;
        before
    };
    let after = {
        let new_error = |source: Box<redb::Error>| MigrateError::New {
            path: temp.to_path_buf(),
            source,
        };
        let db = redb::Database::open(temp).map_err(|e| new_error(Box::new(e.into())))?;
        new_contents(&db).map_err(new_error)?
    };
    if before != after {
        return Err(MigrateError::Changed {
            before: Box::new(before),
            after: Box::new(after),
        });
    }
    Ok(after)
}

/// Removes the half-made copy on every early return.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Feeds both crates' entries through one encoding, so equal stores hash equal.
#[derive(Default)]
struct Tally {
    counts: [u64; 3],
    hash: Sha256,
}

impl Tally {
    fn field(&mut self, bytes: &[u8]) {
        self.hash.update((bytes.len() as u64).to_be_bytes());
        self.hash.update(bytes);
    }

    fn digest(&mut self, digest: &str, (flags, seq): (u8, u64)) {
        self.counts[0] += 1;
        self.hash.update([0]);
        self.field(digest.as_bytes());
        self.hash.update([flags]);
        self.hash.update(seq.to_be_bytes());
    }

    fn seq(&mut self, seq: u64, digest: &str) {
        self.counts[1] += 1;
        self.hash.update([1]);
        self.hash.update(seq.to_be_bytes());
        self.field(digest.as_bytes());
    }

    fn names(&mut self, digest: &str, names: &str) {
        self.counts[2] += 1;
        self.hash.update([2]);
        self.field(digest.as_bytes());
        self.field(names.as_bytes());
    }

    fn finish(self) -> Contents {
        let [digests, by_seq, names] = self.counts;
        Contents {
            digests,
            by_seq,
            names,
            sha256: self.hash.finalize().into(),
        }
    }
}

/// Feeds every entry of `table` (in key order) to `tally.$add`; a missing table is empty
/// (a store that crashed before its first commit has none yet).
macro_rules! tally_table {
    ($redb:ident, $txn:expr, $table:expr, $tally:ident . $add:ident) => {
        let boxed = |e| Box::new($redb::Error::from(e));
        match $txn.open_table($table) {
            Ok(table) => {
                for entry in $redb::ReadableTable::iter(&table).map_err(boxed)? {
                    let (k, v) = entry.map_err(boxed)?;
                    $tally.$add(k.value(), v.value());
                }
            }
            Err($redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(Box::new(e.into())),
        }
    };
}

fn old_contents(db: &redb2::Database) -> Result<Contents, Box<redb2::Error>> {
    let txn = db.begin_read().map_err(|e| Box::new(e.into()))?;
    let mut tally = Tally::default();
    tally_table!(redb2, txn, OLD_DIGESTS, tally.digest);
    tally_table!(redb2, txn, OLD_BY_SEQ, tally.seq);
    tally_table!(redb2, txn, OLD_NAMES, tally.names);
    Ok(tally.finish())
}

fn new_contents(db: &redb::Database) -> Result<Contents, Box<redb::Error>> {
    let txn = db.begin_read().map_err(|e| Box::new(e.into()))?;
    let mut tally = Tally::default();
    tally_table!(redb, txn, DIGESTS, tally.digest);
    tally_table!(redb, txn, BY_SEQ, tally.seq);
    tally_table!(redb, txn, NAMES, tally.names);
    Ok(tally.finish())
}
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::provenance::{Provenance, ProvenanceError, Seen, FILE_NAME};

    fn digest(n: u64) -> String {
        format!("sha256:{n:064x}")
    }

    /// A store as portcullis wrote it with redb 2: digest -> (flags, seq), seq -> digest,
    /// digest -> newline-separated names, most recent first.
    struct OldStore {
        digests: BTreeMap<String, (u8, u64)>,
        names: BTreeMap<String, &'static str>,
    }

    const PRIVATE: u8 = 1;
    const PUBLIC: u8 = 2;

    /// Sequence numbers with gaps (re-recorded digests leave them), a digest seen in both
    /// kinds of registry, names, and enough entries for multi-page B-trees.
    fn old_store() -> OldStore {
        let mut digests = BTreeMap::new();
        digests.insert(digest(2), (PUBLIC, 1));
        digests.insert(digest(3), (PRIVATE | PUBLIC, 3));
        digests.insert(digest(4), (PRIVATE, 4));
        for n in 0..500 {
            digests.insert(digest(1000 + n), (PRIVATE, 10 + n));
        }
        digests.insert(digest(1), (PRIVATE, 600));
        let mut names = BTreeMap::new();
        names.insert(
            digest(1),
            "corp.example.com/team/app\ncorp.example.com/other/app",
        );
        names.insert(digest(3), "docker.io/library/alpine");
        OldStore { digests, names }
    }

    fn write_old(path: &Path, store: &OldStore) {
        let db = redb2::Database::create(path).expect("create v2");
        let txn = db.begin_write().expect("begin");
        {
            let mut digests = txn.open_table(OLD_DIGESTS).expect("digests");
            let mut by_seq = txn.open_table(OLD_BY_SEQ).expect("by_seq");
            let mut names = txn.open_table(OLD_NAMES).expect("names");
            for (d, &(flags, seq)) in &store.digests {
                digests.insert(d.as_str(), (flags, seq)).expect("insert");
                by_seq.insert(seq, d.as_str()).expect("insert");
            }
            for (d, &joined) in &store.names {
                names.insert(d.as_str(), joined).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    fn format_of(path: &Path) -> Result<(), redb::DatabaseError> {
        redb::Database::open(path).map(drop)
    }

    fn inode(path: &Path) -> u64 {
        fs::metadata(path).expect("stat").ino()
    }

    #[test]
    fn a_redb2_store_is_upgraded_on_open_with_every_record_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let old = old_store();
        write_old(&path, &old);
        assert!(
            matches!(
                format_of(&path),
                Err(redb::DatabaseError::UpgradeRequired(2))
            ),
            "the fixture is in redb 2's file format"
        );
        // What a crash in an earlier attempt leaves behind.
        fs::write(dir.path().join(TEMP_NAME), b"half a copy").expect("stale copy");
        let before = inode(&path);

        let store = Provenance::open(dir.path(), 10_000).expect("open upgrades");
        assert_ne!(inode(&path), before, "replaced by the upgraded copy");
        assert!(!dir.path().join(TEMP_NAME).exists(), "no copy left behind");
        assert_eq!(store.len().expect("len"), old.digests.len() as u64);
        for (d, &(flags, _)) in &old.digests {
            let expect = flags == PRIVATE;
            assert_eq!(store.private_only(d).expect("lookup"), expect, "{d}");
        }
        assert!(!store.private_only(&digest(9)).expect("unknown"));
        assert_eq!(
            store.names(&digest(1)).expect("names"),
            ["corp.example.com/team/app", "corp.example.com/other/app"]
        );
        assert_eq!(
            store.names(&digest(3)).expect("names"),
            ["docker.io/library/alpine"]
        );
        assert!(store.names(&digest(2)).expect("names").is_empty());

        // The server runs on it: new records are written and survive a restart.
        store
            .record_named(&digest(5), Seen::Private, "corp.example.com/new/app")
            .expect("record");
        drop(store);
        format_of(&path).expect("now in the current file format");
        let store = Provenance::open(dir.path(), 10_000).expect("reopen");
        assert!(store.private_only(&digest(5)).expect("new record kept"));
        assert_eq!(
            store.names(&digest(5)).expect("names"),
            ["corp.example.com/new/app"]
        );
        drop(store);

        // Sequence numbers survived: a lower bound evicts the oldest by the old order, not
        // the newest old record (digest 1, seq 600), and the new record comes after them all.
        let mut by_seq: Vec<(u64, &str)> = old
            .digests
            .iter()
            .map(|(d, &(_, seq))| (seq, d.as_str()))
            .collect();
        by_seq.sort_unstable();
        let new = digest(5);
        let order: Vec<&str> = by_seq
            .iter()
            .map(|&(_, d)| d)
            .chain([new.as_str()])
            .collect();
        let store = Provenance::open(dir.path(), order.len() as u64 - 2).expect("reopen smaller");
        let len = store.len().expect("len") as usize;
        assert!(len <= order.len() - 2, "{len}");
        for (i, d) in order.iter().enumerate() {
            let kept = i >= order.len() - len;
            let why = format!("{d} (place {i} of {}, {len} kept)", order.len());
            match old.digests.get(*d) {
                // Never private-only once seen in public; the names show whether it is kept.
                Some(&(flags, _)) if flags != PRIVATE => {
                    if old.names.contains_key(*d) {
                        let named = !store.names(d).expect("names").is_empty();
                        assert_eq!(named, kept, "{why}");
                    }
                }
                _ => assert_eq!(store.private_only(d).expect("lookup"), kept, "{why}"),
            }
        }
        assert!(store.private_only(&digest(1)).expect("newest old record"));
    }

    #[test]
    fn a_current_store_opens_without_migration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        {
            let store = Provenance::open(dir.path(), 10).expect("create");
            store
                .record_named(&digest(1), Seen::Private, "corp.example.com/app")
                .expect("record");
        }
        let before = inode(&path);
        let store = Provenance::open(dir.path(), 10).expect("reopen");
        assert_eq!(inode(&path), before, "the file was not replaced");
        assert!(!dir.path().join(TEMP_NAME).exists());
        assert!(store.private_only(&digest(1)).expect("kept"));
        assert_eq!(
            store.names(&digest(1)).expect("names"),
            ["corp.example.com/app"]
        );
    }

    #[test]
    fn a_redb2_store_that_cannot_be_upgraded_is_an_error_naming_it_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        write_old(&path, &old_store());
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(8 * 1024).expect("truncate");
        drop(file);
        let bytes = fs::read(&path).expect("read");

        let error = Provenance::open(dir.path(), 10).expect_err("cannot be upgraded");
        assert!(
            matches!(error, ProvenanceError::Migrate { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        assert_eq!(fs::read(&path).expect("read"), bytes, "original untouched");
        assert!(!dir.path().join(TEMP_NAME).exists(), "no copy left behind");
    }

    #[test]
    fn a_redb2_store_held_by_a_running_old_server_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        write_old(&path, &old_store());
        let old_server = redb2::Database::open(&path).expect("old server");
        let error = Provenance::open(dir.path(), 10).expect_err("in use");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        drop(old_server);
        assert!(matches!(
            format_of(&path),
            Err(redb::DatabaseError::UpgradeRequired(2))
        ));
    }
}

//! `portcullis cache status` and `portcullis cache purge`: what the cache directory holds,
//! and removing some of it, read straight from disk (a running server need not be asked).
//!
//! A running server's index still counts a purged blob until it next reads it: the open
//! fails, the entry goes, and the blob is fetched again. Nothing half-purged can be served:
//! a file is either whole in `sha256/` or gone.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// One cached blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: String,
    pub size: u64,
    /// Last read or written.
    pub used: SystemTime,
}

/// What to purge.
#[derive(Debug, Clone)]
pub enum Purge {
    All,
    Digest(String),
    /// Not used for this long.
    OlderThan(Duration),
}

/// The blobs in the cache at `dir`, least recently used first.
pub fn entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let blobs = dir.join("sha256");
    let mut out = Vec::new();
    let listing = match std::fs::read_dir(&blobs) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if super::is_hex_digest(&name) && meta.is_file() {
            out.push(Entry {
                digest: format!("sha256:{name}"),
                size: meta.len(),
                used: meta.modified()?,
            });
        }
    }
    out.sort_by_key(|e| e.used);
    Ok(out)
}

/// Removes what `what` names; the blobs removed.
pub fn purge(dir: &Path, what: &Purge, now: SystemTime) -> io::Result<Vec<Entry>> {
    let chosen: Vec<Entry> = entries(dir)?
        .into_iter()
        .filter(|e| match what {
            Purge::All => true,
            Purge::Digest(d) => &e.digest == d,
            Purge::OlderThan(age) => now.duration_since(e.used).is_ok_and(|d| d >= *age),
        })
        .collect();
    for e in &chosen {
        let hex = e.digest.trim_start_matches("sha256:");
        match std::fs::remove_file(dir.join("sha256").join(hex)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, hex_char: char, age: Duration) -> String {
        let hex: String = std::iter::repeat_n(hex_char, 64).collect();
        let path = dir.join("sha256").join(&hex);
        std::fs::write(&path, b"bytes").expect("write");
        let f = std::fs::File::options()
            .append(true)
            .open(&path)
            .expect("open");
        f.set_modified(SystemTime::now() - age).expect("mtime");
        format!("sha256:{hex}")
    }

    #[test]
    fn purge_by_digest_and_by_age_removes_just_those() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sha256")).expect("mkdir");
        let old = put(dir.path(), 'a', Duration::from_secs(7200));
        let new = put(dir.path(), 'b', Duration::from_secs(10));
        let other = put(dir.path(), 'c', Duration::from_secs(20));
        let listed: Vec<String> = entries(dir.path())
            .expect("entries")
            .into_iter()
            .map(|e| e.digest)
            .collect();
        assert_eq!(listed, vec![old.clone(), other.clone(), new.clone()]);

        let gone = purge(
            dir.path(),
            &Purge::OlderThan(Duration::from_secs(3600)),
            SystemTime::now(),
        )
        .expect("purge");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].digest, old);
        let gone =
            purge(dir.path(), &Purge::Digest(new.clone()), SystemTime::now()).expect("purge");
        assert_eq!(gone[0].digest, new);
        let left = entries(dir.path()).expect("entries");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].digest, other);
    }
}

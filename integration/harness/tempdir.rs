//! Temporary directories that disappear with the test, unless asked to stay.

use std::path::{Path, PathBuf};

/// A temporary directory removed on drop (kept when `PORTCULLIS_KEEP_TEST_DIRS` is set).
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A fresh directory whose name starts with `portcullis-<what>-`.
    pub fn new(what: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("portcullis-{what}-"))
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self/<name>`, created if missing.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create a test subdirectory");
        p
    }

    /// Writes `contents` to `self/<name>` and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent directory");
        }
        std::fs::write(&p, contents).expect("write a test file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("PORTCULLIS_KEEP_TEST_DIRS").is_some() {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}

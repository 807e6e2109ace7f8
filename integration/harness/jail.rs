//! A private mount namespace for real clients and daemons.
//!
//! `dockerd`, containerd, skopeo and podman write to fixed places (`/run/docker`,
//! `/run/containerd`, `/etc/docker/key.json`, `/var/lib/containers/cache`,
//! `/run/containers`). A jailed command runs under `unshare --mount` (propagation
//! private) with those places bind-mounted from the test's own directory, so parallel
//! tests never share them and nothing is left on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Jail {
    root: PathBuf,
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl Jail {
    /// A jail whose private directories live under `root`; `/run` is always private.
    pub fn new(root: &Path) -> Jail {
        let jail = Jail {
            root: root.to_path_buf(),
            mounts: Vec::new(),
        };
        jail.private("/run")
    }

    /// Hides `target` behind the empty directory `<root>/<target>`.
    pub fn private(mut self, target: &str) -> Jail {
        let source = self.root.join(target.trim_start_matches('/'));
        std::fs::create_dir_all(&source).expect("create a jail directory");
        self.mounts.push((source, PathBuf::from(target)));
        self
    }

    /// Shows `source` (a file or directory) at `target`.
    pub fn bind(mut self, source: &Path, target: &str) -> Jail {
        self.mounts
            .push((source.to_path_buf(), PathBuf::from(target)));
        self
    }

    /// The private directory standing in for `target`.
    pub fn dir(&self, target: &str) -> PathBuf {
        self.root.join(target.trim_start_matches('/'))
    }

    /// `program args...` inside the jail. The process keeps the PID `unshare` got,
    /// because both `unshare` and the shell `exec` the next program.
    pub fn command(&self, program: &str) -> Command {
        let mut script = String::from("set -e\n");
        for (source, target) in &self.mounts {
            let (s, t) = (quote(source), quote(target));
            // A target missing on the host (e.g. /var/lib/containers before podman ever
            // ran) is made in a private overlay of its parent, never on the host.
            script.push_str(&format!(
                "if [ ! -e {t} ]; then p=$(dirname {t}); mkdir -p {s}.upper {s}.work; \
                 mount -t overlay overlay -o lowerdir=\"$p\",upperdir={s}.upper,workdir={s}.work \"$p\"; \
                 if [ -d {s} ]; then mkdir -p {t}; else touch {t}; fi; fi\n\
                 mount --bind {s} {t}\n"
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "jail",
            ])
            .arg(program);
        command
    }
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

//! The portcullis container image (`helm/image`), built and run by a test's own dockerd.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::dockerd::Dockerd;
use super::process::{describe, run};
use super::tempdir::TestDir;

/// The release build may have to catch up with the sources: allow for a full build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Builds the image as `tag` on `dockerd`: `helm/image/build.sh --context` (the static release
/// binary, offline, a no-op when `integration/run.sh` already built it), then `docker build`.
pub fn build_image(dockerd: &Dockerd, tag: &str) {
    let context = TestDir::new("image-context");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("bash");
    command
        .arg(repo.join("helm/image/build.sh"))
        .arg("--context")
        .arg(context.path())
        .current_dir(repo)
        .env("CARGO_NET_OFFLINE", "true");
    // What `cargo test` adds for the test would make the nested build differ from the one
    // run.sh made (ring's build script reruns when CARGO_MANIFEST_DIR changes).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let injected = ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "CARGO",
                "CARGO_CRATE_NAME",
                "CARGO_TARGET_TMPDIR",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref());
        if injected {
            command.env_remove(name.as_ref());
        }
    }
    let out = run(command, None, BUILD_TIMEOUT);
    assert!(
        out.status.success(),
        "helm/image/build.sh failed:\n{}",
        describe(&out)
    );
    let build = dockerd.docker(&["build", "-t", tag, &context.path().display().to_string()]);
    assert!(
        build.status.success(),
        "docker build of helm/image failed:\n{}",
        describe(&build)
    );
}

/// A detached container, removed (`docker rm -f`) on drop.
pub struct Container<'a> {
    dockerd: &'a Dockerd,
    pub id: String,
}

impl<'a> Container<'a> {
    /// `docker run -d <args>`.
    pub fn run(dockerd: &'a Dockerd, args: &[&str]) -> Container<'a> {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let out = dockerd.docker_ok(&all);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Container { dockerd, id }
    }

    /// `docker inspect -f <format>` of this container.
    pub fn inspect(&self, format: &str) -> String {
        let out = self.dockerd.docker_ok(&["inspect", "-f", format, &self.id]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What the container wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        describe(&self.dockerd.docker(&["logs", &self.id]))
    }

    /// `docker stop -t <grace>`; returns the exit code.
    pub fn stop(&self, grace_secs: u32) -> i64 {
        self.dockerd
            .docker_ok(&["stop", "-t", &grace_secs.to_string(), &self.id]);
        self.inspect("{{.State.ExitCode}}")
            .parse()
            .unwrap_or(i64::MIN)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- container {} -----\n{}", self.id, self.logs());
        }
        let _ = self.dockerd.docker(&["rm", "-f", &self.id]);
    }
}

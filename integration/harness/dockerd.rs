//! A real dockerd (20.10) of the test's own.
//!
//! It runs jailed (private `/run`, `/etc/docker`), with its own data root, exec root,
//! pidfile, socket and daemon.json, no iptables, no bridge and the vfs storage driver.
//! Its containerd is the one dockerd supervises itself, with its socket under the
//! exec root (the private `/run` hides any system containerd), so several dockerds
//! run side by side without sharing anything.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use super::image::tar_of;
use super::jail::Jail;
use super::net::wait_for;
use super::process::{describe, run, ProcessId, Supervised};
use super::tempdir::TestDir;

const CLI_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Dockerd {
    process: Supervised,
    dir: TestDir,
}

impl Dockerd {
    /// Starts dockerd and waits until `docker version` answers.
    pub fn start() -> Dockerd {
        Dockerd::start_with(serde_json::json!({}))
    }

    /// Starts dockerd with extra daemon.json settings (e.g. `registry-mirrors`).
    pub fn start_with(extra: serde_json::Value) -> Dockerd {
        Dockerd::start_with_env(extra, &[])
    }

    /// Starts dockerd with `HTTPS_PROXY` pointing at `proxy` and `SSL_CERT_FILE` at a bundle
    /// holding `ca_file` only: dockerd trusts the system pool for docker.io, and this replaces
    /// that pool for this process without touching the machine's trust store.
    pub fn start_behind_proxy(proxy: std::net::SocketAddr, ca_file: &std::path::Path) -> Dockerd {
        let proxy_url = format!("http://{proxy}");
        let ca = ca_file.display().to_string();
        Dockerd::start_with_env(
            serde_json::json!({}),
            &[
                ("HTTPS_PROXY", proxy_url.as_str()),
                ("SSL_CERT_FILE", ca.as_str()),
            ],
        )
    }

    /// Starts dockerd with extra daemon.json settings and environment variables.
    pub fn start_with_env(extra: serde_json::Value, env: &[(&str, &str)]) -> Dockerd {
        let dir = TestDir::new("dockerd");
        let jail = Jail::new(dir.path()).private("/etc/docker");
        let mut config = serde_json::json!({
            "deprecated-key-path": dir.path().join("key.json"),
            "log-level": "info",
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        let config_file = dir.write("daemon.json", config.to_string());
        let mut command = jail.command("dockerd");
        command
            .arg("--config-file")
            .arg(&config_file)
            .arg("--data-root")
            .arg(dir.subdir("data"))
            .arg("--exec-root")
            .arg(dir.subdir("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--userland-proxy=false",
            ])
            .env_remove("DOCKER_HOST")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("http_proxy")
            .envs(env.iter().copied());
        let log = dir.path().join("dockerd.log");
        let mut process = Supervised::spawn("dockerd", command, &log);
        let answered = wait_for(Duration::from_secs(60), || {
            if process.exit_status().is_some() {
                return Some(false);
            }
            let probe = Dockerd::cli(&dir, &["version", "--format", "{{.Server.Version}}"]);
            probe.status.success().then_some(true)
        });
        if answered != Some(true) {
            panic!(
                "dockerd did not answer `docker version`:\n{}",
                process.log()
            );
        }
        Dockerd { process, dir }
    }

    fn cli(dir: &TestDir, args: &[&str]) -> Output {
        let mut command = Command::new("docker");
        command
            .env(
                "DOCKER_HOST",
                format!("unix://{}", dir.path().join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", dir.subdir("cli-config"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env("DOCKER_BUILDKIT", "0")
            .args(args);
        run(command, None, CLI_TIMEOUT)
    }

    /// Runs the docker CLI against this daemon, with a private `DOCKER_CONFIG`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Dockerd::cli(&self.dir, args)
    }

    /// Runs the docker CLI and panics with its output if it fails.
    pub fn docker_ok(&self, args: &[&str]) -> Output {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed:\n{}",
            describe(&out)
        );
        out
    }

    /// Makes image `reference` from `(path, contents)` files without running a
    /// container: `tar -c . | docker import - reference`.
    pub fn import_image(&self, reference: &str, files: &[(&str, &[u8])]) {
        let mut command = Command::new("docker");
        command
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.path().join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.subdir("cli-config"))
            .args(["import", "-", reference]);
        let out = run(command, Some(&tar_of(files)), CLI_TIMEOUT);
        assert!(
            out.status.success(),
            "docker import {reference} failed:\n{}",
            describe(&out)
        );
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// dockerd and everything it started (containerd).
    pub fn process_tree(&self) -> Vec<ProcessId> {
        self.process.process_tree()
    }

    /// What dockerd and containerd wrote to `/run`, kept in the test's directory.
    pub fn private_run(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The private `/etc/docker` (put `certs.d/<host>/ca.crt` here).
    pub fn etc_docker(&self) -> PathBuf {
        self.dir.path().join("etc/docker")
    }
}

//! portcullis itself, as a process: `portcullis serve --config <file>`.
//!
//! Tests describe the upstream world with [`ProxyConfig`]; the harness fills in what
//! belongs to the test run (`state_dir`, `[listen] registry`, `[tls] names`) unless
//! the TOML already says it, and waits until the registry port completes a TLS
//! handshake with the CA portcullis wrote to `<state_dir>/ca.crt`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::http::raw_tls;
use super::net::{free_port, port_was_taken, wait_for, PORT_ATTEMPTS};
use super::process::{ProcessId, Supervised};
use super::rss::{rss_kib, RssSampler};
use super::tempdir::TestDir;

pub struct Portcullis {
    process: Supervised,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    proxy: Option<SocketAddr>,
    mirror: Option<SocketAddr>,
    dir: TestDir,
}

impl Portcullis {
    /// Starts portcullis with `config_toml` (see [`ProxyConfig`]).
    pub fn start(config_toml: &str) -> Portcullis {
        Portcullis::start_with_env(config_toml, &[])
    }

    /// Starts portcullis with extra environment variables (e.g. `password_env` targets).
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Portcullis {
        let dir = TestDir::new("portcullis");
        let state_dir = dir.subdir("state");
        let mut last_log = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let config = complete(config_toml, &state_dir, addr, admin, proxy);
            let admin = listen_addr(&config, "admin");
            let proxy = listen_addr(&config, "proxy");
            let mirror = listen_addr(&config, "mirror");
            let config_file = dir.write("portcullis.toml", config);
            let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
            command
                .arg("serve")
                .arg("--config")
                .arg(&config_file)
                .env("RUST_LOG", "info")
                .env_remove("HTTPS_PROXY")
                .env_remove("HTTP_PROXY")
                .envs(env.iter().copied());
            let log = dir.path().join(format!("portcullis-{attempt}.log"));
            let mut process = Supervised::spawn("portcullis", command, &log);
            let ca_file = state_dir.join("ca.crt");
            let ready = wait_for(Duration::from_secs(30), || {
                if process.exit_status().is_some() {
                    return Some(false);
                }
                if !ca_file.is_file() {
                    return None;
                }
                // Any HTTP answer over a verified TLS session means it is serving.
                raw_tls(
                    addr,
                    &ca_file,
                    b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )
                .ok()
                .map(|_| true)
            });
            match ready {
                Some(true) => {
                    return Portcullis {
                        process,
                        addr,
                        admin,
                        proxy,
                        mirror,
                        dir,
                    }
                }
                Some(false) if port_was_taken(&process.log()) => last_log = process.log(),
                _ => panic!(
                    "portcullis did not serve TLS on {addr} (exit status {:?}):\n{}",
                    process.exit_status(),
                    process.log()
                ),
            }
        }
        panic!("portcullis found no free port in {PORT_ATTEMPTS} attempts:\n{last_log}");
    }

    /// `127.0.0.1:<port>`, the registry endpoint clients talk to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain-HTTP admin listener (`/metrics`, `/healthz`), unless configured off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The forward proxy (`HTTPS_PROXY=http://<this>`), unless configured off.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy
    }

    /// The docker.io mirror endpoint, when configured.
    pub fn mirror_addr(&self) -> Option<SocketAddr> {
        self.mirror
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA portcullis generated (`<state_dir>/ca.crt`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("state/ca.crt")
    }

    /// The configuration it was started with, for its other commands (`cache status`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    /// Where staged pushes are written (under the default `state_dir`).
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.path().join("state/staging")
    }

    /// A directory holding only portcullis's `ca.crt`, for skopeo's `--*-cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.dir.subdir("cert-dir");
        std::fs::copy(self.ca_file(), dir.join("ca.crt")).expect("copy portcullis ca.crt");
        dir
    }

    /// Everything portcullis logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn process_tree(&self) -> Vec<ProcessId> {
        self.process.process_tree()
    }

    /// Resident set size now, in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).unwrap_or(0)
    }

    /// Samples the resident set size every `every` until [`RssSampler::peak_kib`].
    pub fn sample_rss(&self, every: Duration) -> RssSampler {
        RssSampler::start(self.pid(), every)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.exit_status().is_none()
    }
}

/// Adds `state_dir`, `[listen] registry`, `[listen] admin` and `[listen] proxy` (free
/// ports, never the fixed defaults, so parallel instances do not collide) and `[tls] names`
/// unless present.
pub fn complete(
    config_toml: &str,
    state_dir: &std::path::Path,
    addr: SocketAddr,
    admin: SocketAddr,
    proxy: SocketAddr,
) -> String {
    let mut table: toml::Table = config_toml
        .parse()
        .unwrap_or_else(|e| panic!("test config is not TOML: {e}\n{config_toml}"));
    table
        .entry("state_dir")
        .or_insert_with(|| state_dir.display().to_string().into());
    let listen = table
        .entry("listen")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .expect("[listen] is a table");
    listen
        .entry("admin")
        .or_insert_with(|| admin.to_string().into());
    listen
        .entry("proxy")
        .or_insert_with(|| proxy.to_string().into());
    listen
        .entry("registry")
        .or_insert_with(|| addr.to_string().into());
    let tls = table
        .entry("tls")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .expect("[tls] is a table");
    tls.entry("names")
        .or_insert_with(|| toml::Value::Array(vec!["127.0.0.1".into(), "localhost".into()]));
    table.to_string()
}

/// A `[listen]` address a completed configuration names (`None` when "off" or absent).
fn listen_addr(config: &str, key: &str) -> Option<SocketAddr> {
    let table: toml::Table = config.parse().ok()?;
    table.get("listen")?.get(key)?.as_str()?.parse().ok()
}

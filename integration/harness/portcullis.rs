//! portcullis itself, as a process: `portcullis serve --config <file>`.
//!
//! Tests describe the upstream world with [`ProxyConfig`]; the harness fills in what
//! belongs to the test run (`state_dir`, `[listen] registry`, `[tls] names`) unless
//! the TOML already says it, and waits until the registry port completes a TLS
//! handshake with the CA portcullis wrote to `<state_dir>/ca.crt`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::http::raw_tls;
use super::net::{free_port, port_was_taken, wait_for, PORT_ATTEMPTS};
use super::process::{ProcessId, Supervised};
use super::registry::Registry;
use super::tempdir::TestDir;

pub struct Portcullis {
    process: Supervised,
    addr: SocketAddr,
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
            let config = complete(config_toml, &state_dir, addr);
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
                Some(true) => return Portcullis { process, addr, dir },
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

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA portcullis generated (`<state_dir>/ca.crt`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("state/ca.crt")
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

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A background thread recording the peak RSS of a process.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the highest RSS seen, in KiB.
    pub fn peak_kib(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Adds `state_dir`, `[listen] registry` and `[tls] names` unless present.
pub fn complete(config_toml: &str, state_dir: &std::path::Path, addr: SocketAddr) -> String {
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

/// One `[[registry]]` entry: the name clients use and the real registry behind it.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub host: String,
    pub endpoint: String,
    pub ca_file: PathBuf,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub pass_client_credentials: bool,
    pub token_hosts: Vec<String>,
    pub response_timeout_secs: u64,
}

impl Upstream {
    /// Clients say `host`; portcullis connects to `registry`.
    pub fn new(host: &str, registry: &Registry) -> Upstream {
        Upstream::at(host, &registry.url(), registry.ca_file())
    }

    pub fn at(host: &str, endpoint: &str, ca_file: PathBuf) -> Upstream {
        Upstream {
            host: host.to_string(),
            endpoint: endpoint.to_string(),
            ca_file,
            username: None,
            password_env: None,
            password_file: None,
            pass_client_credentials: false,
            token_hosts: Vec::new(),
            response_timeout_secs: 30,
        }
    }

    /// Logs in as `user` with the password found in environment variable `var`.
    pub fn credentials_from_env(mut self, user: &str, var: &str) -> Upstream {
        self.username = Some(user.to_string());
        self.password_env = Some(var.to_string());
        self
    }

    /// May call the token realm on `host` (`127.0.0.1:<port>`).
    pub fn token_host(mut self, host: &str) -> Upstream {
        self.token_hosts.push(host.to_string());
        self
    }

    pub fn pass_client_credentials(mut self) -> Upstream {
        self.pass_client_credentials = true;
        self
    }

    pub fn response_timeout_secs(mut self, secs: u64) -> Upstream {
        self.response_timeout_secs = secs;
        self
    }
}

/// Builds portcullis's TOML: `ProxyConfig::new().search(&[..]).push("..").registry(..)`.
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    search: Vec<String>,
    push: Option<String>,
    aliases: Vec<(String, String)>,
    registries: Vec<Upstream>,
}

impl ProxyConfig {
    pub fn new() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// Registries searched, in order, for short names.
    pub fn search(mut self, registries: &[&str]) -> ProxyConfig {
        self.search = registries.iter().map(|r| r.to_string()).collect();
        self
    }

    /// Where short names are pushed.
    pub fn push(mut self, registry: &str) -> ProxyConfig {
        self.push = Some(registry.to_string());
        self
    }

    pub fn alias(mut self, short: &str, full: &str) -> ProxyConfig {
        self.aliases.push((short.to_string(), full.to_string()));
        self
    }

    pub fn registry(mut self, upstream: Upstream) -> ProxyConfig {
        self.registries.push(upstream);
        self
    }

    /// The TOML text (without `state_dir`/`[listen]`, which the harness adds).
    pub fn toml(&self) -> String {
        use toml::Value;
        let strings =
            |v: &[String]| Value::Array(v.iter().map(|s| Value::from(s.as_str())).collect());
        let mut root = toml::Table::new();
        let mut resolve = toml::Table::new();
        resolve.insert("search".into(), strings(&self.search));
        if let Some(push) = &self.push {
            resolve.insert("push".into(), push.as_str().into());
        }
        root.insert("resolve".into(), resolve.into());
        if !self.aliases.is_empty() {
            let aliases: toml::Table = self
                .aliases
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            root.insert("aliases".into(), aliases.into());
        }
        let registries = self.registries.iter().map(|u| {
            let mut t = toml::Table::new();
            t.insert("host".into(), u.host.as_str().into());
            t.insert("endpoint".into(), u.endpoint.as_str().into());
            t.insert("ca_file".into(), u.ca_file.display().to_string().into());
            if let Some(user) = &u.username {
                let mut c = toml::Table::new();
                c.insert("username".into(), user.as_str().into());
                if let Some(var) = &u.password_env {
                    c.insert("password_env".into(), var.as_str().into());
                }
                if let Some(file) = &u.password_file {
                    c.insert("password_file".into(), file.display().to_string().into());
                }
                t.insert("credentials".into(), c.into());
            }
            if u.pass_client_credentials {
                t.insert("pass_client_credentials".into(), true.into());
            }
            if !u.token_hosts.is_empty() {
                t.insert("token_hosts".into(), strings(&u.token_hosts));
            }
            t.insert(
                "response_timeout_secs".into(),
                (u.response_timeout_secs as i64).into(),
            );
            Value::Table(t)
        });
        root.insert("registry".into(), Value::Array(registries.collect()));
        root.to_string()
    }
}

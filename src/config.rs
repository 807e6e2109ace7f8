//! Server configuration: raw TOML structs checked into a [`Config`].
//!
//! Parsing is two-staged so that an operator sees every problem at once: syntax errors and
//! every unknown key (walked against [`SCHEMA`], with line and key path), then the checker
//! meaning (unknown registries, bad URLs, missing credential sources) and reports each
//! problem with its key and line before giving up.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use toml::de::{DeTable, DeValue};

use crate::toml_check::{line_of, strip_unknown_keys, Schema};

use crate::reference::{normalize_registry, Name, DOCKER_HUB};

/// Where docker.io really lives, and the hosts it sends clients to for tokens and blobs.
const DOCKER_HUB_ENDPOINT: &str = "https://registry-1.docker.io";
const DOCKER_HUB_INDEX: &str = "https://index.docker.io";
const DOCKER_HUB_TOKEN_HOSTS: &[&str] = &["auth.docker.io"];
const DOCKER_HUB_REDIRECT_HOSTS: &[&str] = &[
    "production.cloudflare.docker.com",
    "*.r2.cloudflarestorage.com",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One configuration problem, located by file, line and key; the type policies share.
pub use crate::toml_check::Problem;

/// The keys each table may hold, for [`unknown_keys`]: every unknown key is reported at once,
/// where serde's `deny_unknown_fields` (kept on the raw structs as a backstop) stops at the
/// first. `[aliases]` is free-form. A key
/// missing here but kept by a struct is reported unknown, so the two cannot drift open.
const SCHEMA: Schema = &[
    (
        "",
        &[
            "state_dir",
            "listen",
            "tls",
            "resolve",
            "aliases",
            "cache",
            "limits",
            "forward",
            "policy",
            "registry",
        ],
    ),
    (
        "listen",
        &["registry", "admin", "admin_token_file", "proxy", "mirror"],
    ),
    (
        "forward",
        &[
            "docker_hub_search",
            "tunnel_hosts",
            "proxy_auth",
            "leaf_validity_hours",
        ],
    ),
    ("forward.proxy_auth", CREDENTIAL_KEYS),
    ("tls", &["cert_file", "key_file", "names"]),
    (
        "resolve",
        &[
            "search",
            "push",
            "cache_ttl_secs",
            "search_timeout_secs",
            "catalog_ttl_secs",
        ],
    ),
    (
        "policy",
        &[
            "paths",
            "audit_log",
            "confirm_window_secs",
            "reload_interval_ms",
            "staging_max_bytes",
            "staging_max_sessions",
            "staging_max_sessions_per_client",
            "staging_idle_session_secs",
            "provenance_max_entries",
        ],
    ),
    ("cache", &["manifest_bytes", "blobs_dir", "blobs_max_bytes"]),
    (
        "limits",
        &[
            "max_connections",
            "max_header_bytes",
            "tls_handshake_timeout_secs",
            "header_read_timeout_secs",
            "idle_timeout_secs",
            "drain_timeout_secs",
        ],
    ),
    (
        "registry",
        &[
            "host",
            "endpoint",
            "ca_file",
            "insecure_skip_verify",
            "credentials",
            "pass_client_credentials",
            "token_hosts",
            "redirect_hosts",
            "search",
            "search_endpoint",
            "connect_timeout_secs",
            "response_timeout_secs",
            "idle_timeout_secs",
            "body_timeout_secs",
            "max_idle_connections",
        ],
    ),
    ("registry.credentials", CREDENTIAL_KEYS),
];
const CREDENTIAL_KEYS: &[&str] = &["username", "password_file", "password_env"];

/// A `[[registry]]` in key paths: by its host, as the semantic checks name it, else by place.
fn registry_label(_path: &str, index: usize, item: &DeTable<'_>) -> String {
    match item.get("host").map(|h| h.get_ref()) {
        Some(DeValue::String(host)) => host.to_string(),
        _ => format!("#{}", index + 1),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    resolve: RawResolve,
    #[serde(default)]
    aliases: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forward: RawForward,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    registry: Vec<RawRegistry>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    registry: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<PathBuf>,
    proxy: Option<Spanned<String>>,
    mirror: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default)]
    docker_hub_search: bool,
    #[serde(default)]
    tunnel_hosts: Vec<String>,
    proxy_auth: Option<Spanned<RawCredentials>>,
    leaf_validity_hours: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResolve {
    search: Option<Spanned<Vec<Spanned<String>>>>,
    push: Option<Spanned<String>>,
    cache_ttl_secs: Option<Spanned<u64>>,
    search_timeout_secs: Option<Spanned<u64>>,
    catalog_ttl_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    paths: Option<Vec<PathBuf>>,
    audit_log: Option<PathBuf>,
    confirm_window_secs: Option<Spanned<u64>>,
    reload_interval_ms: Option<Spanned<u64>>,
    staging_max_bytes: Option<Spanned<u64>>,
    staging_max_sessions: Option<Spanned<u64>>,
    staging_max_sessions_per_client: Option<Spanned<u64>>,
    staging_idle_session_secs: Option<Spanned<u64>>,
    provenance_max_entries: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    manifest_bytes: Option<Spanned<u64>>,
    blobs_dir: Option<Spanned<PathBuf>>,
    blobs_max_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
    tls_handshake_timeout_secs: Option<Spanned<u64>>,
    header_read_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    drain_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    credentials: Option<Spanned<RawCredentials>>,
    #[serde(default)]
    pass_client_credentials: bool,
    token_hosts: Option<Vec<String>>,
    redirect_hosts: Option<Vec<String>>,
    search: Option<Spanned<String>>,
    search_endpoint: Option<Spanned<String>>,
    connect_timeout_secs: Option<Spanned<u64>>,
    response_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    body_timeout_secs: Option<Spanned<u64>>,
    max_idle_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub listen_registry: SocketAddr,
    /// Metrics and health; `None` when set to "off".
    pub listen_admin: Option<SocketAddr>,
    /// Bearer token protecting `/metrics` on the admin listener.
    pub admin_token: Option<String>,
    /// The forward (CONNECT) proxy listener; `None` when "off".
    pub listen_proxy: Option<SocketAddr>,
    /// A registry endpoint whose names are docker.io's, for `registry-mirrors`; off by default.
    pub listen_mirror: Option<SocketAddr>,
    pub forward: ForwardConfig,
    pub policy: PolicyConfig,
    pub tls: TlsConfig,
    pub resolve: ResolveConfig,
    pub cache: CacheConfig,
    /// What clients may hold: connections, header bytes, time.
    pub limits: Limits,
    /// Keyed by the normalised registry host clients use (e.g. `docker.io`).
    pub registries: HashMap<String, RegistryConfig>,
}

/// Limits that keep clients from holding unbounded memory or time (`[limits]`), applied to
/// each listener (registry, mirror, proxy with its CONNECT sessions and tunnels, admin).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head (request line + headers); beyond it hyper answers 431.
    pub max_header_bytes: usize,
    /// Connections one listener serves at once. At the limit the connection idle longest is
    /// closed; when all have a request in flight, more wait in the kernel's listen backlog.
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    /// A connection (and, after an idle period, a request that has begun to arrive) must
    /// deliver a complete request head within this.
    pub header_read_timeout: Duration,
    /// A keep-alive connection (or tunnel) with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// On shutdown, how long in-flight requests (a push, a pull) may take to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Policy files and directories (`*.toml`, registries.conf `*.conf`); empty: the
    /// embedded `policies/default.toml`.
    pub paths: Vec<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub confirm_window: Duration,
    pub reload_interval: Duration,
    /// Disk for pushes staged until their manifest is checked.
    pub staging_max_bytes: u64,
    /// Upload sessions of staged pushes open at once, in all and per client IP.
    pub staging_max_sessions: usize,
    pub staging_max_sessions_per_client: usize,
    /// An upload session that received no byte for this long is dropped.
    pub staging_idle_session: Duration,
    /// Bound of the blob provenance store (entries).
    pub provenance_max_entries: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ForwardConfig {
    /// docker.io `library/<x>` names resolve across the search registries.
    pub docker_hub_search: bool,
    /// `host:port` tunnelled untouched through CONNECT (never intercepted); an entry given
    /// without a port is stored with `:443`.
    pub tunnel_hosts: Vec<String>,
    /// Basic credentials clients must present to the forward proxy.
    pub proxy_auth: Option<Credentials>,
    /// Lifetime of interception certificates.
    pub leaf_validity: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Memory for digest-addressed manifests; 0 disables the cache.
    pub manifest_bytes: u64,
    /// The blob cache's directory (default `<state_dir>/blobs`).
    pub blobs_dir: PathBuf,
    /// Disk for verified blobs, shared by every registry; 0 (the default) disables it.
    pub blobs_max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ResolveConfig {
    pub search: Vec<String>,
    pub push: Option<String>,
    pub aliases: HashMap<String, (String, crate::reference::Repository)>,
    pub cache_ttl: Duration,
    /// Each registry's share of a `docker search`.
    pub search_timeout: Duration,
    /// How long a registry's catalog is reused for searches.
    pub catalog_ttl: Duration,
}

#[derive(Clone)]
pub struct RegistryConfig {
    pub host: String,
    pub endpoint: url::Url,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub credentials: Option<Credentials>,
    pub pass_client_credentials: bool,
    pub token_hosts: Vec<String>,
    pub redirect_hosts: Vec<String>,
    pub search: SearchMode,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Idle keep-alive connections kept to this registry; fewer than the requests in flight
    /// means reopening TLS connections under load.
    pub max_idle_connections: usize,
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("host", &self.host)
            .field("endpoint", &self.endpoint.as_str())
            .field("credentials", &self.credentials)
            .field("pass_client_credentials", &self.pass_client_credentials)
            .finish_non_exhaustive()
    }
}

/// How `docker search` asks a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchMode {
    /// A v1 search API (docker.io's index) at this base URL.
    V1(url::Url),
    /// Match names from the registry's `/v2/_catalog`.
    Catalog,
    Off,
}

/// Upstream credentials; `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:<redacted>)", self.username)
    }
}

impl Config {
    /// The embedded defaults: a registry endpoint on 127.0.0.1:5443 in front of docker.io.
    pub fn embedded_defaults() -> Config {
        // The embedded defaults are a literal configuration, so they go through the same checks.
        Config::parse("", "<embedded defaults>", |_| None)
            .unwrap_or_else(|e| unreachable!("embedded defaults are valid: {e:?}"))
    }

    /// Parse configuration text that is not in a file (tests, embedded examples).
    pub fn parse_str(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "<string>", |_| None).map_err(ConfigError::Invalid)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), |p| Some(base.join(p)))
            .map_err(ConfigError::Invalid)
    }

    /// Parse configuration text. `resolve_path` makes relative paths relative to the file.
    fn parse(
        text: &str,
        file: &str,
        resolve_path: impl Fn(&Path) -> Option<PathBuf>,
    ) -> Result<Config, Vec<Problem>> {
        let syntax = |span: Option<std::ops::Range<usize>>, message: String| {
            vec![Problem {
                file: file.to_owned(),
                line: span.map(|s| line_of(text, s.start)),
                key: "syntax".to_owned(),
                message,
            }]
        };
        let mut root =
            DeTable::parse(text).map_err(|e| syntax(e.span(), e.message().to_owned()))?;
        let unknown = strip_unknown_keys(file, text, root.get_mut(), SCHEMA, &registry_label);
        // Without its unknown keys the document still yields every other problem.
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(root))
            .map_err(|e| syntax(e.span(), e.message().to_owned()));
        let raw = match raw {
            Ok(raw) => raw,
            Err(mut problems) => {
                problems.splice(0..0, unknown);
                return Err(problems);
            }
        };
        let mut check = Checker {
            file,
            text,
            problems: unknown,
        };
        let config = check.config(raw, &resolve_path);
        if check.problems.is_empty() {
            Ok(config)
        } else {
            // Top to bottom, as an operator fixes a file.
            check.problems.sort_by_key(|p| p.line);
            Err(check.problems)
        }
    }

    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.get(host)
    }
}

/// A `[forward] tunnel_hosts` entry with its port: a host alone means `:443`, never every
/// port (a tunnel to another port of an allowed host would pass policy untouched).
fn tunnel_host(entry: &str) -> String {
    match entry.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() =>
        {
            entry.to_owned()
        }
        _ => format!("{entry}:443"),
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: span.map(|s| line_of(self.text, s.start)),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn config(
        &mut self,
        raw: RawConfig,
        resolve_path: &impl Fn(&Path) -> Option<PathBuf>,
    ) -> Config {
        let path = |p: PathBuf| resolve_path(&p).unwrap_or(p);
        let state_dir = raw
            .state_dir
            .map(|s| path(s.into_inner()))
            .unwrap_or_else(|| PathBuf::from("certs/state"));

        let listen_registry = match raw.listen.registry {
            None => SocketAddr::from(([127, 0, 0, 1], 5443)),
            Some(s) => s.get_ref().parse().unwrap_or_else(|_| {
                self.problem(
                    Some(s.span()),
                    "listen.registry",
                    format!("{:?} is not an address:port", s.get_ref()),
                );
                SocketAddr::from(([127, 0, 0, 1], 5443))
            }),
        };

        let listen_admin = self.optional_addr(
            raw.listen.admin,
            "listen.admin",
            Some(([127, 0, 0, 1], 9464).into()),
        );
        let admin_token = raw.listen.admin_token_file.map(path).and_then(|file| {
            match std::fs::read_to_string(&file) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                Ok(_) => {
                    self.problem(
                        None,
                        "listen.admin_token_file",
                        format!("{} is empty", file.display()),
                    );
                    None
                }
                Err(e) => {
                    self.problem(
                        None,
                        "listen.admin_token_file",
                        format!("cannot read {}: {e}", file.display()),
                    );
                    None
                }
            }
        });

        let listen_proxy = self.optional_addr(
            raw.listen.proxy,
            "listen.proxy",
            Some(([127, 0, 0, 1], 3128).into()),
        );
        let listen_mirror = self.optional_addr(raw.listen.mirror, "listen.mirror", None);
        let proxy_auth = raw
            .forward
            .proxy_auth
            .and_then(|c| self.credentials(c, "forward.proxy_auth", &path));
        let forward = ForwardConfig {
            docker_hub_search: raw.forward.docker_hub_search,
            tunnel_hosts: raw
                .forward
                .tunnel_hosts
                .iter()
                .map(|h| tunnel_host(h))
                .collect(),
            proxy_auth,
            leaf_validity: Duration::from_secs(
                3600 * self.within(
                    raw.forward.leaf_validity_hours,
                    "forward.leaf_validity_hours",
                    1,
                    24 * 30,
                    24,
                ),
            ),
        };

        let tls = TlsConfig {
            cert_file: raw.tls.cert_file.map(path),
            key_file: raw.tls.key_file.map(path),
            names: raw
                .tls
                .names
                .unwrap_or_else(|| vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            self.problem(None, "tls", "cert_file and key_file must be given together");
        }

        let mut registries = HashMap::new();
        if raw.registry.is_empty() {
            registries.insert(DOCKER_HUB.to_owned(), self.docker_hub_default());
        }
        for r in raw.registry {
            let key = format!("registry[{}]", r.host.get_ref());
            let line = Some(r.host.span());
            let host = normalize_registry(r.host.get_ref());
            if !crate::reference::is_valid_registry_host(&host) {
                self.problem(
                    line.clone(),
                    &format!("{key}.host"),
                    "not a valid registry host",
                );
                continue;
            }
            if let Some(registry) = self.registry(r, &host, &key, &path) {
                if registries.insert(host.clone(), registry).is_some() {
                    self.problem(line, &format!("{key}.host"), "registry configured twice");
                }
            }
        }

        let mut configured = |s: Spanned<String>, key: &str| {
            let host = normalize_registry(s.get_ref());
            if registries.contains_key(&host) {
                return Some(host);
            }
            let message = format!("{:?} is not a configured [[registry]]", s.get_ref());
            self.problem(Some(s.span()), key, message);
            None
        };
        let search = match raw.resolve.search {
            None => vec![DOCKER_HUB.to_owned()],
            Some(list) => list
                .into_inner()
                .into_iter()
                .filter_map(|s| configured(s, "resolve.search"))
                .collect(),
        };
        let push = raw.resolve.push.and_then(|s| configured(s, "resolve.push"));

        let mut aliases = HashMap::new();
        for (short, target) in raw.aliases {
            let key = format!("aliases.{short:?}");
            let span = Some(target.span());
            match (Name::parse(&short), Name::parse(target.get_ref())) {
                (
                    Ok(Name::Short(_)),
                    Ok(Name::Qualified {
                        registry,
                        repository,
                    }),
                ) => {
                    if registries.contains_key(&registry) {
                        aliases.insert(short, (registry, repository));
                    } else {
                        self.problem(
                            span,
                            &key,
                            format!("registry {registry:?} is not a configured [[registry]]"),
                        );
                    }
                }
                (Ok(Name::Short(_)), Ok(Name::Short(_))) => self.problem(
                    span,
                    &key,
                    "an alias must point at a fully qualified name (registry/repository)",
                ),
                (Ok(Name::Qualified { .. }), _) => {
                    self.problem(span, &key, "an alias must be a short name")
                }
                (Err(e), _) | (_, Err(e)) => self.problem(span, &key, e.to_string()),
            }
        }

        let staging_max_sessions = self.within(
            raw.policy.staging_max_sessions,
            "policy.staging_max_sessions",
            1,
            1_000_000,
            1024,
        );
        let staging_max_sessions_per_client = self.within(
            raw.policy.staging_max_sessions_per_client,
            "policy.staging_max_sessions_per_client",
            1,
            1_000_000,
            64,
        );
        let staging_idle_session_secs = self.within(
            raw.policy.staging_idle_session_secs,
            "policy.staging_idle_session_secs",
            1,
            3600,
            60,
        );

        let blobs_dir = raw
            .cache
            .blobs_dir
            .map(|s| path(s.into_inner()))
            .unwrap_or_else(|| state_dir.join("blobs"));
        Config {
            state_dir,
            listen_registry,
            listen_admin,
            admin_token,
            listen_proxy,
            listen_mirror,
            forward,
            policy: PolicyConfig {
                paths: raw
                    .policy
                    .paths
                    .unwrap_or_default()
                    .into_iter()
                    .map(path)
                    .collect(),
                audit_log: raw.policy.audit_log.map(path),
                confirm_window: self.secs(
                    raw.policy.confirm_window_secs,
                    "policy.confirm_window_secs",
                    10..=86_400,
                    600,
                ),
                reload_interval: Duration::from_millis(self.within(
                    raw.policy.reload_interval_ms,
                    "policy.reload_interval_ms",
                    100,
                    3_600_000,
                    1000,
                )),
                // A staging area under a megabyte could not hold one layer.
                staging_max_bytes: self.within(
                    raw.policy.staging_max_bytes,
                    "policy.staging_max_bytes",
                    1 << 20,
                    1 << 44,
                    10 << 30,
                ),
                staging_max_sessions: usize::try_from(staging_max_sessions).unwrap_or(1024),
                staging_max_sessions_per_client: usize::try_from(staging_max_sessions_per_client)
                    .unwrap_or(64),
                staging_idle_session: Duration::from_secs(staging_idle_session_secs),
                provenance_max_entries: self.within(
                    raw.policy.provenance_max_entries,
                    "policy.provenance_max_entries",
                    1000,
                    1_000_000_000,
                    1_000_000,
                ),
            },
            tls,
            resolve: ResolveConfig {
                search,
                push,
                aliases,
                cache_ttl: self.secs(
                    raw.resolve.cache_ttl_secs,
                    "resolve.cache_ttl_secs",
                    0..=7 * 86_400,
                    600,
                ),
                search_timeout: self.secs(
                    raw.resolve.search_timeout_secs,
                    "resolve.search_timeout_secs",
                    1..=600,
                    10,
                ),
                catalog_ttl: self.secs(
                    raw.resolve.catalog_ttl_secs,
                    "resolve.catalog_ttl_secs",
                    0..=7 * 86_400,
                    300,
                ),
            },
            cache: CacheConfig {
                manifest_bytes: self.within(
                    raw.cache.manifest_bytes,
                    "cache.manifest_bytes",
                    0,
                    1 << 34,
                    64 * 1024 * 1024,
                ),
                blobs_dir,
                blobs_max_bytes: self.within(
                    raw.cache.blobs_max_bytes,
                    "cache.blobs_max_bytes",
                    0,
                    1 << 50,
                    0,
                ),
            },
            limits: self.limits(raw.limits),
            registries,
        }
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let d = Limits::default();
        let secs = |d: Duration| d.as_secs();
        // hyper refuses a read buffer under 8 KiB; a head over 1 MiB is no registry client's.
        let max_header_bytes = self.within(
            raw.max_header_bytes,
            "limits.max_header_bytes",
            8192,
            1 << 20,
            d.max_header_bytes as u64,
        );
        let max_connections = self.within(
            raw.max_connections,
            "limits.max_connections",
            1,
            1_000_000,
            d.max_connections as u64,
        );
        let handshake = self.within(
            raw.tls_handshake_timeout_secs,
            "limits.tls_handshake_timeout_secs",
            1,
            600,
            secs(d.tls_handshake_timeout),
        );
        let header = self.within(
            raw.header_read_timeout_secs,
            "limits.header_read_timeout_secs",
            1,
            600,
            secs(d.header_read_timeout),
        );
        let idle = self.within(
            raw.idle_timeout_secs,
            "limits.idle_timeout_secs",
            1,
            86_400,
            secs(d.idle_timeout),
        );
        let drain = self.within(
            raw.drain_timeout_secs,
            "limits.drain_timeout_secs",
            0,
            86_400,
            secs(d.drain_timeout),
        );
        Limits {
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(d.max_header_bytes),
            max_connections: usize::try_from(max_connections).unwrap_or(d.max_connections),
            tls_handshake_timeout: Duration::from_secs(handshake),
            header_read_timeout: Duration::from_secs(header),
            idle_timeout: Duration::from_secs(idle),
            drain_timeout: Duration::from_secs(drain),
        }
    }

    /// A duration in seconds within `range`, `default` when absent; out of range is a problem.
    fn secs(
        &mut self,
        raw: Option<Spanned<u64>>,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Duration {
        Duration::from_secs(self.within(raw, key, *range.start(), *range.end(), default))
    }

    /// A number in `min..=max`, `default` when absent; out of range is a problem.
    fn within(
        &mut self,
        raw: Option<Spanned<u64>>,
        key: &str,
        min: u64,
        max: u64,
        default: u64,
    ) -> u64 {
        match raw {
            None => default,
            Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.problem(
                    Some(v.span()),
                    key,
                    format!("{} is not between {min} and {max}", v.get_ref()),
                );
                default
            }
        }
    }

    /// An `address:port`, or "off"; `default` when the key is absent.
    fn optional_addr(
        &mut self,
        raw: Option<Spanned<String>>,
        key: &str,
        default: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        match raw {
            None => default,
            Some(s) if s.get_ref() == "off" => None,
            Some(s) => s.get_ref().parse().map(Some).unwrap_or_else(|_| {
                self.problem(
                    Some(s.span()),
                    key,
                    format!("{:?} is not an address:port or \"off\"", s.get_ref()),
                );
                None
            }),
        }
    }

    fn credentials(
        &mut self,
        c: Spanned<RawCredentials>,
        key: &str,
        path: &impl Fn(PathBuf) -> PathBuf,
    ) -> Option<Credentials> {
        let span = Some(c.span());
        let c = c.into_inner();
        let password = match (c.password_file, c.password_env) {
            (Some(file), None) => {
                let file = path(file);
                match std::fs::read_to_string(&file) {
                    Ok(p) => p.trim_end_matches(['\n', '\r']).to_owned(),
                    Err(e) => {
                        self.problem(
                            span,
                            &format!("{key}.password_file"),
                            format!("cannot read {}: {e}", file.display()),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => match std::env::var(&var) {
                Ok(p) => p,
                Err(_) => {
                    self.problem(
                        span,
                        &format!("{key}.password_env"),
                        format!("environment variable {var} is not set"),
                    );
                    return None;
                }
            },
            _ => {
                self.problem(
                    span,
                    key,
                    "give exactly one of password_file or password_env",
                );
                return None;
            }
        };
        Some(Credentials {
            username: c.username,
            password,
        })
    }

    fn docker_hub_default(&self) -> RegistryConfig {
        RegistryConfig {
            host: DOCKER_HUB.to_owned(),
            endpoint: url::Url::parse(DOCKER_HUB_ENDPOINT).unwrap_or_else(|e| unreachable!("{e}")),
            ca_file: None,
            insecure_skip_verify: false,
            credentials: None,
            pass_client_credentials: false,
            token_hosts: DOCKER_HUB_TOKEN_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            redirect_hosts: DOCKER_HUB_REDIRECT_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            search: SearchMode::V1(
                url::Url::parse(DOCKER_HUB_INDEX).unwrap_or_else(|e| unreachable!("{e}")),
            ),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            body_timeout: Duration::from_secs(60),
            max_idle_connections: 1024,
        }
    }

    fn registry(
        &mut self,
        r: RawRegistry,
        host: &str,
        key: &str,
        path: &impl Fn(PathBuf) -> PathBuf,
    ) -> Option<RegistryConfig> {
        let hub = host == DOCKER_HUB;
        let endpoint = match &r.endpoint {
            Some(e) => match url::Url::parse(e.get_ref()) {
                Ok(u)
                    if (u.scheme() == "https" || u.scheme() == "http")
                        && u.host_str().is_some()
                        && (u.path() == "/" || u.path().is_empty())
                        && u.query().is_none()
                        && u.username().is_empty() =>
                {
                    u
                }
                Ok(_) => {
                    self.problem(
                        Some(e.span()),
                        &format!("{key}.endpoint"),
                        "must be http(s)://host[:port] with no path, query or credentials",
                    );
                    return None;
                }
                Err(err) => {
                    self.problem(Some(e.span()), &format!("{key}.endpoint"), err.to_string());
                    return None;
                }
            },
            None if hub => url::Url::parse(DOCKER_HUB_ENDPOINT).ok()?,
            None => url::Url::parse(&format!("https://{host}")).ok()?,
        };
        let credentials = r
            .credentials
            .and_then(|c| self.credentials(c, &format!("{key}.credentials"), path));
        let defaults = |v: Option<Vec<String>>, hub_default: &[&str]| {
            v.unwrap_or_else(|| {
                if hub {
                    hub_default.iter().map(|s| s.to_string()).collect()
                } else {
                    Vec::new()
                }
            })
        };
        let search_endpoint =
            r.search_endpoint
                .as_ref()
                .and_then(|e| match url::Url::parse(e.get_ref()) {
                    Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Some(u),
                    _ => {
                        self.problem(
                            Some(e.span()),
                            &format!("{key}.search_endpoint"),
                            "must be an http(s) URL",
                        );
                        None
                    }
                });
        let search = match r.search.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None if hub => search_endpoint
                .or_else(|| url::Url::parse(DOCKER_HUB_INDEX).ok())
                .map_or(SearchMode::Off, SearchMode::V1),
            None | Some(("catalog", _)) => SearchMode::Catalog,
            Some(("off", _)) => SearchMode::Off,
            Some(("v1", span)) => match search_endpoint {
                Some(u) => SearchMode::V1(u),
                None => {
                    self.problem(
                        Some(span),
                        &format!("{key}.search"),
                        "\"v1\" needs search_endpoint",
                    );
                    SearchMode::Off
                }
            },
            Some((other, span)) => {
                self.problem(
                    Some(span),
                    &format!("{key}.search"),
                    format!("{other:?} is not one of \"v1\", \"catalog\", \"off\""),
                );
                SearchMode::Off
            }
        };
        Some(RegistryConfig {
            host: host.to_owned(),
            endpoint,
            ca_file: r.ca_file.map(path),
            insecure_skip_verify: r.insecure_skip_verify,
            credentials,
            pass_client_credentials: r.pass_client_credentials,
            token_hosts: defaults(r.token_hosts, DOCKER_HUB_TOKEN_HOSTS),
            redirect_hosts: defaults(r.redirect_hosts, DOCKER_HUB_REDIRECT_HOSTS),
            search,
            connect_timeout: self.secs(
                r.connect_timeout_secs,
                &format!("{key}.connect_timeout_secs"),
                1..=600,
                10,
            ),
            response_timeout: self.secs(
                r.response_timeout_secs,
                &format!("{key}.response_timeout_secs"),
                1..=86_400,
                60,
            ),
            idle_timeout: self.secs(
                r.idle_timeout_secs,
                &format!("{key}.idle_timeout_secs"),
                1..=86_400,
                90,
            ),
            body_timeout: self.secs(
                r.body_timeout_secs,
                &format!("{key}.body_timeout_secs"),
                1..=86_400,
                60,
            ),
            max_idle_connections: usize::try_from(self.within(
                r.max_idle_connections,
                &format!("{key}.max_idle_connections"),
                0,
                65_536,
                1024,
            ))
            .unwrap_or(1024),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse(text, "test.toml", |_| None)
    }

    #[test]
    fn embedded_defaults_front_docker_hub() {
        let c = Config::embedded_defaults();
        assert_eq!(c.listen_registry.to_string(), "127.0.0.1:5443");
        assert_eq!(c.resolve.search, vec!["docker.io"]);
        let hub = c.registry("docker.io").expect("docker.io configured");
        assert_eq!(hub.endpoint.as_str(), "https://registry-1.docker.io/");
        assert_eq!(hub.token_hosts, vec!["auth.docker.io"]);
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let err = parse("[listen]\nregistry = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].line, Some(3));
        assert!(err[0].message.contains("bogus"), "{}", err[0]);
    }

    #[test]
    fn every_unknown_key_in_every_table_is_reported_at_once_with_line_and_key() {
        let text = "colour = \"blue\"\n\
                    [listen]\nregistry = \"127.0.0.1:1\"\nbogus = 1\n\
                    [[registry]]\nhost = \"registry.example.com\"\ntimeout = 5\n\
                    credentials = { username = \"u\", pasword_env = \"X\" }\n";
        let err = parse(text).unwrap_err();
        let found: Vec<(Option<usize>, &str)> = err
            .iter()
            .filter(|p| p.message.contains("unknown key"))
            .map(|p| (p.line, p.key.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (Some(1), "colour"),
                (Some(4), "listen.bogus"),
                (Some(7), "registry[registry.example.com].timeout"),
                (
                    Some(8),
                    "registry[registry.example.com].credentials.pasword_env"
                ),
            ],
            "{err:#?}"
        );
        // The rest of the file is still checked: without the misspelt key, no password source.
        assert!(
            err.iter()
                .any(|p| p.key == "registry[registry.example.com].credentials"
                    && p.message
                        .contains("exactly one of password_file or password_env")),
            "{err:#?}"
        );
        assert!(
            err[1]
                .to_string()
                .starts_with("test.toml:4: listen.bogus: unknown key"),
            "{}",
            err[1]
        );
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
[listen]
registry = "nonsense"
[resolve]
search = ["nowhere.example.com", "docker.io"]
push = "elsewhere.example.com"
[aliases]
"fedora" = "unknown.example.com/fedora"
[[registry]]
host = "docker.io"
endpoint = "ftp://x"
[[registry]]
host = "corp.example.com"
credentials = { username = "u", password_env = "PORTCULLIS_TEST_UNSET_VAR" }
"#;
        let err = parse(text).unwrap_err();
        let rendered: Vec<String> = err.iter().map(|p| p.to_string()).collect();
        let expect = [
            ("test.toml:3: listen.registry", "not an address"),
            ("test.toml:11: registry[docker.io].endpoint", "http(s)"),
            (
                "test.toml:14: registry[corp.example.com].credentials.password_env",
                "not set",
            ),
            ("test.toml:5: resolve.search", "nowhere.example.com"),
            ("test.toml:6: resolve.push", "elsewhere.example.com"),
            ("test.toml:8: aliases.\"fedora\"", "unknown.example.com"),
        ];
        for (prefix, needle) in expect {
            assert!(
                rendered
                    .iter()
                    .any(|r| r.starts_with(prefix) && r.contains(needle)),
                "missing {prefix} .. {needle} in {rendered:#?}"
            );
        }
    }

    #[test]
    fn tunnel_hosts_without_a_port_mean_port_443_only() {
        let c = parse(
            "[forward]\ntunnel_hosts = [\"auth.example.com\", \"*.cdn.example.com\", \"other.example.com:8443\", \"[::1]\"]\n",
        )
        .expect("config");
        assert_eq!(
            c.forward.tunnel_hosts,
            [
                "auth.example.com:443",
                "*.cdn.example.com:443",
                "other.example.com:8443",
                "[::1]:443"
            ]
        );
    }

    #[test]
    fn durations_out_of_range_are_each_reported_with_their_line_not_clamped() {
        let text = "[resolve]\nsearch_timeout_secs = 0\n\n[forward]\nleaf_validity_hours = 0\n\n[[registry]]\nhost = \"registry.example.com\"\nresponse_timeout_secs = 0\nbody_timeout_secs = 0\n";
        let err = parse(text).unwrap_err();
        let rendered: Vec<String> = err.iter().map(ToString::to_string).collect();
        for (line, key) in [
            (2, "resolve.search_timeout_secs"),
            (5, "forward.leaf_validity_hours"),
            (9, "response_timeout_secs"),
            (10, "body_timeout_secs"),
        ] {
            assert!(
                rendered
                    .iter()
                    .any(|r| r.starts_with(&format!("test.toml:{line}:")) && r.contains(key)),
                "{key} at line {line} in {rendered:?}"
            );
        }
        let ok =
            parse("[[registry]]\nhost = \"registry.example.com\"\nresponse_timeout_secs = 300\n")
                .expect("config");
        assert_eq!(
            ok.registries["registry.example.com"].response_timeout,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn policy_cache_and_pool_settings_are_range_checked_not_clamped() {
        let text =
            "[policy]\nconfirm_window_secs = 1\nreload_interval_ms = 5\nstaging_max_bytes = 10\n\
                    [cache]\nmanifest_bytes = 99999999999999\n\
                    [[registry]]\nhost = \"docker.io\"\nmax_idle_connections = 100000\n";
        let err = parse(text).unwrap_err();
        let found: Vec<(Option<usize>, &str)> =
            err.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (Some(2), "policy.confirm_window_secs"),
                (Some(3), "policy.reload_interval_ms"),
                (Some(4), "policy.staging_max_bytes"),
                (Some(6), "cache.manifest_bytes"),
                (Some(9), "registry[docker.io].max_idle_connections"),
            ],
            "{err:#?}"
        );
        assert!(err.iter().all(|p| p.message.contains("is not between")));
        let c = parse("[policy]\nconfirm_window_secs = 10\nreload_interval_ms = 100\n[cache]\nmanifest_bytes = 0\n")
            .expect("in range");
        assert_eq!(c.policy.confirm_window, Duration::from_secs(10));
        assert_eq!(c.policy.reload_interval, Duration::from_millis(100));
        assert_eq!(c.cache.manifest_bytes, 0);
    }

    #[test]
    fn idle_timeout_is_read_and_range_checked_with_its_line() {
        let c = parse("[limits]\nidle_timeout_secs = 5\n").expect("config");
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(
            parse("").expect("config").limits.idle_timeout,
            Duration::from_secs(90)
        );
        let err = parse("[limits]\n\nidle_timeout_secs = 0\n").unwrap_err();
        let rendered: Vec<String> = err.iter().map(|p| p.to_string()).collect();
        assert!(
            rendered[0].starts_with("test.toml:3: limits.idle_timeout_secs"),
            "{rendered:?}"
        );
    }

    #[test]
    fn limits_are_read_and_out_of_range_ones_reported_with_their_line() {
        let text = "[limits]\nmax_connections = 100\ndrain_timeout_secs = 120\n\
                    [[registry]]\nhost = \"docker.io\"\nmax_idle_connections = 16\n";
        let c = parse(text).expect("valid");
        assert_eq!(c.limits.max_connections, 100);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(120));
        assert_eq!(c.limits.max_header_bytes, 64 * 1024, "default kept");
        assert_eq!(
            c.registry("docker.io").map(|r| r.max_idle_connections),
            Some(16)
        );

        // hyper would panic on a read buffer under 8 KiB: a config error instead.
        let err = parse("[limits]\nmax_header_bytes = 1024\nmax_connections = 0\n").unwrap_err();
        let rendered: Vec<String> = err.iter().map(|p| p.to_string()).collect();
        assert_eq!(rendered.len(), 2, "{rendered:#?}");
        assert!(
            rendered[0].starts_with("test.toml:2: limits.max_header_bytes"),
            "{rendered:#?}"
        );
        assert!(
            rendered[1].starts_with("test.toml:3: limits.max_connections"),
            "{rendered:#?}"
        );
    }

    #[test]
    fn staging_session_limits_have_defaults_and_out_of_range_ones_are_reported_by_line() {
        let c = parse("").expect("valid");
        assert_eq!(c.policy.staging_max_sessions, 1024);
        assert_eq!(c.policy.staging_max_sessions_per_client, 64);
        assert_eq!(c.policy.staging_idle_session, Duration::from_secs(60));
        let c = parse("[policy]\nstaging_max_sessions = 10\nstaging_max_sessions_per_client = 2\nstaging_idle_session_secs = 5\n").expect("valid");
        assert_eq!(c.policy.staging_max_sessions, 10);
        assert_eq!(c.policy.staging_max_sessions_per_client, 2);
        assert_eq!(c.policy.staging_idle_session, Duration::from_secs(5));

        let err = parse("[policy]\nstaging_max_sessions = 0\nstaging_max_sessions_per_client = 0\nstaging_idle_session_secs = 7200\n").unwrap_err();
        let rendered: Vec<String> = err.iter().map(|p| p.to_string()).collect();
        assert_eq!(rendered.len(), 3, "{rendered:#?}");
        for (i, key) in [
            "policy.staging_max_sessions",
            "policy.staging_max_sessions_per_client",
            "policy.staging_idle_session_secs",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                rendered[i].starts_with(&format!("test.toml:{}: {key}", i + 2))
                    && rendered[i].contains("is not between"),
                "{rendered:#?}"
            );
        }
    }

    #[test]
    fn registries_aliases_and_push_are_checked_and_normalised() {
        let text = r#"
[resolve]
search = ["registry.example.com", "index.docker.io"]
push = "registry.example.com"
[aliases]
"tool" = "registry.example.com/team/tool"
[[registry]]
host = "registry-1.docker.io"
endpoint = "https://127.0.0.1:5001"
[[registry]]
host = "registry.example.com"
endpoint = "https://127.0.0.1:5002"
credentials = { username = "alice", password_env = "PATH" }
"#;
        let c = parse(text).expect("valid");
        assert_eq!(c.resolve.search, vec!["registry.example.com", "docker.io"]);
        assert_eq!(c.resolve.push.as_deref(), Some("registry.example.com"));
        let (reg, repo) = &c.resolve.aliases["tool"];
        assert_eq!(
            (reg.as_str(), repo.as_str()),
            ("registry.example.com", "team/tool")
        );
        let hub = c.registry("docker.io").expect("hub");
        assert_eq!(hub.endpoint.as_str(), "https://127.0.0.1:5001/");
        assert_eq!(
            hub.token_hosts,
            vec!["auth.docker.io"],
            "docker.io keeps its token host"
        );
        let corp = c.registry("registry.example.com").expect("corp");
        assert!(format!("{corp:?}").contains("alice:<redacted>"));
        assert!(!format!("{corp:?}").contains(&std::env::var("PATH").unwrap_or_default()));
    }

    #[test]
    fn the_readme_examples_are_valid_configurations() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("configuration section");
        let section = section.split("\n## ").next().unwrap_or_default();
        std::env::set_var("EXAMPLE_REGISTRY_PASSWORD", "example");
        let blocks: Vec<&str> = section
            .split("```toml")
            .skip(1)
            .filter_map(|s| s.split("```").next())
            .collect();
        assert!(blocks.len() >= 2, "README configuration examples");
        for block in &blocks {
            parse(block).unwrap_or_else(|e| panic!("README example:\n{block}\n{e:#?}"));
        }
        let c = parse(blocks[0]).expect("first example");
        assert_eq!(c.resolve.search, vec!["registry.example.com", "docker.io"]);
        assert_eq!(c.registries.len(), 2);
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = parse("[listen]\nregistry = \n").unwrap_err();
        assert_eq!(err[0].line, Some(2), "{}", err[0]);
    }
}

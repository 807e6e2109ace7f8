//! A builder for portcullis's TOML configuration, so tests name the upstream world:
//! `ProxyConfig::new().search(&["docker.io"]).registry(Upstream::new("docker.io", &hub))`.

use std::path::PathBuf;

use super::registry::Registry;

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
    /// Any other `[[registry]]` key, e.g. `search = "catalog"`.
    pub extra: toml::Table,
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
            extra: toml::Table::new(),
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

    /// Sets any other `[[registry]]` key.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Upstream {
        self.extra.insert(key.to_string(), value.into());
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
    sections: toml::Table,
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

    /// Sets `key = value` in table `[section]` (e.g. `forward`, `listen`).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> ProxyConfig {
        let table = self
            .sections
            .entry(section.to_string())
            .or_insert_with(|| toml::Table::new().into());
        if let Some(t) = table.as_table_mut() {
            t.insert(key.to_string(), value.into());
        }
        self
    }

    /// `[policy] paths = [path]`: one policy file or directory.
    pub fn policy_path(self, path: impl AsRef<std::path::Path>) -> ProxyConfig {
        let path = path.as_ref().display().to_string();
        self.set("policy", "paths", toml::Value::Array(vec![path.into()]))
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
            t.extend(u.extra.clone());
            Value::Table(t)
        });
        root.insert("registry".into(), Value::Array(registries.collect()));
        for (name, section) in &self.sections {
            match (
                root.get_mut(name).and_then(Value::as_table_mut),
                section.as_table(),
            ) {
                (Some(existing), Some(extra)) => existing.extend(extra.clone()),
                _ => {
                    root.insert(name.clone(), section.clone());
                }
            }
        }
        root.to_string()
    }
}

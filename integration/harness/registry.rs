//! A real registry: CNCF distribution (`docker-registry serve`) with TLS, filesystem
//! storage in a temporary directory, deletes enabled and an info-level log file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::ca::Ca;
use super::http::https;
use super::image::OciImage;
use super::net::{free_port, port_was_taken, wait_for, PORT_ATTEMPTS};
use super::process::{describe, run, ProcessId, Supervised};
use super::tempdir::TestDir;
use super::token_server::TokenServer;
use super::tools::Skopeo;

/// How a registry authenticates its clients.
pub enum Auth<'a> {
    None,
    /// Basic authentication against a bcrypt htpasswd file holding one user.
    Htpasswd {
        user: &'a str,
        password: &'a str,
    },
    /// Bearer tokens from this token server (its signing CA is the registry's
    /// `rootcertbundle`, and its CA also signs the registry's TLS certificate).
    Token(&'a TokenServer),
}

pub struct Registry {
    process: Supervised,
    port: u16,
    ca: Arc<Ca>,
    credentials: Option<(String, String)>,
    dir: TestDir,
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers 200 or 401.
    pub fn start(auth: Auth) -> Registry {
        let ca = match &auth {
            Auth::Token(server) => server.ca(),
            _ => Ca::new("registry"),
        };
        let dir = TestDir::new("registry");
        let (cert, key) = ca.issue_loopback_files(dir.path());
        let auth_yaml = auth_section(&auth, &dir);
        let storage = dir.subdir("storage");
        let credentials = match &auth {
            Auth::None => None,
            Auth::Htpasswd { user, password } => Some((user.to_string(), password.to_string())),
            Auth::Token(server) => server.first_user(),
        };
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = dir.write(
                "config.yml",
                config_yaml(port, &storage, &cert, &key, &auth_yaml),
            );
            let mut command = Command::new("docker-registry");
            command.arg("serve").arg(&config);
            let log = dir.path().join(format!("registry-{port}.log"));
            let mut process = Supervised::spawn("docker-registry", command, &log);
            let ca_file = ca.cert_file();
            let url = format!("https://127.0.0.1:{port}/v2/");
            let ready = wait_for(Duration::from_secs(30), || {
                if process.exit_status().is_some() {
                    return Some(false);
                }
                match https(&ca_file).get(&url) {
                    Ok(r) if r.status == 200 || r.status == 401 => Some(true),
                    _ => None,
                }
            });
            match ready {
                Some(true) => {
                    return Registry {
                        process,
                        port,
                        ca,
                        credentials,
                        dir,
                    };
                }
                Some(false) if port_was_taken(&process.log()) => continue,
                _ => panic!(
                    "docker-registry did not come up on {url}:\n{}",
                    process.log()
                ),
            }
        }
        panic!("docker-registry found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, the host part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the registry's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.cert_file()
    }

    /// A directory holding only the CA certificate, for skopeo's `--*-cert-dir`.
    pub fn cert_dir(&self) -> &Path {
        self.ca.cert_dir()
    }

    /// Pushes `image` straight into this registry as `repository:tag`, with the
    /// registry's own credentials (the first token-server user for token auth).
    pub fn seed(&self, image: &OciImage, repository_tag: &str) {
        let cert_dir = self.cert_dir().display().to_string();
        let mut args = vec!["--dest-cert-dir", cert_dir.as_str()];
        let creds = self.credentials.as_ref().map(|(u, p)| format!("{u}:{p}"));
        if let Some(creds) = &creds {
            args.extend(["--dest-creds", creds.as_str()]);
        }
        let reference = format!("docker://{}/{repository_tag}", self.host());
        let out = Skopeo::new().copy(&image.reference(), &reference, &args);
        assert!(
            out.status.success(),
            "seeding {reference} failed:\n{}",
            describe(&out)
        );
    }

    /// `user:password` this registry accepts, if it wants any.
    pub fn credentials(&self) -> Option<String> {
        self.credentials.as_ref().map(|(u, p)| format!("{u}:{p}"))
    }

    /// The filesystem storage root (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Whether the storage holds a blob with this digest (`sha256:<hex>`).
    pub fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
            .is_file()
    }

    /// Every blob in storage, as `sha256:<hex>`.
    pub fn blob_digests(&self) -> Vec<String> {
        let root = self.storage_dir().join("docker/registry/v2/blobs/sha256");
        let entries = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
                .unwrap_or_default()
        };
        entries(&root)
            .iter()
            .flat_map(|prefix| entries(prefix))
            .filter(|blob| blob.join("data").is_file())
            .filter_map(|blob| Some(format!("sha256:{}", blob.file_name()?.to_str()?)))
            .collect()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The requests the registry logged, as `METHOD path` lines, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("response completed"))
            .filter_map(|l| {
                let method = field(l, "http.request.method")?;
                let uri = field(l, "http.request.uri")?;
                let status = field(l, "http.response.status").unwrap_or_default();
                Some(format!("{method} {uri} {status}"))
            })
            .collect()
    }

    pub fn process_tree(&self) -> Vec<ProcessId> {
        self.process.process_tree()
    }

    /// Stops the registry (an outage, for the tests of what still works); its log stays
    /// readable.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// The value of `key=value` or `key="value"` in a logrus text line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        Some(quoted[..quoted.find('"')?].to_string())
    } else {
        Some(rest.split_whitespace().next()?.to_string())
    }
}

fn config_yaml(port: u16, storage: &Path, cert: &Path, key: &Path, auth: &str) -> String {
    format!(
        r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: portcullis-test-secret
  tls:
    certificate: {cert}
    key: {key}
{auth}"#,
        storage = storage.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

fn auth_section(auth: &Auth, dir: &TestDir) -> String {
    match auth {
        Auth::None => String::new(),
        Auth::Htpasswd { user, password } => {
            let mut command = Command::new("htpasswd");
            command.args(["-Bbn", user, password]);
            let out = run(command, None, Duration::from_secs(30));
            assert!(out.status.success(), "htpasswd failed: {}", describe(&out));
            let file = dir.write("htpasswd", &out.stdout);
            format!(
                "auth:\n  htpasswd:\n    realm: portcullis-test\n    path: {}\n",
                file.display()
            )
        }
        Auth::Token(server) => format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            server.realm(),
            server.service(),
            server.issuer(),
            server.ca().cert_file().display()
        ),
    }
}

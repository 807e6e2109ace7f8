//! Tools for the bypass matrix (`integration/bypass.rs`): small images built in memory
//! (with labels and annotations), seeded straight into a registry, and curl through each of
//! portcullis's three listeners, spelling names the way a client of that listener would.
//!
//! curl rather than the in-process client because the forward proxy needs `CONNECT` to a
//! registry *name* (Go clients never proxy 127.x, curl does) and because `--http2` exercises
//! the same listeners over HTTP/2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::http::https;
use super::image::MANIFEST_MEDIA_TYPE;
use super::image::{sha256_digest, tar_of, XorShift, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE};
use super::portcullis::Portcullis;
use super::process::{describe, run};
use super::registry::Registry;
use super::tempdir::TestDir;

pub const DOCKER_HUB: &str = "docker.io";

/// An image held in memory: one small tar layer of random bytes, a config, a manifest.
pub struct Img {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Img {
    /// A fresh random image whose config has `labels` and whose manifest has `annotations`.
    pub fn new(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Img {
        let mut rng = XorShift::fresh();
        let mut bytes = vec![0u8; 2048];
        rng.fill(&mut bytes);
        let layer = tar_of(&[("payload.bin", &bytes)]);
        let layer_digest = sha256_digest(&layer);
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .chain([(
                "portcullis.test.seed".to_owned(),
                rng.next_u64().to_string().into(),
            )])
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": labels },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        })
        .to_string()
        .into_bytes();
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": sha256_digest(&config), "size": config.len() },
            "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer.len() }],
        });
        if !annotations.is_empty() {
            let a: serde_json::Map<String, serde_json::Value> = annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                .collect();
            manifest["annotations"] = a.into();
        }
        let manifest = manifest.to_string().into_bytes();
        let digest = sha256_digest(&manifest);
        Img {
            layer,
            config,
            manifest,
            digest,
        }
    }

    pub fn plain() -> Img {
        Img::new(&[], &[])
    }

    pub fn layer_digest(&self) -> String {
        sha256_digest(&self.layer)
    }

    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }

    /// Every blob, layer first, as `(digest, bytes)`.
    pub fn blobs(&self) -> [(String, &[u8]); 2] {
        [
            (self.layer_digest(), &self.layer),
            (self.config_digest(), &self.config),
        ]
    }

    /// Writes the image as skopeo's `dir:` layout into `dir`.
    pub fn write_dir(&self, dir: &Path) {
        for (digest, bytes) in self.blobs() {
            std::fs::write(dir.join(digest.trim_start_matches("sha256:")), bytes)
                .expect("write blob");
        }
        std::fs::write(dir.join("manifest.json"), &self.manifest).expect("write manifest");
        std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n")
            .expect("write version");
    }

    /// Pushes the image straight into `registry` (no portcullis) as `repository:tag`.
    pub fn seed(&self, registry: &Registry, repository: &str, tag: &str) {
        let client = https(&registry.ca_file()).header("Content-Type", "application/octet-stream");
        for (digest, bytes) in self.blobs() {
            let url = format!("{}/v2/{repository}/blobs/uploads/", registry.url());
            let r = client
                .request("POST", &url, Vec::new())
                .expect("seed upload");
            assert_eq!(r.status, 202, "seeding {repository}: {}", r.text());
            let location = r.header("Location").expect("an upload Location");
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = if location.starts_with("https://") {
                format!("{location}{sep}digest={digest}")
            } else {
                format!("{}{location}{sep}digest={digest}", registry.url())
            };
            let r = client
                .request("PUT", &url, bytes.to_vec())
                .expect("seed blob");
            assert_eq!(r.status, 201, "seeding {repository} blob: {}", r.text());
        }
        let url = format!("{}/v2/{repository}/manifests/{tag}", registry.url());
        let r = https(&registry.ca_file())
            .header("Content-Type", MANIFEST_MEDIA_TYPE)
            .request("PUT", &url, self.manifest.clone())
            .expect("seed manifest");
        assert_eq!(r.status, 201, "seeding {repository}:{tag}: {}", r.text());
    }
}

/// Whether `registry` itself (asked directly, not through portcullis) has this blob in
/// this repository: the ground truth after a mount or a push.
pub fn backend_has_blob(registry: &Registry, repository: &str, digest: &str) -> bool {
    let url = format!("{}/v2/{repository}/blobs/{digest}", registry.url());
    https(&registry.ca_file())
        .request("HEAD", &url, Vec::new())
        .is_ok_and(|r| r.status == 200)
}

/// Whether `registry` itself has manifest `reference` in `repository`.
pub fn backend_has_manifest(registry: &Registry, repository: &str, reference: &str) -> bool {
    let url = format!("{}/v2/{repository}/manifests/{reference}", registry.url());
    https(&registry.ca_file())
        .header("Accept", MANIFEST_MEDIA_TYPE)
        .request("HEAD", &url, Vec::new())
        .is_ok_and(|r| r.status == 200)
}

/// Which of portcullis's listeners a request goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The registry endpoint: `/v2/<registry>/<repository>/...`.
    Registry,
    /// The forward proxy: `CONNECT <registry host>:443`, then `/v2/<repository>/...`.
    Forward,
    /// The docker.io mirror endpoint: docker.io names, other registries as `?ns=` (containerd).
    Mirror,
}

impl Listener {
    pub const ALL: [Listener; 3] = [Listener::Registry, Listener::Forward, Listener::Mirror];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Registry => "registry",
            Listener::Forward => "forward",
            Listener::Mirror => "mirror",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
        }
    }
}

/// One HTTP answer as curl saw it.
#[derive(Debug, Default)]
pub struct Answer {
    /// 0 when curl got no HTTP answer at all (see `error`).
    pub status: u16,
    /// The HTTP version curl used (`1.1`, `2`).
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub error: Option<String>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn oci_codes(&self) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        value["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `403 DENIED`, `200 sha256:1234abcd…`, `curl: ...`: a short line for the table.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("no answer: {e}");
        }
        let mut s = format!("{}", self.status);
        if self.version != "1.1" {
            s.push_str(&format!(" HTTP/{}", self.version));
        }
        let codes = self.oci_codes();
        if !codes.is_empty() {
            s.push(' ');
            s.push_str(&codes.join(","));
        }
        if let Some(d) = self.header("docker-content-digest") {
            s.push_str(&format!(" digest={}", short(d)));
        }
        s
    }

    /// The summary with the body (cut short), for the failure report.
    pub fn detail(&self) -> String {
        if !self.body.is_empty() && !self.body.starts_with(b"{") {
            return format!(
                "{} (HTTP/{}) body: <{} bytes>",
                self.summary(),
                self.version,
                self.body.len()
            );
        }
        let mut text = self.text();
        if text.len() > 400 {
            let cut = (0..=400)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        format!(
            "{} (HTTP/{}) body: {}",
            self.summary(),
            self.version,
            text.trim()
        )
    }
}

/// `sha256:1234abcd` from a full digest.
pub fn short(digest: &str) -> String {
    digest.chars().take(15).collect()
}

/// How an upload sends a blob.
#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    /// POST, then one PUT with the whole blob.
    Monolithic,
    /// POST, PATCH, then an empty PUT.
    Chunked,
}

/// The requests of an upload or a push, as far as they got.
pub struct PushLog {
    /// `POST 202 → PUT 201 …`, one entry per request.
    pub steps: Vec<String>,
    /// The answer to the last request sent (the refusal, when one came).
    pub last: Answer,
    pub completed: bool,
}

fn with_query(url: &str, pair: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{pair}")
}

/// One listener of one portcullis, reached with curl.
pub struct Door {
    pub listener: Listener,
    addr: SocketAddr,
    ca: PathBuf,
    cert_dir: PathBuf,
    scratch: TestDir,
}

static FILES: AtomicU64 = AtomicU64::new(0);

impl Door {
    pub fn of(proxy: &Portcullis, listener: Listener) -> Door {
        let addr = match listener {
            Listener::Registry => Some(proxy.addr()),
            Listener::Forward => proxy.proxy_addr(),
            Listener::Mirror => proxy.mirror_addr(),
        }
        .unwrap_or_else(|| panic!("portcullis has no {} listener", listener.as_str()));
        Door {
            listener,
            addr,
            ca: proxy.ca_file(),
            cert_dir: proxy.cert_dir(),
            scratch: TestDir::new("curl"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    pub fn cert_dir(&self) -> &Path {
        &self.cert_dir
    }

    /// The host a forward-proxy client connects to for `registry`.
    fn forward_host(registry: &str) -> &str {
        if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        }
    }

    /// The mirror's `ns` query for names of another registry than docker.io.
    fn ns(&self, registry: &str, url: String) -> String {
        if self.listener != Listener::Mirror || registry == DOCKER_HUB {
            return url;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}ns={registry}")
    }

    /// The URL of `/v2/<name>/<rest>` for `registry/repository` through this listener
    /// (`rest` may carry a query).
    pub fn repo_url(&self, registry: &str, repository: &str, rest: &str) -> String {
        let url = match self.listener {
            Listener::Registry => {
                format!("https://{}/v2/{registry}/{repository}/{rest}", self.addr)
            }
            Listener::Forward => format!(
                "https://{}/v2/{repository}/{rest}",
                Door::forward_host(registry)
            ),
            Listener::Mirror => format!("https://{}/v2/{repository}/{rest}", self.addr),
        };
        self.ns(registry, url)
    }

    /// `/v2/_catalog` of `registry` (the registry endpoint lists every search registry).
    pub fn catalog_url(&self, registry: &str) -> String {
        let url = match self.listener {
            Listener::Forward => format!("https://{}/v2/_catalog", Door::forward_host(registry)),
            _ => format!("https://{}/v2/_catalog", self.addr),
        };
        self.ns(registry, url)
    }

    /// `/v1/search?q=<term>` as a docker client would send it through this listener.
    pub fn search_url(&self, term: &str) -> String {
        match self.listener {
            Listener::Forward => format!("https://index.docker.io/v1/search?q={term}"),
            _ => format!("https://{}/v1/search?q={term}", self.addr),
        }
    }

    /// How a client of this listener names `registry/repository` in a mount's `from`, when
    /// pushing to `destination`: the registry endpoint qualifies every name; the others are
    /// relative to the registry the client talks to.
    pub fn mount_source(&self, registry: &str, repository: &str, destination: &str) -> String {
        match self.listener {
            Listener::Registry => format!("{registry}/{repository}"),
            _ if registry == destination => repository.to_owned(),
            _ => format!("{registry}/{repository}"),
        }
    }

    /// A `Location` answered for `registry`, as the next URL to use (the mirror client adds
    /// `ns` to every request, as containerd does).
    pub fn follow(&self, registry: &str, location: &str) -> String {
        if location.starts_with("https://") || location.starts_with("http://") {
            return location.to_owned();
        }
        let base = match self.listener {
            Listener::Forward => format!("https://{}", Door::forward_host(registry)),
            _ => format!("https://{}", self.addr),
        };
        let url = format!("{base}{location}");
        if url.contains("ns=") {
            url
        } else {
            self.ns(registry, url)
        }
    }

    /// Sends one request with curl and reads the whole answer.
    pub fn send(
        &self,
        proto: Proto,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let head_file = self.scratch.path().join(format!("{n}.head"));
        let body_file = self.scratch.path().join(format!("{n}.body"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.ca)
            .arg("-D")
            .arg(&head_file)
            .arg("-o")
            .arg(&body_file)
            .args(["-w", "%{http_code} %{http_version}"])
            .arg(match proto {
                Proto::H1 => "--http1.1",
                Proto::H2 => "--http2",
            });
        match self.listener {
            Listener::Forward => cmd.arg("--proxy").arg(format!("http://{}", self.addr)),
            _ => cmd.args(["--noproxy", "*"]),
        };
        if method == "HEAD" {
            cmd.arg("-I");
        } else {
            cmd.args(["-X", method]);
        }
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(body) = body {
            let upload = self.scratch.write(&format!("{n}.upload"), body);
            cmd.arg("--data-binary")
                .arg(format!("@{}", upload.display()));
        }
        cmd.arg(url)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy");
        let out = run(cmd, None, Duration::from_secs(40));
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut fields = written.split_whitespace();
        let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let version = fields.next().unwrap_or_default().to_owned();
        let raw_headers = std::fs::read_to_string(&head_file).unwrap_or_default();
        let answer = Answer {
            status,
            version,
            headers: last_header_block(&raw_headers),
            body: std::fs::read(&body_file).unwrap_or_default(),
            error: (status == 0 || !out.status.success()).then(|| describe(&out)),
        };
        let _ = std::fs::remove_file(head_file);
        let _ = std::fs::remove_file(body_file);
        answer
    }

    /// One blob to `registry/repository`, as a client of this listener uploads it.
    pub fn upload(
        &self,
        proto: Proto,
        registry: &str,
        repository: &str,
        digest: &str,
        bytes: &[u8],
        flavor: Flavor,
    ) -> PushLog {
        let octets = [("Content-Type", "application/octet-stream")];
        let start_url = self.repo_url(registry, repository, "blobs/uploads/");
        let start = self.send(proto, "POST", &start_url, &octets, Some(&[]));
        let mut steps = vec![format!("POST {}", start.summary())];
        let Some(location) = start.header("location").filter(|_| start.status == 202) else {
            return PushLog {
                steps,
                last: start,
                completed: false,
            };
        };
        let mut location = self.follow(registry, location);
        if let Flavor::Chunked = flavor {
            let range = format!("0-{}", bytes.len().saturating_sub(1));
            let headers = [octets[0], ("Content-Range", range.as_str())];
            let patch = self.send(proto, "PATCH", &location, &headers, Some(bytes));
            steps.push(format!("PATCH {}", patch.summary()));
            match patch.header("location").filter(|_| patch.status == 202) {
                Some(next) => location = self.follow(registry, next),
                None => {
                    return PushLog {
                        steps,
                        last: patch,
                        completed: false,
                    }
                }
            }
        }
        let body: &[u8] = match flavor {
            Flavor::Monolithic => bytes,
            Flavor::Chunked => &[],
        };
        let done = with_query(&location, &format!("digest={digest}"));
        let put = self.send(proto, "PUT", &done, &octets, Some(body));
        steps.push(format!("PUT {}", put.summary()));
        let completed = put.status == 201;
        PushLog {
            steps,
            last: put,
            completed,
        }
    }

    /// The whole image to `registry/repository:tag`: both blobs, then the manifest. Stops at
    /// the first request that does not succeed.
    pub fn push(
        &self,
        proto: Proto,
        registry: &str,
        repository: &str,
        tag: &str,
        img: &Img,
        flavor: Flavor,
    ) -> PushLog {
        let mut steps = Vec::new();
        for (digest, bytes) in img.blobs() {
            let log = self.upload(proto, registry, repository, &digest, bytes, flavor);
            steps.extend(log.steps);
            if !log.completed {
                return PushLog { steps, ..log };
            }
        }
        let url = self.repo_url(registry, repository, &format!("manifests/{tag}"));
        let headers = [("Content-Type", MANIFEST_MEDIA_TYPE)];
        let put = self.send(proto, "PUT", &url, &headers, Some(&img.manifest));
        steps.push(format!("PUT manifest {}", put.summary()));
        let completed = put.status == 201;
        PushLog {
            steps,
            last: put,
            completed,
        }
    }
}

/// The headers of the final response (a proxy's `200 Connection established` and any
/// `100 Continue` come first in curl's dump).
fn last_header_block(raw: &str) -> Vec<(String, String)> {
    let block = raw
        .split("\r\n\r\n")
        .filter(|b| b.trim_start().starts_with("HTTP/"))
        .last()
        .unwrap_or_default();
    block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

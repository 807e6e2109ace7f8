//! Deliberately broken upstream registries for fault injection.
//!
//! [`TruncatingUpstream`]: HTTPS on 127.0.0.1. `GET /v2/` answers 200; a blob `GET` answers
//! 200 with `Content-Length: N` and the right `Docker-Content-Digest`, sends N/2 bytes and
//! closes the connection (a `HEAD` gets the honest headers). Everything else is 404.
//!
//! [`FaultyUpstream`]: an honest one-blob registry (any repository holds the blob, ranges
//! are served, uploads are accepted and thrown away) with the [`Fault`]s a test asks for.
//! [`Bystander`] is a host nobody should ever connect to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ca::{Ca, LOOPBACK_NAMES};
use super::image::{sha256_digest, XorShift};
use super::rt::{server_tls, Background};

pub struct TruncatingUpstream {
    addr: SocketAddr,
    ca: Arc<Ca>,
    digest: String,
    size: usize,
    requests: Arc<AtomicUsize>,
    _runtime: Background,
}

impl TruncatingUpstream {
    /// Serves one blob of `size` random bytes, always cut in the middle.
    pub fn start(size: usize) -> TruncatingUpstream {
        let ca = Ca::new("fault");
        let leaf = ca.issue(&LOOPBACK_NAMES);
        let tls = tokio_rustls::TlsAcceptor::from(server_tls(&leaf.cert_pem, &leaf.key_pem));
        let mut blob = vec![0u8; size];
        XorShift::fresh().fill(&mut blob);
        let digest = sha256_digest(&blob);
        let blob = Arc::new(blob);
        let requests = Arc::new(AtomicUsize::new(0));
        let runtime = Background::new("truncating-upstream");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the truncating upstream");
        let addr = listener.local_addr().expect("address");
        let counter = requests.clone();
        runtime.handle().spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, blob, counter) = (tls.clone(), blob.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = tls.accept(tcp).await else {
                        return;
                    };
                    // One request per connection keeps the fault simple and certain.
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let answer = respond(&head, &blob);
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.flush().await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        TruncatingUpstream {
            addr,
            ca,
            digest,
            size,
            requests,
            _runtime: runtime,
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.ca.cert_file()
    }

    /// The digest of the whole blob (which is never sent whole).
    pub fn blob_digest(&self) -> &str {
        &self.digest
    }

    pub fn blob_size(&self) -> usize {
        self.size
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

pub(super) async fn read_head<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 65536 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn respond(head: &str, blob: &[u8]) -> Vec<u8> {
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let common = "Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n";
    if path == "/v2/" || path == "/v2" {
        return format!("HTTP/1.1 200 OK\r\n{common}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes();
    }
    if path.starts_with("/v2/") && path.contains("/blobs/sha256:") {
        let digest = sha256_digest(blob);
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\n{common}Content-Type: application/octet-stream\r\nContent-Length: {}\r\nDocker-Content-Digest: {digest}\r\n\r\n",
            blob.len()
        )
        .into_bytes();
        if method == "GET" {
            answer.extend_from_slice(&blob[..blob.len() / 2]);
        }
        return answer;
    }
    let body =
        r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
    format!(
        "HTTP/1.1 404 Not Found\r\n{common}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a [`FaultyUpstream`] gets wrong.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Every upload answer (POST, PATCH, PUT, GET of a session) carries this `Location`.
    UploadLocation(String),
    /// Every request for repository `repo` answers 401 with a Bearer challenge for `realm`;
    /// `/v2/` and other repositories need no authentication.
    Challenge { repo: String, realm: String },
    /// A blob `GET` in `repo` without `Range` answers 206 with wrong bytes.
    PartialWithoutRange { repo: String },
    /// A blob `GET` in `repo` answers 200 with the right length and wrong bytes, whatever
    /// `Range` it asked for.
    WrongBytes { repo: String },
    /// A blob `GET` in `repo` answers 200 with the full `Content-Length`, sends half and closes.
    Truncated { repo: String },
    /// Every request for repository `repo` is read and never answered: the connection stays
    /// open until the upstream is dropped. `/v2/` still answers.
    Hang { repo: String },
    /// Every request for repository `repo` answers `status` with a plain-text body, as a
    /// load balancer with no healthy backend does. `/v2/` still answers.
    ServerError { repo: String, status: u16 },
}

pub struct FaultyUpstream {
    addr: SocketAddr,
    ca: Arc<Ca>,
    digest: String,
    blob: Arc<Vec<u8>>,
    requests: Arc<Mutex<Vec<String>>>,
    _runtime: Background,
}

impl FaultyUpstream {
    /// Serves one blob of `size` random bytes in every repository, with `faults`.
    pub fn start(size: usize, faults: &[Fault]) -> FaultyUpstream {
        let ca = Ca::new("faulty");
        let leaf = ca.issue(&LOOPBACK_NAMES);
        let tls = tokio_rustls::TlsAcceptor::from(server_tls(&leaf.cert_pem, &leaf.key_pem));
        let mut blob = vec![0u8; size];
        XorShift::fresh().fill(&mut blob);
        let digest = sha256_digest(&blob);
        let blob = Arc::new(blob);
        let faults = Arc::new(faults.to_vec());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let runtime = Background::new("faulty-upstream");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the faulty upstream");
        let addr = listener.local_addr().expect("address");
        let (seen, served) = (requests.clone(), blob.clone());
        runtime.handle().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, blob, faults, seen) =
                    (tls.clone(), served.clone(), faults.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let line = head.lines().next().unwrap_or("").to_owned();
                    seen.lock().expect("requests").push(line);
                    if hangs(&head, &faults) {
                        // Held, not closed: the caller waits for headers that never come.
                        std::future::pending::<()>().await;
                    }
                    let answer = faulty_answer(&head, &blob, &faults);
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.flush().await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        FaultyUpstream {
            addr,
            ca,
            digest,
            blob,
            requests,
            _runtime: runtime,
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.ca.cert_file()
    }

    pub fn blob_digest(&self) -> &str {
        &self.digest
    }

    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// Request lines (`GET /v2/... HTTP/1.1`) in the order they arrived.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

/// The repository of a `/v2/<repo>/{manifests,blobs,tags}/...` request line.
fn repository_of(head: &str) -> Option<&str> {
    let target = head.split_whitespace().nth(1)?;
    let path = target.split('?').next()?.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|kind| path.split_once(kind).map(|(repo, _)| repo))
}

fn hangs(head: &str, faults: &[Fault]) -> bool {
    let repo = repository_of(head);
    faults
        .iter()
        .any(|f| matches!(f, Fault::Hang { repo: r } if Some(r.as_str()) == repo))
}

fn faulty_answer(head: &str, blob: &[u8], faults: &[Fault]) -> Vec<u8> {
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let range = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("range")
            .then(|| value.trim().to_owned())
    });
    let common = "Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n";
    let answer = |status: &str, headers: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\n{common}{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(body);
        }
        out
    };
    if path == "/v2/" || path == "/v2" {
        return answer("200 OK", "Content-Type: application/json\r\n", b"{}");
    }
    let in_repo = |repo: &str| path.starts_with(&format!("/v2/{repo}/"));
    for fault in faults {
        if let Fault::ServerError { repo, status } = fault {
            if repository_of(head) == Some(repo.as_str()) {
                let reason = http::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Server Error");
                return answer(
                    &format!("{status} {reason}"),
                    "Content-Type: text/plain\r\n",
                    b"no healthy upstream\n",
                );
            }
        }
    }
    for fault in faults {
        if let Fault::Challenge { repo, realm } = fault {
            if in_repo(repo) {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"faulty\",scope=\"repository:{repo}:pull\"\r\nContent-Type: application/json\r\n"
                );
                return answer(
                    "401 Unauthorized",
                    &challenge,
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
            }
        }
    }
    let Some((repo_path, rest)) = path.split_once("/blobs/") else {
        return not_found();
    };
    let repo = repo_path.trim_start_matches("/v2/");
    if let Some(session) = rest.strip_prefix("uploads/") {
        let location = faults
            .iter()
            .find_map(|f| match f {
                Fault::UploadLocation(l) => Some(l.clone()),
                _ => None,
            })
            .unwrap_or_else(|| format!("/v2/{repo}/blobs/uploads/session-1?_state=abc%3D"));
        let status = match (method, session) {
            ("POST", "") | ("PATCH", _) => "202 Accepted",
            ("PUT", _) => "201 Created",
            _ => "204 No Content",
        };
        let headers =
            format!("Location: {location}\r\nDocker-Upload-UUID: session-1\r\nRange: 0-0\r\n");
        return answer(status, &headers, b"");
    }
    if rest != sha256_digest(blob) {
        return answer(
            "404 Not Found",
            "Content-Type: application/json\r\n",
            br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
        );
    }
    let has =
        |wanted: fn(&Fault) -> Option<&String>| faults.iter().filter_map(wanted).any(|r| r == repo);
    let digest = sha256_digest(blob);
    let headers =
        format!("Content-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\n");
    let wrong: Vec<u8> = blob.iter().map(|b| !b).collect();
    if has(|f| match f {
        Fault::WrongBytes { repo } => Some(repo),
        _ => None,
    }) {
        return answer("200 OK", &headers, &wrong);
    }
    if method == "GET"
        && has(|f| match f {
            Fault::Truncated { repo } => Some(repo),
            _ => None,
        })
    {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\n{common}{headers}Content-Length: {}\r\n\r\n",
            blob.len()
        )
        .into_bytes();
        out.extend_from_slice(&blob[..blob.len() / 2]);
        return out;
    }
    match range.as_deref().and_then(|r| byte_range(r, blob.len())) {
        Some((start, end)) => {
            let headers = format!(
                "{headers}Content-Range: bytes {start}-{end}/{}\r\n",
                blob.len()
            );
            answer("206 Partial Content", &headers, &blob[start..=end])
        }
        None if range.is_none()
            && has(|f| match f {
                Fault::PartialWithoutRange { repo } => Some(repo),
                _ => None,
            }) =>
        {
            let headers = format!(
                "{headers}Content-Range: bytes 0-{}/{}\r\n",
                blob.len() - 1,
                blob.len()
            );
            answer("206 Partial Content", &headers, &wrong)
        }
        None => answer("200 OK", &headers, blob),
    }
}

/// `bytes=<start>-[<end>]` within a body of `len` bytes, as inclusive offsets.
fn byte_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => len.checked_sub(1)?,
        e => e.parse::<usize>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end).then_some((start, end))
}

fn not_found() -> Vec<u8> {
    let body =
        r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
    format!(
        "HTTP/1.1 404 Not Found\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A host nobody should talk to: accepts TCP connections, counts them and closes them.
pub struct Bystander {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _runtime: Background,
}

impl Bystander {
    pub fn start() -> Bystander {
        let runtime = Background::new("bystander");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the bystander");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        runtime.handle().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(tcp);
            }
        });
        Bystander {
            addr,
            connections,
            _runtime: runtime,
        }
    }

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

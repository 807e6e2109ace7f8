//! A deliberately broken upstream registry for fault injection.
//!
//! HTTPS on 127.0.0.1. `GET /v2/` answers 200; a blob `GET` answers 200 with
//! `Content-Length: N` and the right `Docker-Content-Digest`, sends N/2 bytes and
//! closes the connection (a `HEAD` gets the honest headers). Everything else is 404.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

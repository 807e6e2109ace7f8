//! An upstream that keeps its blobs elsewhere, like docker.io and registries on object
//! storage: a blob `GET` answers `307` to a second listener (the "CDN", another port with
//! the same CA), which serves the bytes. The CDN records whether it saw an
//! `Authorization` header: a registry token must never reach it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::ca::{Ca, LOOPBACK_NAMES};
use super::fault::read_head;
use super::image::{sha256_digest, XorShift};
use super::rt::{server_tls, Background};

pub struct RedirectingUpstream {
    registry: SocketAddr,
    cdn: SocketAddr,
    ca: Arc<Ca>,
    digest: String,
    blob: Arc<Vec<u8>>,
    cdn_requests: Arc<AtomicUsize>,
    cdn_saw_authorization: Arc<AtomicBool>,
    _runtime: Background,
}

impl RedirectingUpstream {
    pub fn start(size: usize) -> RedirectingUpstream {
        let ca = Ca::new("redirect");
        let leaf = ca.issue(&LOOPBACK_NAMES);
        let tls = tokio_rustls::TlsAcceptor::from(server_tls(&leaf.cert_pem, &leaf.key_pem));
        let mut blob = vec![0u8; size];
        XorShift::fresh().fill(&mut blob);
        let digest = sha256_digest(&blob);
        let blob = Arc::new(blob);
        let runtime = Background::new("redirecting-upstream");
        let bind = || {
            runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind")
        };
        let (registry_listener, cdn_listener) = (bind(), bind());
        let registry = registry_listener.local_addr().expect("address");
        let cdn = cdn_listener.local_addr().expect("address");
        let cdn_requests = Arc::new(AtomicUsize::new(0));
        let cdn_saw_authorization = Arc::new(AtomicBool::new(false));

        let registry_tls = tls.clone();
        runtime.handle().spawn(async move {
            while let Ok((tcp, _)) = registry_listener.accept().await {
                let tls = registry_tls.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = tls.accept(tcp).await else { return };
                    let Some(head) = read_head(&mut stream).await else { return };
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let common = "Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\nContent-Length: 0\r\n";
                    let answer = match path.split_once("/blobs/") {
                        Some((_, digest)) => format!(
                            "HTTP/1.1 307 Temporary Redirect\r\n{common}Location: https://{cdn}/cdn/{digest}?X-Signature=secret\r\n\r\n"
                        ),
                        None if path.starts_with("/v2/") => format!("HTTP/1.1 200 OK\r\n{common}\r\n"),
                        None => format!("HTTP/1.1 404 Not Found\r\n{common}\r\n"),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        let (cdn_blob, counter, saw) = (
            blob.clone(),
            cdn_requests.clone(),
            cdn_saw_authorization.clone(),
        );
        runtime.handle().spawn(async move {
            while let Ok((tcp, _)) = cdn_listener.accept().await {
                let (tls, blob, counter, saw) = (tls.clone(), cdn_blob.clone(), counter.clone(), saw.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = tls.accept(tcp).await else { return };
                    let Some(head) = read_head(&mut stream).await else { return };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if head.to_ascii_lowercase().contains("\r\nauthorization:") {
                        saw.store(true, Ordering::Relaxed);
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                        blob.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.write_all(&blob).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RedirectingUpstream {
            registry,
            cdn,
            ca,
            digest,
            blob,
            cdn_requests,
            cdn_saw_authorization,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.registry)
    }

    /// `127.0.0.1:<port>` of the CDN, as a `redirect_hosts` entry.
    pub fn cdn_host(&self) -> String {
        self.cdn.to_string()
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

    pub fn cdn_requests(&self) -> usize {
        self.cdn_requests.load(Ordering::Relaxed)
    }

    pub fn cdn_saw_authorization(&self) -> bool {
        self.cdn_saw_authorization.load(Ordering::Relaxed)
    }
}

//! portcullis's pipeline in process: a [`Proxy`] built the way `crate::run` builds it (config
//! and policy from TOML text, metrics on a fresh registry, audit to a temporary file), and a
//! client that talks to it through hyper over an in-memory duplex pipe, HTTP/1.1 or HTTP/2,
//! so every request goes through hyper's real server path into [`Proxy::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{Inbound, Proxy, Stores};
use crate::policy::live::{LivePolicy, Sources};
use crate::store::audit::Audit;
use crate::store::blobs::BlobCache;

/// The client address every test request comes from.
pub const PEER: &str = "127.0.0.1:40000";

pub struct Portcullis {
    proxy: Arc<Proxy>,
    registry: prometheus::Registry,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl Portcullis {
    /// `config` is a portcullis configuration without `state_dir`; `policy` a policy file.
    pub fn new(config: &str, policy: &str) -> Portcullis {
        Portcullis::with_files(config, policy, &[])
    }

    /// [`Portcullis::new`] with more policy files beside `policy`, loaded with it by name
    /// (`policy.json` is a containers-policy.json, `*.yaml` a registries.d file).
    pub fn with_files(config: &str, policy: &str, files: &[(&str, &str)]) -> Portcullis {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "state_dir = {:?}\n{config}",
            dir.path().display().to_string()
        );
        let config = Config::parse_str(&text).expect("config");
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy).expect("write policy");
        let audit = dir.path().join("audit.jsonl");
        let registry = prometheus::Registry::new();
        let metrics =
            Arc::new(Metrics::new(&registry, config.registries.keys().cloned()).expect("metrics"));
        let mut paths = vec![policy_path];
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a policy file");
            paths.push(path);
        }
        let sources = Sources { paths };
        let live = Arc::new(LivePolicy::new(sources, metrics.clone()).expect("policy"));
        let blobs = (config.cache.blobs_max_bytes > 0).then(|| {
            Arc::new(
                BlobCache::open(
                    &config.cache.blobs_dir,
                    config.cache.blobs_max_bytes,
                    metrics.blob_cache_counters(),
                )
                .expect("blob cache"),
            )
        });
        let stores = Stores {
            audit: Arc::new(Audit::open(Some(&audit)).expect("audit")),
            provenance: None,
            stage: None,
            blobs,
        };
        let proxy = Proxy::new(&config, metrics, live, stores).expect("proxy");
        Portcullis {
            proxy: Arc::new(proxy),
            registry,
            audit,
            _dir: dir,
        }
    }

    /// The `state_dir` (the blob cache is its `blobs/`).
    pub fn state_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A client on a fresh connection to the registry endpoint.
    pub async fn client(&self, version: Version) -> Client {
        self.client_on(version, Inbound::endpoint()).await
    }

    /// A client on a fresh connection to the listener `inbound` describes.
    pub async fn client_on(&self, version: Version, inbound: Inbound) -> Client {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let proxy = self.proxy.clone();
        let peer: SocketAddr = PEER.parse().expect("peer");
        let service = hyper::service::service_fn(move |req| {
            let (proxy, inbound) = (proxy.clone(), inbound.clone());
            async move { Ok::<_, Infallible>(proxy.handle(req, peer, inbound).await) }
        });
        let server_io = TokioIo::new(server_io);
        let client_io = TokioIo::new(client_io);
        let sender = if version == Version::HTTP_2 {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(server_io, service)
                    .await;
            });
            let (sender, conn) = http2::handshake(TokioExecutor::new(), client_io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(server_io, service)
                    .await;
            });
            let (sender, conn) = http1::handshake(client_io).await.expect("h1 handshake");
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Client { sender }
    }

    /// The value of a counter or gauge (summed over the series that carry all of `labels`). A name
    /// that is not registered fails the test rather than reading as zero.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = self.registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no series of {name}: misspelt, or never counted"));
        family
            .get_metric()
            .iter()
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| match family.get_field_type() {
                prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                _ => m.get_counter().get_value(),
            })
            .sum()
    }

    /// The audit file, one JSON record a line.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub struct Client {
    sender: Sender,
}

/// A response as the client got it; `body` is `Err` when the stream failed before its end.
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
    /// Body bytes that arrived, whether or not the body ended well.
    pub received: usize,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first OCI error code and its message, from an error body.
    pub fn oci_error(&self) -> (String, String) {
        let body = self.body.as_ref().expect("a whole error body");
        let value: serde_json::Value = serde_json::from_slice(body).expect("an OCI error body");
        let first = &value["errors"][0];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        (text(&first["code"]), text(&first["message"]))
    }
}

impl Client {
    pub async fn send(&mut self, method: Method, path: &str, body: &[u8]) -> Answer {
        self.send_with(method, path, &HeaderMap::new(), body).await
    }

    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Answer {
        let mut req = Request::builder().method(method);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = match &self.sender {
            // HTTP/2 carries the authority in the request; HTTP/1.1 in `Host`.
            Sender::H2(_) => req.uri(format!("https://portcullis.test{path}")),
            Sender::H1(_) => req.uri(path).header("host", "portcullis.test"),
        };
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.expect("connection ready");
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.expect("connection ready");
                s.send_request(req).await
            }
        }
        .expect("a response");
        let (parts, mut body) = resp.into_parts();
        let mut received = Vec::new();
        let body = loop {
            match body.frame().await {
                None => break Ok(Bytes::from(received.clone())),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        received.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => break Err(e.to_string()),
            }
        };
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            received: received.len(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, b"").await
    }

    pub async fn head(&mut self, path: &str) -> Answer {
        self.send(Method::HEAD, path, b"").await
    }
}

//! A fake upstream registry for the in-process pipeline tests: a hyper server on
//! `127.0.0.1:0`, run as a tokio task, that records every request it gets and answers the
//! few distribution-API requests a test gave it content for (`/v2/`, manifests by tag and by
//! digest, blobs, tag lists); everything else is a `404` with an OCI error body.
//!
//! A request is recorded before it is answered, so by the time portcullis's client has the
//! answer the log holds the request: tests read it without waiting.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One request as the fake upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    /// How many body bytes arrived with it.
    pub body_len: usize,
}

#[derive(Clone)]
struct Canned {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Canned {
    /// A `200` with this content type, announcing `digest` (true or not).
    fn ok(content_type: &str, digest: &str, body: &[u8]) -> Canned {
        Canned {
            status: StatusCode::OK,
            headers: vec![
                ("content-type", content_type.to_owned()),
                ("docker-content-digest", digest.to_owned()),
            ],
            body: Bytes::copy_from_slice(body),
        }
    }
}

/// What the fake upstream serves, by request path.
#[derive(Clone, Default)]
pub struct Content {
    by_path: HashMap<String, Canned>,
}

impl Content {
    /// A manifest, by `tag` and by its digest, with a true `Docker-Content-Digest`.
    pub fn manifest(self, repository: &str, tag: &str, body: &[u8]) -> Content {
        self.manifest_typed(repository, tag, MANIFEST_TYPE, body)
    }

    /// [`Content::manifest`] served with `media_type` (an index, say).
    pub fn manifest_typed(
        mut self,
        repository: &str,
        tag: &str,
        media_type: &str,
        body: &[u8],
    ) -> Content {
        let digest = digest(body);
        let canned = Canned::ok(media_type, &digest, body);
        for reference in [tag, &digest] {
            let path = format!("/v2/{repository}/manifests/{reference}");
            self.by_path.insert(path, canned.clone());
        }
        self
    }

    /// A manifest at `/manifests/<digest>` whose bytes are not that digest's (a corrupt or
    /// malicious registry), announced with the digest asked for.
    pub fn lying_manifest(mut self, repository: &str, digest: &str, body: &[u8]) -> Content {
        let canned = Canned::ok(MANIFEST_TYPE, digest, body);
        let path = format!("/v2/{repository}/manifests/{digest}");
        self.by_path.insert(path, canned);
        self
    }

    /// A manifest at `/manifests/<tag>` announced with a `Docker-Content-Digest` that is not
    /// its bytes' digest.
    pub fn lying_tag(mut self, repository: &str, tag: &str, digest: &str, body: &[u8]) -> Content {
        let canned = Canned::ok(MANIFEST_TYPE, digest, body);
        let path = format!("/v2/{repository}/manifests/{tag}");
        self.by_path.insert(path, canned);
        self
    }

    /// A blob at `/blobs/<digest>`, serving `body` whether or not it is that digest's.
    pub fn blob(mut self, repository: &str, digest: &str, body: &[u8]) -> Content {
        let canned = Canned::ok("application/octet-stream", digest, body);
        self.by_path
            .insert(format!("/v2/{repository}/blobs/{digest}"), canned);
        self
    }

    /// Every read of `path` fails with `status` (an outage).
    pub fn failing(mut self, path: &str, status: StatusCode) -> Content {
        let canned = Canned {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: Bytes::from_static(br#"{"errors":[{"code":"UNAVAILABLE","message":"down"}]}"#),
        };
        self.by_path.insert(path.to_owned(), canned);
        self
    }

    /// Serve plain HTTP.
    pub async fn start(self) -> Fake {
        self.serve(None).await
    }

    /// Serve HTTPS with a certificate for `127.0.0.1` from the local CA in `ca_dir`
    /// (created there if missing, as portcullis creates its own).
    pub async fn start_tls(self, ca_dir: &std::path::Path) -> Fake {
        let (ca, _) = crate::tls::LocalCa::load_or_create(ca_dir).expect("test CA");
        let names = ["127.0.0.1".to_owned()];
        let leaf = ca
            .issue(&names, std::time::Duration::from_secs(3600))
            .expect("leaf certificate");
        let config = crate::tls::server_config(leaf.chain, leaf.key).expect("tls");
        let mut fake = self
            .serve(Some(tokio_rustls::TlsAcceptor::from(config)))
            .await;
        fake.ca = Some(ca.cert_path().to_owned());
        fake
    }

    async fn serve(self, tls: Option<tokio_rustls::TlsAcceptor>) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake upstream");
        let addr = listener.local_addr().expect("fake upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(State {
            content: self,
            endpoint: format!("{scheme}://{addr}"),
            seen: seen.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (state, tls) = (state.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        // A failed handshake never becomes a request: nothing is recorded.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                state.connection(stream).await;
                            }
                        }
                        None => state.connection(tcp).await,
                    }
                });
            }
        });
        Fake {
            addr,
            ca: None,
            seen,
            task,
        }
    }
}

struct State {
    content: Content,
    /// `http(s)://127.0.0.1:<port>`, for absolute locations.
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl State {
    /// distribution's upload protocol, reduced: `POST` opens session `u1` (an absolute
    /// `Location`, as distribution sends), `PATCH` takes a chunk, `PUT ?digest=` closes it.
    /// Each `Location` carries a `_state` that names the step, as distribution's signed
    /// state does, so a test sees which location a client sent back.
    fn upload(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body_len: usize,
    ) -> Option<Response<Full<Bytes>>> {
        let (repository, session) = path.strip_prefix("/v2/")?.split_once("/blobs/uploads/")?;
        let session_path = format!("/v2/{repository}/blobs/uploads/u1");
        let (status, location, range) = match (method, session) {
            (&Method::POST, "") => (
                StatusCode::ACCEPTED,
                format!("{}{session_path}?_state=post", self.endpoint),
                "0-0".to_owned(),
            ),
            (&Method::PATCH, "u1") => (
                StatusCode::ACCEPTED,
                format!("{session_path}?_state=patch{body_len}"),
                format!("0-{}", body_len.saturating_sub(1)),
            ),
            (&Method::PUT, "u1") => {
                let digest = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "digest")?
                    .1
                    .into_owned();
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::CREATED;
                let location = format!("/v2/{repository}/blobs/{digest}");
                let headers = resp.headers_mut();
                headers.insert(header::LOCATION, location.parse().ok()?);
                headers.insert("docker-content-digest", digest.parse().ok()?);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                return Some(resp);
            }
            _ => return None,
        };
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::LOCATION, location.parse().ok()?);
        headers.insert(header::RANGE, range.parse().ok()?);
        headers.insert("docker-upload-uuid", HeaderValue::from_static("u1"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        Some(resp)
    }

    async fn connection<I>(self: Arc<Self>, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let state = self.clone();
            async move { Ok::<_, Infallible>(state.answer(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body_len = body.collect().await.map_or(0, |b| b.to_bytes().len());
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        self.seen.lock().expect("log").push(Seen {
            method: parts.method.clone(),
            target,
            headers: parts.headers.clone(),
            body_len,
        });
        let path = parts.uri.path();
        let reading = parts.method == Method::GET || parts.method == Method::HEAD;
        if let Some(resp) = self.upload(&parts.method, path, parts.uri.query(), body_len) {
            return resp;
        }
        let canned = match path {
            "/v2/" if reading => Some(Canned {
                status: StatusCode::OK,
                headers: vec![("content-type", "application/json".to_owned())],
                body: Bytes::from_static(b"{}"),
            }),
            _ if reading => self.content.by_path.get(path).cloned(),
            _ => None,
        };
        let Some(canned) = canned else {
            let code = if path.contains("/manifests/") {
                "MANIFEST_UNKNOWN"
            } else if path.contains("/blobs/") {
                "BLOB_UNKNOWN"
            } else {
                "NAME_UNKNOWN"
            };
            let body = format!(r#"{{"errors":[{{"code":"{code}","message":"not here"}}]}}"#);
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return resp;
        };
        let len = canned.body.len();
        let body = if parts.method == Method::HEAD {
            Bytes::new()
        } else {
            canned.body
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = canned.status;
        for (name, value) in canned.headers {
            let value = HeaderValue::from_str(&value).expect("header value");
            resp.headers_mut().insert(name, value);
        }
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        resp
    }
}

/// A running fake upstream; dropping it stops accepting connections.
pub struct Fake {
    pub addr: SocketAddr,
    /// For HTTPS: the certificate of the CA that signed its certificate.
    pub ca: Option<std::path::PathBuf>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    /// `http(s)://127.0.0.1:<port>`, for a `[[registry]] endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request received, in order, the `/v2/` pings included.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    /// The requests received other than the `/v2/` ping (the auth challenge probe).
    pub fn asked(&self) -> Vec<(Method, String)> {
        self.seen()
            .into_iter()
            .filter(|s| s.target != "/v2/")
            .map(|s| (s.method, s.target))
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! The admin listener (plain HTTP, separate from client traffic): `/metrics`, `/healthz`,
//! `/readyz`. Optionally protected by a bearer token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{full, ProxyBody};

pub struct Admin {
    pub registry: prometheus::Registry,
    /// Set once every listener is bound and the configuration is loaded.
    pub ready: AtomicBool,
    /// `Authorization: Bearer <token>` required when set.
    pub token: Option<String>,
    /// The policy in force, for `/policy`.
    pub policy: Option<Arc<crate::policy::live::LivePolicy>>,
}

impl Admin {
    fn respond(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if let Some(token) = &self.token {
            let expected = format!("Bearer {token}");
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            // Health probes stay open: kubelet cannot send a token.
            let protected = matches!(req.uri().path(), "/metrics" | "/policy");
            if given != Some(expected.as_bytes()) && protected {
                return text(StatusCode::UNAUTHORIZED, "bearer token required\n");
            }
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/metrics" => {
                let mut buf = Vec::new();
                let encoder = TextEncoder::new();
                if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("encoding metrics: {e}\n"),
                    );
                }
                let mut resp = Response::new(full(Bytes::from(buf)));
                if let Ok(ct) = HeaderValue::from_str(encoder.format_type()) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                resp
            }
            "/policy" => match &self.policy {
                Some(live) => {
                    let body = serde_json::to_vec_pretty(&live.status()).unwrap_or_default();
                    let mut resp = Response::new(full(Bytes::from(body)));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                None => text(StatusCode::NOT_FOUND, "no policy\n"),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serve the admin listener through the same accept-and-serve path (slots, header and idle
/// limits, drain) as the client listeners.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    limits: crate::config::Limits,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(crate::listen::builder(&limits));
    crate::listen::serve(
        listener,
        "admin",
        &limits,
        &metrics,
        shutdown,
        move |tcp, conn| {
            let (admin, builder) = (admin.clone(), builder.clone());
            async move {
                crate::listen::serve_http(&builder, tcp, &conn, move |req| {
                    let response = admin.respond(&req);
                    std::future::ready(response)
                })
                .await;
            }
        },
    )
    .await;
}

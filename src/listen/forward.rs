//! The forward proxy: what dockerd talks to when it runs with `HTTPS_PROXY`.
//!
//! `CONNECT` to a configured registry is intercepted: portcullis answers the TLS handshake
//! with a certificate for that host, issued on the fly by its local CA, and runs the requests
//! inside through the same pipeline as the registry endpoint, with the registry known from
//! the host. Hosts listed in `tunnel_hosts` are spliced through untouched. Everything else is
//! refused: portcullis is not an open proxy. Plain-HTTP absolute-URI requests (what dockerd
//! sends to registries it treats as insecure) are served for registries configured insecure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::body::{full, ProxyBody};
use crate::config::{Config, Credentials};
use crate::listen::{Conn, Http};
use crate::pipeline::Inbound;
use crate::reference::normalize_registry;
use crate::tls::{self, LocalCa, TlsError};
use crate::upstream::auth::host_allowed;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with a `CONNECT host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Terminate TLS and serve as this registry.
    Intercept(String),
    Tunnel,
    Refuse,
}

pub struct Forward {
    http: Http,
    ca: Arc<LocalCa>,
    leaves: moka::sync::Cache<String, Arc<rustls::ServerConfig>>,
    leaf_validity: Duration,
    registries: HashSet<String>,
    /// Registries that may be reached through plain-HTTP absolute URIs.
    insecure: HashSet<String>,
    tunnel_hosts: Vec<String>,
    proxy_auth: Option<Vec<u8>>,
}

impl Forward {
    pub fn new(config: &Config, http: Http, ca: Arc<LocalCa>) -> Forward {
        let leaf_validity = config.forward.leaf_validity;
        Forward {
            http,
            ca,
            leaves: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(leaf_validity / 2)
                .build(),
            leaf_validity,
            registries: config.registries.keys().cloned().collect(),
            insecure: config
                .registries
                .values()
                .filter(|r| r.insecure_skip_verify || r.endpoint.scheme() == "http")
                .map(|r| r.host.clone())
                .collect(),
            tunnel_hosts: config.forward.tunnel_hosts.clone(),
            proxy_auth: config.forward.proxy_auth.as_ref().map(expected_proxy_auth),
        }
    }

    /// The registry a `host[:port]` names: the port is part of the name unless it is 443.
    fn registry_for(&self, host: &str, port: u16, default_port: u16) -> Option<String> {
        let name = if port == default_port {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let name = normalize_registry(&name);
        self.registries.contains(&name).then_some(name)
    }

    pub fn verdict(&self, host: &str, port: u16) -> Verdict {
        if let Some(registry) = self.registry_for(host, port, 443) {
            return Verdict::Intercept(registry);
        }
        if host_allowed(&self.tunnel_hosts, host, Some(port)) {
            return Verdict::Tunnel;
        }
        Verdict::Refuse
    }

    /// A TLS config presenting a certificate for `host`, issued once and cached.
    fn leaf(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        if let Some(config) = self.leaves.get(host) {
            return Ok(config);
        }
        let leaf = self.ca.issue(&[host.to_owned()], self.leaf_validity)?;
        let config = tls::server_config(leaf.chain, leaf.key)?;
        self.http.metrics.certificates_issued.inc();
        info!(host, "issued interception certificate");
        self.leaves.insert(host.to_owned(), config.clone());
        Ok(config)
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        match &self.proxy_auth {
            None => true,
            Some(expected) => req
                .headers()
                .get(header::PROXY_AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_slice()),
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Conn,
    ) -> Response<ProxyBody> {
        let peer = conn.peer;
        if !self.authorized(&req) {
            self.count("unauthorized");
            let mut resp = plain(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy authentication required\n",
            );
            resp.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="portcullis""#),
            );
            return resp;
        }
        let Some(authority) = req.uri().authority().cloned() else {
            return plain(
                StatusCode::BAD_REQUEST,
                "portcullis is a proxy: use CONNECT or an absolute URI\n",
            );
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if req.method() == Method::CONNECT {
            let port = authority.port_u16().unwrap_or(443);
            let verdict = self.verdict(&host, port);
            info!(%peer, host, port, ?verdict, "CONNECT");
            if verdict == Verdict::Refuse {
                self.count("refused");
                warn!(%peer, host, port, "refused CONNECT to a host that is not a configured registry");
                return plain(
                    StatusCode::FORBIDDEN,
                    &format!("portcullis: {host}:{port} is not a configured registry\n"),
                );
            }
            // The tunnel or intercepted session keeps this connection's slot.
            let Some(session) = conn.take() else {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "portcullis: one CONNECT per connection\n",
                );
            };
            match verdict {
                Verdict::Refuse => {}
                Verdict::Tunnel => {
                    self.count("tunnel");
                    let target = format!("{host}:{port}");
                    tokio::spawn(
                        async move { tunnel(hyper::upgrade::on(req), &target, session).await },
                    );
                }
                Verdict::Intercept(registry) => {
                    self.count("intercept");
                    let tls = match self.leaf(&host) {
                        Ok(tls) => tls,
                        Err(e) => {
                            warn!(host, error = %e, "cannot issue an interception certificate");
                            return plain(
                                StatusCode::BAD_GATEWAY,
                                "portcullis: cannot issue a certificate\n",
                            );
                        }
                    };
                    let this = self.clone();
                    tokio::spawn(async move {
                        let Ok(upgraded) = hyper::upgrade::on(req).await else {
                            return;
                        };
                        let inbound = Inbound {
                            listener: "proxy",
                            registry: Some(registry.into()),
                        };
                        this.http
                            .serve_tls(
                                TokioIo::new(upgraded),
                                TlsAcceptor::from(tls),
                                session,
                                inbound,
                            )
                            .await;
                    });
                }
            }
            return Response::new(crate::body::empty());
        }
        // An absolute-URI request: plain HTTP to a registry docker treats as insecure.
        let port = authority.port_u16().unwrap_or(80);
        match self
            .registry_for(&host, port, 80)
            .filter(|r| self.insecure.contains(r))
        {
            Some(registry) => {
                self.count("plain_http");
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".to_owned());
                if let Ok(uri) = path.parse::<Uri>() {
                    *req.uri_mut() = uri;
                }
                let inbound = Inbound {
                    listener: "proxy",
                    registry: Some(registry.into()),
                };
                self.http.proxy.clone().handle(req, peer, inbound).await
            }
            None => {
                self.count("refused");
                plain(
                    StatusCode::FORBIDDEN,
                    &format!("portcullis: plain HTTP to {host}:{port} is not allowed\n"),
                )
            }
        }
    }

    fn count(&self, result: &str) {
        self.http
            .metrics
            .proxy_connects
            .with_label_values(&[result])
            .inc();
    }
}

fn expected_proxy_auth(c: &Credentials) -> Vec<u8> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    format!("Basic {encoded}").into_bytes()
}

/// Splice a CONNECT tunnel to `target`, closed when neither side has sent anything for
/// `idle_timeout`.
async fn tunnel(upgrade: hyper::upgrade::OnUpgrade, target: &str, conn: Conn) {
    let _busy = conn.busy();
    let peer = conn.peer;
    let Ok(upgraded) = upgrade.await else { return };
    let mut client = conn.track(TokioIo::new(upgraded));
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => {
            let mut server = conn.track(server);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                    if let Err(e) = copied {
                        debug!(%peer, target, error = %e, "tunnel closed");
                    }
                }
                _ = conn.idle() => debug!(%peer, target, "idle tunnel closed"),
            }
        }
        Ok(Err(e)) => warn!(%peer, target, error = %e, "tunnel connect failed"),
        Err(_) => warn!(%peer, target, "tunnel connect timed out"),
    }
}

fn plain(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accept forward-proxy connections (plain HTTP/1.1, CONNECT and absolute URIs) through the
/// same accept-and-serve path, slots and limits as every other listener.
pub async fn serve(listener: TcpListener, forward: Arc<Forward>, shutdown: watch::Receiver<bool>) {
    let limits = forward.http.limits.clone();
    let metrics = forward.http.metrics.clone();
    let builder = Arc::new(crate::listen::builder_http1(&limits));
    crate::listen::serve(
        listener,
        "proxy",
        &limits,
        &metrics,
        shutdown,
        move |tcp, conn| {
            let (forward, builder) = (forward.clone(), builder.clone());
            async move {
                let handler_conn = conn.clone();
                crate::listen::serve_http1_upgrades(&builder, tcp, &conn, move |req| {
                    forward.clone().handle(req, handler_conn.clone())
                })
                .await;
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(toml: &str) -> Forward {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::parse_str(toml).expect("config");
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(
            crate::metrics::Metrics::new(&registry, config.registries.keys().cloned())
                .expect("metrics"),
        );
        let live = crate::policy::live::LivePolicy::new(Default::default(), metrics.clone());
        let live = Arc::new(live.expect("embedded policy"));
        let stores = crate::pipeline::Stores::none();
        let proxy =
            crate::pipeline::Proxy::new(&config, metrics.clone(), live, stores).expect("proxy");
        let proxy = Arc::new(proxy);
        let http = Http::new(proxy, metrics, crate::listen::Limits::default());
        let (ca, _) = LocalCa::load_or_create(dir.path()).expect("ca");
        Forward::new(&config, http, Arc::new(ca))
    }

    const CONFIG: &str = r#"
[forward]
tunnel_hosts = ["auth.example.com:443", "portless.example.com"]
[[registry]]
host = "docker.io"
endpoint = "https://127.0.0.1:5001"
[[registry]]
host = "registry.example.com"
endpoint = "https://127.0.0.1:5002"
[[registry]]
host = "insecure.example.com:5000"
endpoint = "http://127.0.0.1:5003"
"#;

    #[test]
    fn connects_are_intercepted_tunnelled_or_refused() {
        let f = forward(CONFIG);
        assert_eq!(
            f.verdict("registry-1.docker.io", 443),
            Verdict::Intercept("docker.io".into())
        );
        assert_eq!(
            f.verdict("index.docker.io", 443),
            Verdict::Intercept("docker.io".into())
        );
        assert_eq!(
            f.verdict("registry.example.com", 443),
            Verdict::Intercept("registry.example.com".into())
        );
        assert_eq!(
            f.verdict("registry.example.com", 8443),
            Verdict::Refuse,
            "another port is another registry"
        );
        assert_eq!(
            f.verdict("insecure.example.com", 5000),
            Verdict::Intercept("insecure.example.com:5000".into())
        );
        assert_eq!(f.verdict("auth.example.com", 443), Verdict::Tunnel);
        assert_eq!(f.verdict("auth.example.com", 5000), Verdict::Refuse);
        assert_eq!(f.verdict("portless.example.com", 443), Verdict::Tunnel);
        assert_eq!(
            f.verdict("portless.example.com", 5000),
            Verdict::Refuse,
            "a tunnel_hosts entry without a port is :443 only"
        );
        assert_eq!(f.verdict("evil.example.net", 443), Verdict::Refuse);
        assert_eq!(
            f.verdict("127.0.0.1", 5001),
            Verdict::Refuse,
            "endpoints are not reachable by address"
        );
    }

    #[tokio::test]
    async fn interception_certificates_are_issued_once_per_host() {
        let f = forward(CONFIG);
        let a = f.leaf("registry-1.docker.io").expect("leaf");
        let b = f.leaf("registry-1.docker.io").expect("leaf");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(f.http.metrics.certificates_issued.get(), 1);
    }

    #[test]
    fn plain_http_only_for_insecure_registries() {
        let f = forward(CONFIG);
        assert!(f
            .registry_for("insecure.example.com", 5000, 80)
            .is_some_and(|r| f.insecure.contains(&r)));
        assert!(f
            .registry_for("registry.example.com", 80, 80)
            .is_some_and(|r| !f.insecure.contains(&r)));
    }
}

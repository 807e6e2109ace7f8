//! Upstream registries: one pooled HTTPS client per configured registry, authentication,
//! timeouts and blob redirects.
//!
//! Only registries in the configuration get an [`Upstream`]; there is no way to build a
//! request to any other host, which is what keeps image names from turning portcullis into
//! an open proxy.

pub mod auth;
pub mod location;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{empty, ProxyBody};
use crate::config::{Config, RegistryConfig};
use crate::metrics::Metrics;
use auth::{host_allowed, Challenge, Identity, Token};

const MAX_REDIRECTS: usize = 5;
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// How long a registry's challenge is trusted before it is asked again.
const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Repositories whose own challenge is remembered, per registry.
const MAX_SCOPED_CHALLENGES: u64 = 10_000;

type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("registry {registry} is unreachable: {message}")]
    Connect { registry: String, message: String },
    #[error("registry {registry} did not answer within {after:?}")]
    Timeout { registry: String, after: Duration },
    #[error("registry {registry} failed: {message}")]
    Protocol { registry: String, message: String },
    #[error("registry {registry} answered {status}")]
    Status {
        registry: String,
        status: StatusCode,
    },
    #[error("registry {registry} refused the credentials ({status} from its token service)")]
    CredentialsRefused {
        registry: String,
        status: StatusCode,
        client_credentials: bool,
    },
    #[error("registry {registry} asked for a token from {realm}, which is not an allowed token host for it")]
    RealmNotAllowed { registry: String, realm: String },
    #[error("registry {registry} redirected to {location}, which is not an allowed host for it")]
    RedirectNotAllowed { registry: String, location: String },
    #[error("registry {registry} redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects { registry: String },
    #[error("registry {registry}: TLS configuration: {message}")]
    Tls { registry: String, message: String },
    #[error(
        "registry {registry} answered with a {header} that portcullis does not pass on: {location}"
    )]
    ForeignLocation {
        registry: String,
        header: &'static str,
        location: location::ForeignLocation,
    },
    /// A content-addressed GET answered with a 2xx whose body cannot be verified.
    #[error("registry {registry} answered {status} to {request}; only a 200 can be checked against the digest")]
    Unverifiable {
        registry: String,
        status: StatusCode,
        request: &'static str,
    },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::CredentialsRefused {
                client_credentials: true,
                ..
            } => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Every configured registry, each with its own client and auth state.
pub struct Upstreams {
    by_host: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Upstreams, UpstreamError> {
        let mut by_host = HashMap::new();
        for (host, registry) in &config.registries {
            let upstream = Upstream::new(registry.clone(), metrics.clone())?;
            by_host.insert(host.clone(), Arc::new(upstream));
        }
        Ok(Upstreams { by_host })
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.by_host.values()
    }

    /// The upstream for a configured registry host; `None` means "never contact it".
    pub fn get(&self, host: &str) -> Option<&Arc<Upstream>> {
        self.by_host.get(host)
    }
}

/// A request to send upstream. Headers are the client's end-to-end headers, unchanged
/// (repeated lines such as docker's six `Accept` lines included).
pub struct Outgoing {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: ProxyBody,
    /// A request without a body can be sent again after an authentication challenge.
    pub replayable: bool,
    pub scopes: Vec<String>,
    pub identity: Identity,
}

pub struct Upstream {
    pub config: RegistryConfig,
    client: HttpClient,
    metrics: Arc<Metrics>,
    /// What `/v2/` asks for: the challenge for a repository that has not sent its own.
    challenge: moka::future::Cache<(), Challenge>,
    /// What a repository's own 401 asked for, by repository scope. Only challenges
    /// portcullis can answer are remembered, so a bad one fails its own repository's
    /// requests and nothing else.
    scoped_challenges: moka::future::Cache<String, Challenge>,
    tokens: moka::future::Cache<(String, String), Token>,
}

impl Upstream {
    fn new(config: RegistryConfig, metrics: Arc<Metrics>) -> Result<Upstream, UpstreamError> {
        let tls = crate::tls::client_config(config.ca_file.as_deref(), config.insecure_skip_verify)
            .map_err(|e| UpstreamError::Tls {
                registry: config.host.clone(),
                message: e.to_string(),
            })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            // As many idle connections as clients may want at once: a pool smaller than the
            // client's concurrency reopens TLS connections to the registry under load.
            .pool_max_idle_per_host(config.max_idle_connections)
            .build(connector);
        Ok(Upstream {
            config,
            client,
            metrics,
            challenge: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(CHALLENGE_TTL)
                .build(),
            scoped_challenges: moka::future::Cache::builder()
                .max_capacity(MAX_SCOPED_CHALLENGES)
                .time_to_live(CHALLENGE_TTL)
                .build(),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    pub fn host(&self) -> &str {
        &self.config.host
    }

    /// Who to act as for a client: configured credentials first, then the client's own
    /// Basic credentials where the configuration allows passing them through.
    pub fn identity_for(&self, client_authorization: Option<&HeaderValue>) -> Identity {
        if let Some(c) = &self.config.credentials {
            return Identity::Configured {
                username: c.username.clone(),
                password: c.password.clone(),
            };
        }
        if self.config.pass_client_credentials {
            if let Some(id) = client_authorization.and_then(Identity::from_client_basic) {
                return id;
            }
        }
        Identity::Anonymous
    }

    pub fn protocol_error(&self, message: String) -> UpstreamError {
        UpstreamError::Protocol {
            registry: self.config.host.clone(),
            message,
        }
    }

    /// GET a URL that comes from this registry's configuration (its search endpoint), with
    /// no credentials: only configuration, never an upstream answer, chooses such a URL.
    pub async fn get_configured_url(&self, url: &str) -> Result<Response<Incoming>, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| self.protocol_error(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        self.request(Method::GET, uri, headers, empty(), None).await
    }

    /// Would a request for this client be made as an identity every client shares? Only
    /// then may its answer be cached for other clients.
    pub fn identity_is_shared(&self, client_authorization: Option<&HeaderValue>) -> bool {
        !matches!(
            self.identity_for(client_authorization),
            Identity::Client { .. }
        )
    }

    /// Does this registry want credentials that a client could supply (and has not)?
    pub fn wants_client_credentials(&self) -> bool {
        self.config.pass_client_credentials && self.config.credentials.is_none()
    }

    fn url(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let base = self.config.endpoint.as_str().trim_end_matches('/');
        format!("{base}{path_and_query}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Protocol {
                registry: self.config.host.clone(),
                message: e.to_string(),
            })
    }

    /// Send a request, authenticating as needed and following blob redirects.
    pub async fn send(&self, out: Outgoing) -> Result<Response<Incoming>, UpstreamError> {
        let scope = scope_key(&out.scopes);
        let challenge = match self.scoped_challenges.get(&scope).await {
            Some(c) => c,
            None => self.challenge().await?,
        };
        let authorization = self
            .authorization(&challenge, &out.identity, &out.scopes, false)
            .await?;
        let uri = self.url(&out.path_and_query)?;
        let retry = out
            .replayable
            .then(|| (out.method.clone(), out.headers.clone()));
        let resp = self
            .request(
                out.method.clone(),
                uri.clone(),
                out.headers,
                out.body,
                authorization,
            )
            .await?;

        let resp = match retry {
            Some((method, headers)) if resp.status() == StatusCode::UNAUTHORIZED => {
                // The cached token may have expired or lack the scope this request needs:
                // learn from this challenge and try once more.
                let fresh = Challenge::from_headers(resp.headers());
                match fresh {
                    Some(ch) if ch != Challenge::Basic || out.identity != Identity::Anonymous => {
                        let scopes = match &ch {
                            Challenge::Bearer { scope: Some(s), .. } => {
                                merge_scopes(&out.scopes, s)
                            }
                            _ => out.scopes.clone(),
                        };
                        self.answerable(&ch)?;
                        self.scoped_challenges.insert(scope, ch.clone()).await;
                        let auth = self
                            .authorization(&ch, &out.identity, &scopes, true)
                            .await?;
                        if auth.is_none() {
                            resp
                        } else {
                            self.request(method, uri.clone(), headers, empty(), auth)
                                .await?
                        }
                    }
                    _ => resp,
                }
            }
            _ => resp,
        };
        if out.method == Method::GET || out.method == Method::HEAD {
            return self.follow_redirects(out.method, uri, resp).await;
        }
        Ok(resp)
    }

    async fn request(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: ProxyBody,
        authorization: Option<HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // The answer is timed from the end of the request body: a large upload over a slow
        // link takes as long as it takes (a stalled one is cut by the body's idle timeout).
        let streaming = !http_body::Body::is_end_stream(&body);
        let (body, sent) = crate::body::until_sent(body);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(crate::body::boxed(body))
            .map_err(|e| UpstreamError::Protocol {
                registry: self.config.host.clone(),
                message: e.to_string(),
            })?;
        *req.headers_mut() = headers;
        if let Some(a) = authorization {
            req.headers_mut().insert(header::AUTHORIZATION, a);
        }
        let after = self.config.response_timeout;
        let started = std::time::Instant::now();
        let host = self.config.host.as_str();
        let answer = self.client.request(req);
        let timed = async {
            if !streaming {
                return tokio::time::timeout(after, answer).await;
            }
            tokio::pin!(answer);
            tokio::select! {
                biased;
                done = &mut answer => Ok(done),
                _ = sent => tokio::time::timeout(after, answer).await,
            }
        };
        let result = match timed.await {
            Err(_) => Err(UpstreamError::Timeout {
                registry: host.to_owned(),
                after,
            }),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect {
                registry: host.to_owned(),
                message: crate::error::chain(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                registry: host.to_owned(),
                message: crate::error::chain(&e),
            }),
            Ok(Ok(resp)) => Ok(resp),
        };
        self.metrics
            .upstream_duration
            .with_label_values(&[host])
            .observe(started.elapsed().as_secs_f64());
        let failure = match &result {
            Err(UpstreamError::Timeout { .. }) => Some("timeout"),
            Err(UpstreamError::Connect { .. }) => Some("connect"),
            Err(_) => Some("protocol"),
            Ok(r) if r.status().is_server_error() => Some("status"),
            Ok(_) => None,
        };
        if let Some(kind) = failure {
            self.metrics
                .upstream_errors
                .with_label_values(&[host, kind])
                .inc();
        }
        result
    }

    /// What `/v2/` of this registry asks for, cached for a while.
    async fn challenge(&self) -> Result<Challenge, UpstreamError> {
        self.challenge
            .try_get_with((), async {
                let uri = self.url("/v2/")?;
                let resp = self
                    .request(Method::GET, uri, HeaderMap::new(), empty(), None)
                    .await?;
                let challenge = match resp.status() {
                    StatusCode::UNAUTHORIZED => {
                        Challenge::from_headers(resp.headers()).unwrap_or(Challenge::Basic)
                    }
                    s if s.is_server_error() => {
                        return Err(UpstreamError::Status {
                            registry: self.config.host.clone(),
                            status: s,
                        })
                    }
                    _ => Challenge::None,
                };
                // An error is not cached: a refused challenge is asked again next time.
                self.answerable(&challenge)?;
                Ok(challenge)
            })
            .await
            .map_err(|e: Arc<UpstreamError>| (*e).clone())
    }

    async fn authorization(
        &self,
        challenge: &Challenge,
        identity: &Identity,
        scopes: &[String],
        refresh: bool,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        match challenge {
            Challenge::None => Ok(None),
            Challenge::Basic => Ok(identity.basic_header()),
            Challenge::Bearer { realm, service, .. } => {
                let key = (
                    identity.cache_key(),
                    format!("{realm} {service:?} {}", scopes.join(" ")),
                );
                if refresh {
                    self.tokens.invalidate(&key).await;
                } else if let Some(t) = self.tokens.get(&key).await.filter(Token::is_fresh) {
                    return Ok(Some(t.value));
                }
                let token = self
                    .fetch_token(realm, service.as_deref(), scopes, identity)
                    .await?;
                let value = token.value.clone();
                self.tokens.insert(key, token).await;
                Ok(Some(value))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        identity: &Identity,
    ) -> Result<Token, UpstreamError> {
        let registry = self.config.host.clone();
        let not_allowed = || UpstreamError::RealmNotAllowed {
            registry: registry.clone(),
            realm: realm.to_owned(),
        };
        let mut url = self.realm_url(realm)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let uri: Uri = url.as_str().parse().map_err(|_| not_allowed())?;
        let resp = self
            .request(
                Method::GET,
                uri,
                HeaderMap::new(),
                empty(),
                identity.basic_header(),
            )
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::CredentialsRefused {
                registry,
                status,
                client_credentials: matches!(identity, Identity::Client { .. }),
            });
        }
        let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| UpstreamError::Protocol {
                registry: registry.clone(),
                message: format!("token response: {e}"),
            })?
            .to_bytes();
        Token::from_response(&body).ok_or(UpstreamError::Protocol {
            registry,
            message: "token service answered without a token".to_owned(),
        })
    }

    /// Can portcullis answer this challenge? Only a Bearer realm can be refused.
    fn answerable(&self, challenge: &Challenge) -> Result<(), UpstreamError> {
        match challenge {
            Challenge::Bearer { realm, .. } => self.realm_url(realm).map(drop),
            Challenge::None | Challenge::Basic => Ok(()),
        }
    }

    /// A token realm, if it is on the registry's origin or an allowed token host.
    fn realm_url(&self, realm: &str) -> Result<url::Url, UpstreamError> {
        let not_allowed = || UpstreamError::RealmNotAllowed {
            registry: self.config.host.clone(),
            realm: realm.to_owned(),
        };
        let url = url::Url::parse(realm).map_err(|_| not_allowed())?;
        let endpoint = &self.config.endpoint;
        let same_origin = url.host_str() == endpoint.host_str()
            && url.port_or_known_default() == endpoint.port_or_known_default();
        let allowed_host = url
            .host_str()
            .is_some_and(|h| host_allowed(&self.config.token_hosts, h, url.port()));
        // Credentials never travel in clear text unless the registry itself is plain HTTP.
        let scheme_ok =
            url.scheme() == "https" || (url.scheme() == "http" && endpoint.scheme() == "http");
        if !(same_origin || allowed_host) || !scheme_ok {
            return Err(not_allowed());
        }
        Ok(url)
    }

    /// Object-storage backed registries (docker.io among them) answer blob GETs with a
    /// redirect to a CDN. portcullis follows it itself so clients only ever talk to
    /// portcullis, and only to hosts the configuration allows for this registry.
    async fn follow_redirects(
        &self,
        method: Method,
        mut current: Uri,
        mut resp: Response<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        for _ in 0..MAX_REDIRECTS {
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let Some(location) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(resp);
            };
            let base =
                url::Url::parse(&current.to_string()).map_err(|e| UpstreamError::Protocol {
                    registry: self.config.host.clone(),
                    message: e.to_string(),
                })?;
            let target = base
                .join(location)
                .map_err(|_| UpstreamError::RedirectNotAllowed {
                    registry: self.config.host.clone(),
                    location: redact_query(location),
                })?;
            let endpoint = &self.config.endpoint;
            let same_origin = target.host_str() == endpoint.host_str()
                && target.port_or_known_default() == endpoint.port_or_known_default();
            let allowed = same_origin
                || (target.scheme() == "https"
                    && target.host_str().is_some_and(|h| {
                        host_allowed(&self.config.redirect_hosts, h, target.port())
                    }));
            if !allowed {
                return Err(UpstreamError::RedirectNotAllowed {
                    registry: self.config.host.clone(),
                    location: redact_query(target.as_str()),
                });
            }
            current = target
                .as_str()
                .parse()
                .map_err(|e: http::uri::InvalidUri| UpstreamError::Protocol {
                    registry: self.config.host.clone(),
                    message: e.to_string(),
                })?;
            // Presigned CDN URLs carry their own authorization; a registry token must not
            // leak to them, so the redirected request carries no Authorization header.
            resp = self
                .request(
                    method.clone(),
                    current.clone(),
                    HeaderMap::new(),
                    empty(),
                    None,
                )
                .await?;
        }
        Err(UpstreamError::TooManyRedirects {
            registry: self.config.host.clone(),
        })
    }
}

/// The repository a request is for (`repository:<name>`, its first scope without the
/// actions): challenges are remembered per repository, whatever the request does there.
fn scope_key(scopes: &[String]) -> String {
    let first = scopes.first().map(String::as_str).unwrap_or_default();
    match first.rsplit_once(':') {
        Some((repository, _actions)) if repository.contains(':') => repository.to_owned(),
        _ => first.to_owned(),
    }
}

/// Add the scopes a challenge asked for to those we computed, without duplicates.
fn merge_scopes(ours: &[String], challenged: &str) -> Vec<String> {
    let mut out = ours.to_vec();
    for s in challenged.split(' ').filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    out
}

/// Presigned URLs carry credentials in their query: never log it.
fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((path, _)) => format!("{path}?<redacted>"),
        None => url.to_owned(),
    }
}

impl UpstreamError {
    pub fn registry(&self) -> &str {
        match self {
            UpstreamError::Connect { registry, .. }
            | UpstreamError::Timeout { registry, .. }
            | UpstreamError::Protocol { registry, .. }
            | UpstreamError::Status { registry, .. }
            | UpstreamError::CredentialsRefused { registry, .. }
            | UpstreamError::RealmNotAllowed { registry, .. }
            | UpstreamError::RedirectNotAllowed { registry, .. }
            | UpstreamError::TooManyRedirects { registry }
            | UpstreamError::Tls { registry, .. }
            | UpstreamError::ForeignLocation { registry, .. }
            | UpstreamError::Unverifiable { registry, .. } => registry,
        }
    }
}

/// Read a small upstream body (a manifest) with a hard limit.
pub async fn read_limited(
    body: Incoming,
    limit: usize,
    registry: &str,
) -> Result<Bytes, UpstreamError> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| UpstreamError::Protocol {
            registry: registry.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_merge_without_duplicates() {
        let ours = vec!["repository:a:pull".to_owned()];
        assert_eq!(
            merge_scopes(&ours, "repository:a:pull repository:b:pull"),
            vec!["repository:a:pull", "repository:b:pull"]
        );
    }

    #[test]
    fn challenges_are_kept_per_repository_whatever_the_actions() {
        let pull = vec!["repository:team/app:pull".to_owned()];
        let push = vec![
            "repository:team/app:pull,push".to_owned(),
            "repository:other:pull".to_owned(),
        ];
        assert_eq!(scope_key(&pull), "repository:team/app");
        assert_eq!(scope_key(&push), scope_key(&pull));
        assert_ne!(
            scope_key(&["repository:team/other:pull".to_owned()]),
            scope_key(&pull)
        );
        assert_eq!(scope_key(&[]), "");
    }

    fn upstream() -> Upstream {
        let config = Config::parse_str(
            r#"
            [[registry]]
            host = "registry.corp"
            token_hosts = ["auth.corp"]
            "#,
        )
        .expect("config");
        let registry = config.registries["registry.corp"].clone();
        let metrics = Metrics::new(&prometheus::Registry::new(), []).expect("metrics");
        Upstream::new(registry, Arc::new(metrics)).expect("upstream")
    }

    #[test]
    fn only_challenges_with_an_allowed_realm_are_answerable() {
        let up = upstream();
        let bearer = |realm: &str| Challenge::Bearer {
            realm: realm.to_owned(),
            service: None,
            scope: None,
        };
        assert!(up.answerable(&Challenge::None).is_ok());
        assert!(up.answerable(&Challenge::Basic).is_ok());
        assert!(up
            .answerable(&bearer("https://registry.corp/token"))
            .is_ok());
        assert!(up.answerable(&bearer("https://auth.corp/token")).is_ok());
        for refused in [
            "https://evil.example.net/token",
            "http://auth.corp/token",
            "https://registry.corp:8443/token",
            "not a url",
        ] {
            assert!(
                matches!(
                    up.answerable(&bearer(refused)),
                    Err(UpstreamError::RealmNotAllowed { .. })
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn presigned_queries_are_redacted() {
        assert_eq!(
            redact_query("https://cdn/x?X-Amz-Signature=abc"),
            "https://cdn/x?<redacted>"
        );
        assert_eq!(redact_query("https://cdn/x"), "https://cdn/x");
    }
}

//! The request pipeline of the registry endpoint: route, resolve, forward, respond.
//!
//! Reads top to bottom: [`Proxy::handle`] parses the route, [`Proxy::repository`] resolves the
//! name to a [`Plan`], [`Proxy::forward`] sends it upstream through [`crate::upstream`], and
//! [`respond`] turns the upstream answer into the client's response (header rewriting,
//! streaming, digest verification). Errors become responses only in [`crate::error`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::body::{boxed, empty, full, IdleTimeout, ProxyBody, Verified};
use crate::cache::{CachedManifest, ManifestCache, ManifestKey};
use crate::config::Config;
use crate::error::ProxyError;
use crate::gate::{Check, Gate, Verdict};
use crate::metrics::{status_class, Counted, Metrics};
use crate::policy::{Operation, Subject};
use crate::provenance::{Provenance, Seen};
use crate::reference::{Name, Reference, Repository, DOCKER_HUB};
use crate::resolve::{Plan, Resolver, Target};
use crate::route::{self, Route};
use crate::search::Search;
use crate::stage::Stage;
use crate::upstream::{read_limited, Outgoing, Upstream, UpstreamError, Upstreams};

/// The challenge portcullis answers so that docker offers its credentials.
pub const CLIENT_CHALLENGE: &str = r#"Basic realm="portcullis""#;
/// Names the fully qualified image every repository response was served from.
pub const RESOLVED_HEADER: HeaderName = HeaderName::from_static("portcullis-resolved-name");
/// The distribution spec suggests registries accept manifests of at least 4 MiB.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Tag lists are buffered only to paginate them for registries that do not.
const MAX_TAG_LIST: usize = 16 * 1024 * 1024;
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Hop-by-hop headers (RFC 9110 7.6.1) and those portcullis sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Where a request came in: the listener (a metric label) and, for intercepted and mirror
/// traffic, the registry the client believes it is talking to. Names in such requests are
/// relative to that registry (`/v2/library/alpine/...` on `registry-1.docker.io`).
#[derive(Clone, Debug)]
pub struct Inbound {
    pub listener: &'static str,
    pub registry: Option<Arc<str>>,
}

impl Inbound {
    pub fn endpoint() -> Inbound {
        Inbound {
            listener: "registry",
            registry: None,
        }
    }
}

/// What the gate needs to know about a request, whichever registry it goes to.
pub(crate) struct Ask<'a> {
    pub op: Operation,
    pub route: &'a Route,
    pub peer: SocketAddr,
    pub user: Option<&'a str>,
    pub listener: &'static str,
}

impl<'a> Ask<'a> {
    pub fn check(&'a self, target: &'a Target) -> Check<'a> {
        Check {
            op: self.op,
            target,
            tag: route_tag(self.route),
            digest: route_digest(self.route),
            peer: self.peer,
            user: self.user,
            listener: self.listener,
        }
    }
}

pub struct Proxy {
    /// Treat docker.io single-component names (`library/<x>`) as short names that resolve
    /// across the search registries (Atomic's --add-registry for stock docker).
    hub_search: bool,
    resolver: Resolver,
    upstreams: Upstreams,
    manifests: ManifestCache,
    search: Search,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) provenance: Option<Arc<Provenance>>,
    pub(crate) stage: Option<Arc<Stage>>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        gate: Arc<Gate>,
        provenance: Option<Arc<Provenance>>,
        stage: Option<Arc<Stage>>,
    ) -> Result<Proxy, UpstreamError> {
        Ok(Proxy {
            hub_search: config.forward.docker_hub_search,
            resolver: Resolver::new(&config.resolve, config.registries.keys().cloned()),
            upstreams: Upstreams::new(config, metrics.clone())?,
            metrics,
            manifests: ManifestCache::new(config.cache.manifest_bytes),
            search: Search::new(config.resolve.catalog_ttl, config.resolve.search_timeout),
            gate,
            provenance,
            stage,
        })
    }

    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        inbound: Inbound,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>> {
        Box::pin(async move { self.handle_inner(req, peer, inbound).await })
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        inbound: Inbound,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let in_flight = self.metrics.in_flight.with_label_values(&["registry"]);
        in_flight.inc();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let route = route::parse(&path);
        let operation = operation(route.as_ref().ok(), &method);
        let resp = match route {
            Ok(route) => self.dispatch(route, req, &inbound, peer).await,
            Err(e) => Err(e.into()),
        };
        let (resp, decision) = match resp {
            Ok(resp) => (resp, "allow"),
            Err(e) => {
                if e.status().is_server_error() {
                    warn!(%peer, %method, %path, error = %e, "request failed");
                }
                let decision = if e.status() == StatusCode::FORBIDDEN {
                    "deny"
                } else {
                    "error"
                };
                (e.into_response(), decision)
            }
        };
        let resolved = resp
            .headers()
            .get(&RESOLVED_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let registry = self
            .metrics
            .registry_label(resolved.split_once('/').map(|(r, _)| r));
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.metrics
            .requests
            .with_label_values(&[operation, registry, decision, status_class(status)])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
        info!(%peer, %method, %path, %operation, %resolved, %decision, status, ms = elapsed.as_millis() as u64, "request");
        in_flight.dec();
        let counter = self
            .metrics
            .bytes
            .with_label_values(&["download", registry]);
        resp.map(|body| boxed(Counted::new(body, counter)))
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        inbound: &Inbound,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        match route {
            Route::Base => Ok(self.base(&req)),
            Route::Catalog => self.catalog(&req, inbound).await,
            Route::V1Ping => Ok(crate::search::ping()),
            Route::V1Search => {
                let policy = self.gate.policy();
                let registries = self.resolver.search_registries(&policy);
                let visible = |op: Operation, registry: &str, repository: &str| {
                    let subject = Subject {
                        op,
                        registry,
                        repository,
                        tag: None,
                        digest: None,
                    };
                    policy.evaluate(&subject).action.permits()
                };
                self.search
                    .serve(&registries, &self.upstreams, &self.metrics, &req, &visible)
                    .await
            }
            _ => self.repository(route, req, inbound, peer).await,
        }
    }

    /// `GET /v2/`: challenge for credentials when an upstream wants the client's own.
    fn base(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let wants_credentials = self
            .resolver_registries()
            .any(|u| u.wants_client_credentials());
        if wants_credentials && !req.headers().contains_key(header::AUTHORIZATION) {
            return ProxyError::Unauthorized.into_response();
        }
        let mut resp = Response::new(full(Bytes::from_static(b"{}")));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        resp
    }

    /// A name relative to the registry an intercepted client talks to. With `hub_search`,
    /// docker.io's `library/<x>` (what docker sends for `docker pull x`) becomes the short
    /// name `x`: nothing distinguishes it from an explicit `docker.io/library/x`, which is
    /// why this is an option.
    fn scoped_name(&self, registry: &str, raw: &str) -> Result<Name, ProxyError> {
        let repository = Repository::parse(raw)?;
        if self.hub_search && registry == DOCKER_HUB {
            if let Some(short) = raw.strip_prefix("library/").filter(|r| !r.contains('/')) {
                return Ok(Name::Short(Repository::parse(short)?));
            }
        }
        Ok(Name::Qualified {
            registry: registry.to_owned(),
            repository,
        })
    }

    fn resolver_registries(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.all()
    }

    async fn repository(
        &self,
        route: Route,
        req: Request<Incoming>,
        inbound: &Inbound,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let raw_name = route.name().unwrap_or_default().to_owned();
        let name = match &inbound.registry {
            None => Name::parse(&raw_name)?,
            Some(registry) => self.scoped_name(registry, &raw_name)?,
        };
        check_method(&route, req.method())?;
        let method = req.method().clone();
        let reading = matches!(method, Method::GET | Method::HEAD)
            && !matches!(route, Route::Upload { .. } | Route::UploadStart { .. });
        let policy = self.gate.policy();
        let plan = if !reading {
            Plan::One(self.resolver.for_push(&name)?)
        } else if content_addressed(&route) {
            self.resolver.for_blob(&name, &policy)?
        } else {
            self.resolver
                .for_pull(&name, &policy, route_digest(&route).is_some())?
        };
        let user = basic_user(req.headers());
        let ask = Ask {
            op: policy_operation(&route, &method),
            route: &route,
            peer,
            user: user.as_deref(),
            listener: inbound.listener,
        };
        match plan {
            Plan::One(target) => {
                let verdict = self.gate.check(&ask.check(&target))?;
                if ask.op == Operation::Push {
                    let req = match self.staged(&route, &raw_name, &target, &ask, req).await? {
                        Ok(resp) => return Ok(with_warning(resp, verdict)),
                        Err(req) => req,
                    };
                    let pushed = match (&route, &method) {
                        (Route::Upload { .. }, &Method::PUT) => {
                            query_value(req.uri().query(), "digest")
                        }
                        (Route::UploadStart { .. }, _) => query_value(req.uri().query(), "mount"),
                        _ => None,
                    };
                    let resp = self.forward(&route, &raw_name, &target, req).await?;
                    if let (Some(digest), StatusCode::CREATED) = (pushed, resp.status()) {
                        self.record_pushed(&digest, &target);
                    }
                    return Ok(with_warning(resp, verdict));
                }
                if let Some(resp) = self.staged_blob(&route, &target, &method).await {
                    return Ok(resp);
                }
                if let Some(resp) = self.cached_manifest(&route, &target, &method).await {
                    return Ok(with_warning(resp, verdict));
                }
                let resp = self.forward(&route, &raw_name, &target, req).await?;
                if reading && resp.status().is_success() {
                    self.resolver.remember(&name, &target.registry);
                    self.record_provenance(&route, &target);
                }
                Ok(with_warning(resp, verdict))
            }
            Plan::Search(targets) => {
                self.in_order(&ask, &raw_name, &name, &targets, req, false)
                    .await
            }
            Plan::Mirrors(targets) => {
                self.in_order(&ask, &raw_name, &name, &targets, req, true)
                    .await
            }
        }
    }

    /// A short-name pull (`mirrors == false`): the first registry that has it wins.
    /// Not-found (404, and the 401/403 registries answer for names that do not exist or are
    /// not visible) moves on; an outage stops, so it never silently swaps in another
    /// registry's image. Registries the policy denies are skipped, never contacted.
    /// registries.conf mirrors (`mirrors == true`): any failure moves on to the next
    /// source, and the primary location (last) answers whatever it answers.
    async fn in_order(
        &self,
        ask: &Ask<'_>,
        raw_name: &str,
        name: &Name,
        targets: &[Target],
        req: Request<Incoming>,
        mirrors: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, _) = req.into_parts();
        let route = ask.route;
        let mut tried = Vec::new();
        let mut denied = None;
        for (i, target) in targets.iter().enumerate() {
            let verdict = match self.gate.check(&ask.check(target)) {
                Ok(v) => v,
                Err(e) => {
                    denied.get_or_insert(e);
                    continue;
                }
            };
            let last = i + 1 == targets.len();
            let req = Request::from_parts(parts.clone(), ());
            let resp = match self
                .forward(route, raw_name, target, req.map(|()| None))
                .await
            {
                Ok(resp) => resp,
                Err(e) if mirrors && !last => {
                    warn!(mirror = %target, error = %e, "mirror failed; trying the next source");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = resp.status();
            let found = !matches!(
                status,
                StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) && !status.is_server_error();
            if mirrors && (found || last) {
                if found {
                    self.record_provenance(route, target);
                }
                return Ok(with_warning(resp, verdict));
            }
            if mirrors {
                continue;
            }
            if status.is_server_error() {
                return Err(UpstreamError::Status {
                    registry: target.registry.clone(),
                    status,
                }
                .into());
            }
            if !found {
                tried.push(target.to_string());
                continue;
            }
            info!(name = %raw_name, resolved = %target, "short name resolved");
            self.metrics
                .resolutions
                .with_label_values(&[&target.registry])
                .inc();
            self.resolver.remember(name, &target.registry);
            self.record_provenance(route, target);
            return Ok(with_warning(resp, verdict));
        }
        if let (Some(denial), true) = (denied, tried.is_empty()) {
            return Err(denial);
        }
        Err(ProxyError::NotFound {
            name: raw_name.to_owned(),
            what: what(route),
            tried: tried.join(", "),
        })
    }

    /// Send one request to one registry and turn its answer into the client's response.
    pub(crate) async fn forward<B>(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        req: Request<B>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: IntoProxyBody,
    {
        let upstream = self
            .upstreams
            .get(&target.registry)
            .ok_or_else(|| ProxyError::RegistryNotAllowed(target.registry.clone()))?;
        let (parts, body) = req.into_parts();
        let method = parts.method.clone();
        let repo = target.repository.as_str();
        let mut scopes = vec![scope(repo, &method)];
        let query = match route {
            Route::UploadStart { .. } => self.mount_query(parts.uri.query(), target, &mut scopes),
            _ => parts.uri.query().map(str::to_owned),
        };
        let path = upstream_path(route, repo);
        let path_and_query = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (k, v) in &parts.headers {
            if !is_hop_by_hop(k) && k != header::AUTHORIZATION {
                headers.append(k.clone(), v.clone());
            }
        }
        let body = body.into_proxy_body();
        let replayable = body.is_end_stream();
        let uploaded = self
            .metrics
            .bytes
            .with_label_values(&["upload", &target.registry]);
        let body = boxed(Counted::new(body, uploaded));
        let manifest_put = matches!(route, Route::Manifest { .. }) && method == Method::PUT;
        let body = if replayable {
            empty()
        } else if manifest_put {
            // Manifests are small and later checked by policy: read them whole, bounded.
            let bytes = collect_limited(body, MAX_MANIFEST).await?;
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            full(bytes)
        } else {
            body
        };
        let out = Outgoing {
            method: method.clone(),
            path_and_query,
            headers,
            body,
            replayable,
            scopes,
            identity: upstream.identity_for(parts.headers.get(header::AUTHORIZATION)),
        };
        let cache_key = match route {
            Route::Manifest {
                reference: Reference::Digest(d),
                ..
            } if method == Method::GET
                && upstream.identity_is_shared(parts.headers.get(header::AUTHORIZATION)) =>
            {
                Some(ManifestKey {
                    registry: target.registry.clone(),
                    repository: target.repository.to_string(),
                    digest: d.to_string(),
                })
            }
            _ => None,
        };
        let resp = upstream.send(out).await?;
        let page = crate::tags::PageRequest::parse(parts.uri.query());
        let (resp, manifest) =
            respond(route, raw_name, target, upstream, &method, &page, resp).await?;
        if let (Some(key), Some(manifest)) = (cache_key, manifest) {
            self.manifests.insert(key, manifest).await;
        }
        Ok(resp)
    }

    /// Remember where a blob was seen: private-push protection asks whether a blob was
    /// only ever seen in private registries.
    pub(crate) fn record_provenance(&self, route: &Route, target: &Target) {
        let Some(store) = &self.provenance else {
            return;
        };
        let digest = match route {
            Route::Blob { digest, .. } => digest.as_str(),
            _ => return,
        };
        let seen = if self.gate.policy().is_public(&target.registry) {
            Seen::Public
        } else {
            Seen::Private
        };
        if let Err(e) = store.record(digest, seen) {
            warn!(error = %e, "cannot record blob provenance");
        }
    }

    /// A blob pushed (or mounted) through portcullis was seen in its destination.
    fn record_pushed(&self, digest: &str, target: &Target) {
        let Some(store) = &self.provenance else {
            return;
        };
        let seen = if self.gate.policy().is_public(&target.registry) {
            Seen::Public
        } else {
            Seen::Private
        };
        if let Err(e) = store.record(digest, seen) {
            warn!(error = %e, "cannot record blob provenance");
        }
    }

    pub(crate) fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// A digest-addressed manifest already verified and cached for this repository.
    async fn cached_manifest(
        &self,
        route: &Route,
        target: &Target,
        method: &Method,
    ) -> Option<Response<ProxyBody>> {
        let Route::Manifest {
            reference: Reference::Digest(d),
            ..
        } = route
        else {
            return None;
        };
        if !matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        let key = ManifestKey {
            registry: target.registry.clone(),
            repository: target.repository.to_string(),
            digest: d.to_string(),
        };
        let hit = self.manifests.get(&key).await;
        let result = if hit.is_some() { "hit" } else { "miss" };
        self.metrics
            .cache
            .with_label_values(&["manifest", result])
            .inc();
        let hit = hit?;
        let mut resp = Response::new(if *method == Method::HEAD {
            empty()
        } else {
            full(hit.body.clone())
        });
        let headers = resp.headers_mut();
        if let Some(ct) = &hit.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(hit.body.len()));
        if let Ok(v) = HeaderValue::from_str(d.as_str()) {
            headers.insert("docker-content-digest", v);
        }
        headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        if let Ok(v) = HeaderValue::from_str(&target.to_string()) {
            headers.insert(RESOLVED_HEADER, v);
        }
        Some(resp)
    }

    /// Cross-repository mounts name the source in the client's terms; the upstream needs
    /// its own. A source on another registry cannot be mounted: drop the mount and let the
    /// registry answer 202 so the client uploads instead (the spec's fallback).
    fn mount_query(
        &self,
        query: Option<&str>,
        target: &Target,
        scopes: &mut Vec<String>,
    ) -> Option<String> {
        let query = query?;
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let source = pairs
            .iter()
            .find(|(k, _)| k == "from")
            .and_then(|(_, v)| Name::parse(v).ok())
            .and_then(|n| self.resolver.for_push(&n).ok())
            .filter(|src| src.registry == target.registry);
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            match (k.as_str(), &source) {
                ("from", Some(src)) => {
                    scopes.push(format!("repository:{}:pull", src.repository));
                    out.append_pair("from", src.repository.as_str());
                }
                ("from" | "mount", None) => {}
                _ => {
                    out.append_pair(k, v);
                }
            }
        }
        Some(out.finish())
    }

    /// `/v2/_catalog` across the search registries, names fully qualified, paginated over
    /// the concatenation in search order (`last` is a fully qualified name).
    async fn catalog(
        &self,
        req: &Request<Incoming>,
        inbound: &Inbound,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // What may not be listed, or pulled, is not shown.
        let policy = self.gate.policy();
        let visible = |registry: &str, repository: &str| {
            let allows = |op, repository| {
                let subject = Subject {
                    op,
                    registry,
                    repository,
                    tag: None,
                    digest: None,
                };
                policy.evaluate(&subject).action.permits()
            };
            allows(Operation::List, "")
                && (repository.is_empty() || allows(Operation::Pull, repository))
        };
        match &inbound.registry {
            // An intercepted registry lists its own catalog, with its own names.
            Some(registry) => {
                let only = [registry.to_string()];
                crate::catalog::serve(&only, false, &self.upstreams, req, &visible).await
            }
            None => {
                let registries = self.resolver.search_registries(&policy);
                crate::catalog::serve(&registries, true, &self.upstreams, req, &visible).await
            }
        }
    }
}

/// Turn an upstream response into the client's response; a verified manifest is also
/// returned for the cache.
async fn respond(
    route: &Route,
    raw_name: &str,
    target: &Target,
    upstream: &Upstream,
    method: &Method,
    page: &crate::tags::PageRequest,
    resp: Response<Incoming>,
) -> Result<(Response<ProxyBody>, Option<CachedManifest>), ProxyError> {
    let (mut parts, body) = resp.into_parts();
    let repo = target.repository.as_str();
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    for (k, v) in &parts.headers {
        if is_hop_by_hop(k) || k == header::WWW_AUTHENTICATE {
            continue;
        }
        if k == header::LOCATION || k == header::LINK {
            headers.append(k.clone(), rewrite_location(v, repo, raw_name));
        } else {
            headers.append(k.clone(), v.clone());
        }
    }
    if parts.status == StatusCode::UNAUTHORIZED {
        // The client must authenticate to portcullis, never to the upstream's token service.
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CLIENT_CHALLENGE),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&target.to_string()) {
        headers.insert(RESOLVED_HEADER, v);
    }
    parts.headers = headers;
    let registry = upstream.host();
    let timeout = upstream.config.body_timeout;
    let ok = parts.status == StatusCode::OK;
    let mut cacheable = None;
    let body = match route {
        Route::Tags { .. } if ok && method == Method::GET && page.is_paged() => {
            let bytes = read_limited(body, MAX_TAG_LIST, registry).await?;
            match crate::tags::paginate(&bytes, page, raw_name) {
                Some((paged, link)) => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    parts.headers.remove(header::LINK);
                    if let Some(link) = link {
                        parts.headers.insert(header::LINK, link);
                    }
                    full(paged)
                }
                None => full(bytes),
            }
        }
        Route::Manifest { reference, .. } if ok && method == Method::GET => {
            let bytes = read_limited(body, MAX_MANIFEST, registry).await?;
            if let Reference::Digest(d) = reference {
                verify_manifest(registry, d.as_str(), &bytes)?;
                cacheable = Some(CachedManifest {
                    body: bytes.clone(),
                    content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                });
            }
            full(bytes)
        }
        Route::Blob { digest, .. } if ok && method == Method::GET => boxed(Verified::new(
            IdleTimeout::new(body, timeout),
            digest.as_str(),
        )),
        _ => boxed(IdleTimeout::new(body, timeout)),
    };
    Ok((Response::from_parts(parts, body), cacheable))
}

fn verify_manifest(registry: &str, expected: &str, bytes: &Bytes) -> Result<(), ProxyError> {
    let actual = match expected.split_once(':').map(|(a, _)| a) {
        Some("sha256") => format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        Some("sha512") => format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes))),
        _ => return Ok(()),
    };
    if actual != expected {
        return Err(ProxyError::ManifestDigestMismatch {
            registry: registry.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Upload sessions and pagination links point at the upstream's repository path; rewrite
/// them to the client's name so the client keeps talking to portcullis. The origin is
/// dropped: a relative reference resolves against portcullis.
fn rewrite_location(value: &HeaderValue, upstream_repo: &str, client_name: &str) -> HeaderValue {
    let Ok(s) = value.to_str() else {
        return value.clone();
    };
    let from = format!("/v2/{upstream_repo}/");
    let Some(at) = s.find(&from) else {
        return value.clone();
    };
    // Keep a Link header's `<` and everything after the path; drop any scheme://host.
    let prefix = if s.starts_with('<') { "<" } else { "" };
    let rewritten = format!("{prefix}/v2/{client_name}/{}", &s[at + from.len()..]);
    HeaderValue::from_str(&rewritten).unwrap_or_else(|_| value.clone())
}

fn upstream_path(route: &Route, repo: &str) -> String {
    match route {
        Route::Manifest { reference, .. } => format!("/v2/{repo}/manifests/{reference}"),
        Route::Blob { digest, .. } => format!("/v2/{repo}/blobs/{digest}"),
        Route::UploadStart { .. } => format!("/v2/{repo}/blobs/uploads/"),
        Route::Upload { session, .. } => format!("/v2/{repo}/blobs/uploads/{session}"),
        Route::Tags { .. } => format!("/v2/{repo}/tags/list"),
        Route::Referrers { digest, .. } => format!("/v2/{repo}/referrers/{digest}"),
        Route::Base | Route::Catalog | Route::V1Ping | Route::V1Search => "/v2/".to_owned(),
    }
}

/// The token scope a request needs (distribution's `repository:<name>:<actions>`).
fn scope(repo: &str, method: &Method) -> String {
    let actions = match *method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "pull,push",
    };
    format!("repository:{repo}:{actions}")
}

/// The policy's operation for a request.
fn policy_operation(route: &Route, method: &Method) -> Operation {
    match route {
        _ if *method == Method::DELETE && !matches!(route, Route::Upload { .. }) => {
            Operation::Delete
        }
        Route::Upload { .. } | Route::UploadStart { .. } => Operation::Push,
        Route::Tags { .. } | Route::Catalog => Operation::List,
        Route::V1Search | Route::V1Ping => Operation::Search,
        _ if matches!(*method, Method::GET | Method::HEAD) => Operation::Pull,
        _ => Operation::Push,
    }
}

pub(crate) fn route_tag(route: &Route) -> Option<&str> {
    match route {
        Route::Manifest {
            reference: Reference::Tag(t),
            ..
        } => Some(t),
        _ => None,
    }
}

pub(crate) fn route_digest(route: &Route) -> Option<&str> {
    match route {
        Route::Manifest {
            reference: Reference::Digest(d),
            ..
        }
        | Route::Blob { digest: d, .. }
        | Route::Referrers { digest: d, .. } => Some(d.as_str()),
        _ => None,
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The user name of a client's Basic credentials, for the audit trail (never the password).
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?;
    match crate::upstream::auth::Identity::from_client_basic(value)? {
        crate::upstream::auth::Identity::Client { username, .. } => Some(username),
        _ => None,
    }
}

/// Attach a policy warning. No client shows it; the audit trail and metrics are the record.
pub(crate) fn with_warning(mut resp: Response<ProxyBody>, verdict: Verdict) -> Response<ProxyBody> {
    if let Verdict::Warn(text) = verdict {
        let text = text.replace(['"', '\\'], "'");
        if let Ok(v) = HeaderValue::from_str(&format!("299 portcullis \"{text}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Blobs and manifests by digest of a short name come from the registry that served the
/// pull's tag, without searching again.
fn content_addressed(route: &Route) -> bool {
    matches!(
        route,
        Route::Blob { .. }
            | Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
    )
}

/// The operation a request performs, for logs, metrics and (later) policy.
fn operation(route: Option<&Route>, method: &Method) -> &'static str {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        None => "invalid",
        Some(Route::Base) => "ping",
        Some(Route::Catalog | Route::Tags { .. }) => "list",
        Some(Route::V1Ping | Route::V1Search) => "search",
        Some(_) if *method == Method::DELETE => "delete",
        Some(Route::Upload { .. } | Route::UploadStart { .. }) => "push",
        Some(_) if read => "pull",
        Some(_) => "push",
    }
}

fn what(route: &Route) -> &'static str {
    match route {
        Route::Manifest { .. } => "manifest",
        Route::Blob { .. } => "blob",
        _ => "repository",
    }
}

fn check_method(route: &Route, method: &Method) -> Result<(), ProxyError> {
    if route.allows(method) {
        Ok(())
    } else {
        Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            route: route.kind(),
        })
    }
}

/// Read a client body whole, refusing more than `limit` bytes.
pub(crate) async fn collect_limited(
    mut body: ProxyBody,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.map_err(|e| ProxyError::ClientBody(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ProxyError::ManifestTooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The client's body, or none when a request is replayed against the next search registry.
pub trait IntoProxyBody {
    fn into_proxy_body(self) -> ProxyBody;
}

impl IntoProxyBody for ProxyBody {
    fn into_proxy_body(self) -> ProxyBody {
        self
    }
}

impl IntoProxyBody for Incoming {
    fn into_proxy_body(self) -> ProxyBody {
        boxed(self)
    }
}

impl IntoProxyBody for Option<Incoming> {
    fn into_proxy_body(self) -> ProxyBody {
        self.map(boxed).unwrap_or_else(empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_are_rewritten_to_the_client_name() {
        let v = HeaderValue::from_static(
            "https://127.0.0.1:5001/v2/team/app/blobs/uploads/abc?_state=xyz",
        );
        let out = rewrite_location(&v, "team/app", "corp.example.com/team/app");
        assert_eq!(
            out,
            "/v2/corp.example.com/team/app/blobs/uploads/abc?_state=xyz"
        );
        let rel = HeaderValue::from_static("/v2/library/fedora/blobs/uploads/u");
        assert_eq!(
            rewrite_location(&rel, "library/fedora", "fedora"),
            "/v2/fedora/blobs/uploads/u"
        );
    }

    #[test]
    fn tag_pagination_links_are_rewritten() {
        let v =
            HeaderValue::from_static(r#"</v2/library/fedora/tags/list?last=b&n=2>; rel="next""#);
        assert_eq!(
            rewrite_location(&v, "library/fedora", "fedora"),
            r#"</v2/fedora/tags/list?last=b&n=2>; rel="next""#
        );
    }

    #[test]
    fn foreign_locations_are_left_alone() {
        let v = HeaderValue::from_static("https://cdn.example/blob");
        assert_eq!(rewrite_location(&v, "team/app", "x/team/app"), v);
    }

    #[test]
    fn scopes_follow_the_method() {
        assert_eq!(scope("a/b", &Method::HEAD), "repository:a/b:pull");
        assert_eq!(scope("a/b", &Method::PATCH), "repository:a/b:pull,push");
        assert_eq!(scope("a/b", &Method::DELETE), "repository:a/b:delete");
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded_but_accept_is() {
        assert!(is_hop_by_hop(&header::CONNECTION));
        assert!(is_hop_by_hop(&header::HOST));
        assert!(!is_hop_by_hop(&header::ACCEPT));
    }

    #[test]
    fn manifest_digests_are_checked() {
        let body = Bytes::from_static(b"{}");
        let good = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        assert!(verify_manifest("r", &good, &body).is_ok());
        let bad = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            verify_manifest("r", &bad, &body),
            Err(ProxyError::ManifestDigestMismatch { .. })
        ));
    }
}

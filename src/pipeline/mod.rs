//! The request pipeline of the registry endpoint: route, resolve, forward, respond.
//!
//! Reads top to bottom: [`Proxy::handle`] parses the route, [`Proxy::repository`] resolves the
//! name to a [`Plan`], [`Proxy::forward`] sends it upstream through [`crate::upstream`], and
//! [`respond`](respond::respond) turns the upstream answer into the client's response (header
//! rewriting, streaming, digest verification). Errors become responses only in [`crate::error`].
//!
//! This file is the pipeline itself; the steps it calls each have a file of their own:
//! - `request.rs`: what a request asks for (policy operation, tag, digest, user), read off
//!   the route and headers;
//! - `send.rs`: one request to one registry (upstream path, token scope, headers, body);
//! - `respond.rs`: the upstream's answer, or the manifest cache's, as the client's response;
//! - `listing.rs`: `/v2/_catalog`, showing only what the policy lets a client see;
//! - `record.rs`: where blobs were seen, for private-push protection;
//! - `access.rs`: the access line, written when the response body has ended.
//!
//! Pushes whose policy needs their content are staged in [`crate::pipeline::push`].

mod access;
mod intent;
mod listing;
mod mount;
mod namespace;
mod outcome;
pub mod plan;
pub mod push;
mod record;
pub mod referrers;
mod respond;
mod send;
mod served;
#[cfg(test)]
mod tests;
mod uploads;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::body::{full, ProxyBody};
use crate::config::Config;
use crate::error::ProxyError;
use crate::listing::search::Search;
use crate::metrics::Metrics;
use crate::pipeline::plan::{Plan, Resolver, Target};
use crate::pipeline::verdict::{Check, Gate, Verdict};
use crate::policy::live::LivePolicy;
use crate::policy::{Operation, Policy};
use crate::reference::{Name, Repository, DOCKER_HUB};
use crate::route::{self, Route};
use crate::store::manifests::ManifestCache;
use crate::store::provenance::Provenance;
use crate::store::stage::Stage;
use crate::upstream::{Upstream, UpstreamError, Upstreams};

use intent::{
    basic_user, check_method, content_addressed, operation, policy_operation, query_value,
    route_digest, route_tag, what, Intent,
};
use outcome::{Decided, Outcome, Trail};
use push::Staged;
// Re-exported so the rest of the crate keeps naming them `crate::pipeline::...`.
pub(crate) use respond::with_warning;
pub(crate) use send::collect_limited;
pub use send::IntoProxyBody;
pub(crate) use uploads::check_chunk;

/// The challenge portcullis answers so that docker offers its credentials.
pub const CLIENT_CHALLENGE: &str = r#"Basic realm="portcullis""#;
/// Names the fully qualified image every repository response was served from.
pub const RESOLVED_HEADER: HeaderName = HeaderName::from_static("portcullis-resolved-name");
/// The distribution spec suggests registries accept manifests of at least 4 MiB.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Both the `/v2/` answer and cached manifests announce the API version.
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

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
    /// The policy this request took when it started; every decision of it uses this one.
    pub policy: &'a Policy,
    /// What the stages learn of this request, for its outcome.
    pub trail: &'a Trail,
    pub op: Operation,
    pub route: &'a Route,
    pub peer: SocketAddr,
    pub user: Option<&'a str>,
    pub listener: &'static str,
}

impl<'a> Ask<'a> {
    pub fn check(&'a self, target: &'a Target) -> Check<'a> {
        Check {
            policy: self.policy,
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

/// The listener name of the mirror endpoint, where containerd's `ns` names the registry.
pub const MIRROR: &str = "mirror";

/// Where a request's names are relative to: its listener, containerd's `ns` if it sent
/// one, and the registry that makes the names relative (intercepted host, mirror `ns`).
struct Scoped<'a> {
    inbound: &'a Inbound,
    ns: Option<&'a str>,
    scope: Option<&'a str>,
}

/// A search or mirror pull, tried registry by registry.
struct InOrder<'a> {
    ask: &'a Ask<'a>,
    raw_name: &'a str,
    name: &'a Name,
    policy: &'a crate::policy::Policy,
    /// Decide the answer on its digest ([`served`]); `head`: the client asked with HEAD.
    served: bool,
    head: bool,
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
    pub(crate) live: Arc<LivePolicy>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) provenance: Option<Arc<Provenance>>,
    pub(crate) stage: Option<Arc<Stage>>,
    referrer_locks: referrers::Locks,
    uploads: uploads::Uploads,
}

impl Proxy {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        live: Arc<LivePolicy>,
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
            live,
            gate,
            provenance,
            stage,
            referrer_locks: referrers::Locks::new(),
            uploads: uploads::Uploads::new(),
        })
    }

    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        inbound: Inbound,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>> {
        // The closing `request` line (info) is the access log and carries everything about
        // the request; the span (debug) adds the same context to what is logged inside it
        // when debugging. An info span formatted every field a second time: logging was a
        // fifth of the instructions per request in callgrind.
        let span = tracing::debug_span!(
            "request",
            %peer,
            method = %req.method(),
            path = req.uri().path(),
        );
        Box::pin(tracing::Instrument::instrument(
            self.handle_inner(req, peer, inbound),
            span,
        ))
    }

    /// The stages, top to bottom: the intent (what was asked), the policy the request is
    /// decided by, dispatch through plan and verdict to the upstream, and the outcome,
    /// recorded once.
    async fn handle_inner(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        inbound: Inbound,
    ) -> Response<ProxyBody> {
        let in_flight = self
            .metrics
            .in_flight
            .with_label_values(&[inbound.listener]);
        in_flight.inc();
        let route = route::parse(req.uri().path());
        let intent = Intent {
            peer,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            version: req.version(),
            listener: inbound.listener,
            operation: operation(route.as_ref().ok(), req.method()),
            started: Instant::now(),
        };
        let trail = Trail::default();
        let result = match route {
            Ok(route) => {
                // The one policy this request is decided by, whatever reloads meanwhile.
                let policy = self.live.current();
                self.dispatch(route, req, &inbound, peer, &policy, &trail)
                    .await
            }
            Err(e) => Err(ProxyError::from_route(e, &intent.method)),
        };
        let decided = Decided::of(&result);
        let resp = result.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                let (method, path) = (&intent.method, &intent.path);
                warn!(%peer, %method, %path, error = %e, "request failed");
            }
            e.into_response()
        });
        // A HEAD answer has no body, whoever wrote it (an error, `/v2/`); over HTTP/2
        // sending one is a protocol error and the client sees a reset instead of the
        // status. The headers (Content-Length included) stay, as for a GET.
        let resp = if intent.method == Method::HEAD {
            resp.map(|_| crate::body::empty())
        } else {
            resp
        };
        let resp = Outcome::new(intent, resp, decided, trail).record(&self.metrics);
        in_flight.dec();
        resp
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        inbound: &Inbound,
        peer: SocketAddr,
        policy: &Policy,
        trail: &Trail,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // containerd's `ns` is read here, once, and never goes upstream.
        let (ns, req) = namespace::take_ns(req)?;
        let scope = self.scope(inbound, ns.as_deref()).inspect_err(|_| {
            if let Some(named) = ns.as_deref().or(inbound.registry.as_deref()) {
                trail.named(named);
            }
        })?;
        if let Some(registry) = scope {
            trail.named(registry);
        }
        match route {
            Route::Base => Ok(self.base(&req)),
            Route::Catalog if ns.is_some() && scope.is_none() => Err(ProxyError::BadRequest(
                "ns= names a registry only on the mirror endpoint".to_owned(),
            )),
            Route::Catalog => Box::pin(self.catalog(&req, scope, policy)).await,
            Route::V1Ping => Ok(crate::listing::search::ping()),
            Route::V1Search => {
                let registries = self.resolver.search_registries(policy);
                let visible = |op: Operation, registry: &str, repository: &str| {
                    policy.permits_name(op, registry, repository)
                };
                let asked = crate::listing::search::Asked::of(&req, scope);
                let search = self.search.serve(
                    &registries,
                    asked,
                    &self.upstreams,
                    &self.metrics,
                    &req,
                    &visible,
                );
                Box::pin(search).await
            }
            _ => {
                let scoped = Scoped {
                    inbound,
                    ns: ns.as_deref(),
                    scope,
                };
                self.repository(route, req, &scoped, peer, policy, trail)
                    .await
            }
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
        mut req: Request<Incoming>,
        scoped: &Scoped<'_>,
        peer: SocketAddr,
        policy: &Policy,
        trail: &Trail,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let raw_name = route.name().unwrap_or_default().to_owned();
        let (inbound, ns, scope) = (scoped.inbound, scoped.ns, scoped.scope);
        let name = match scope {
            None => Name::parse(&raw_name)?,
            Some(registry) => self.scoped_name(registry, &raw_name)?,
        };
        if let Name::Qualified { registry, .. } = &name {
            trail.named(registry);
        }
        if let (Some(ns), None) = (ns, scope) {
            // The path names the registry here; an `ns` must agree with it.
            match &name {
                Name::Qualified { registry, .. } if registry.as_str() == ns => {}
                _ => {
                    return Err(ProxyError::BadRequest(format!(
                        "ns={ns} does not name the registry of {raw_name}"
                    )))
                }
            }
        }
        check_method(&route, req.method())?;
        let method = req.method().clone();
        let reading = matches!(method, Method::GET | Method::HEAD)
            && !matches!(route, Route::Upload { .. } | Route::UploadStart { .. });
        let blob_head = method == Method::HEAD && matches!(route, Route::Blob { .. });
        let plan = if !reading {
            Plan::One(self.resolver.for_push(&name)?)
        } else if content_addressed(&route) {
            self.resolver
                .for_blob(&name, policy)
                .map_err(|e| refused_head(e, blob_head, || true))?
        } else {
            self.resolver
                .for_pull(&name, policy, route_digest(&route).is_some())?
        };
        let user = basic_user(req.headers());
        let ask = Ask {
            policy,
            trail,
            op: policy_operation(&route, &method),
            route: &route,
            peer,
            user: user.as_deref(),
            listener: inbound.listener,
        };
        if matches!(route, Route::Referrers { .. }) {
            return Box::pin(self.referrers(&ask, &raw_name, plan, req)).await;
        }
        // Decided on the digest of what is served: the upstream is asked for the body even
        // when the client only asked for the headers.
        let served = served::needs_served_digest(&route, &method, policy);
        let head = served && method == Method::HEAD;
        if head {
            *req.method_mut() = Method::GET;
        }
        let mirrors = matches!(plan, Plan::Mirrors(_));
        match plan {
            Plan::One(target) => {
                let verdict = self.gate.check(&ask.check(&target)).await.map_err(|e| {
                    refused_head(e, blob_head, || self.gate.refuses_push(ask.policy, &target))
                })?;
                // From here every answer, good or failed, is about this registry.
                trail.served(&target);
                if ask.op == Operation::Push {
                    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
                    let staged = self.staged(&route, &raw_name, &target, &ask, req);
                    let req = match Box::pin(staged).await? {
                        Staged::Answered(resp) => {
                            let with = self.staged_with_referrers(
                                &route,
                                &target,
                                authorization.as_ref(),
                                resp,
                            );
                            return Ok(with_warning(Box::pin(with).await, verdict));
                        }
                        Staged::Forward(req) => req,
                    };
                    let req = match route {
                        Route::UploadStart { .. } => {
                            self.judge_mount(req, &ask, &target, scope).await?
                        }
                        _ => req,
                    };
                    let pushed = match (&route, &method) {
                        (Route::Upload { .. }, &Method::PUT) => {
                            query_value(req.uri().query(), "digest")
                        }
                        (Route::UploadStart { .. }, _) => query_value(req.uri().query(), "mount"),
                        _ => None,
                    };
                    let resp = match route {
                        Route::Upload { .. } | Route::UploadStart { .. } => {
                            Box::pin(self.forward_upload(&route, &raw_name, &target, req)).await?
                        }
                        _ => {
                            let push = self.push_with_referrers(&route, &raw_name, &target, req);
                            Box::pin(push).await?
                        }
                    };
                    if let (Some(digest), StatusCode::CREATED) = (pushed, resp.status()) {
                        self.record_pushed(ask.policy, &digest, &target);
                    }
                    return Ok(with_warning(resp, verdict));
                }
                if ask.op == Operation::Delete && matches!(route, Route::Manifest { .. }) {
                    let delete = self.delete_with_referrers(&route, &raw_name, &target, req);
                    return Ok(with_warning(Box::pin(delete).await?, verdict));
                }
                if let Some(resp) = self.staged_blob(&ask, &target, &method).await {
                    return Ok(resp);
                }
                if let Some(resp) = self.cached_manifest(&route, &target, &method).await {
                    return Ok(with_warning(resp, verdict));
                }
                // Boxed, like every large future here: an async fn's future holds the futures
                // it awaits, and each level of nesting copies them again. Inline, the request
                // future was 50 KB and moving it was a tenth of the per-request instructions;
                // boxed at this level it is under 4 KB.
                let resp = Box::pin(self.forward(&route, &raw_name, &target, req)).await?;
                let (resp, verdict) = if served {
                    let (resp, by_digest) =
                        Box::pin(self.judge_served(&ask, &target, policy, resp, head)).await?;
                    (resp, by_digest.unwrap_or(verdict))
                } else {
                    (resp, verdict)
                };
                if reading && resp.status().is_success() {
                    self.resolver.remember(&name, &target.registry);
                    self.record_provenance(ask.policy, &route, &target);
                }
                Ok(with_warning(resp, verdict))
            }
            Plan::Search(targets) | Plan::Mirrors(targets) => {
                let order = InOrder {
                    ask: &ask,
                    raw_name: &raw_name,
                    name: &name,
                    policy,
                    served,
                    head,
                };
                Box::pin(self.in_order(&order, &targets, req, mirrors)).await
            }
        }
    }

    /// The registry a request's names are relative to: the intercepted host, or on the
    /// mirror endpoint the registry containerd names with `ns` (docker.io without it).
    fn scope<'a>(
        &self,
        inbound: &'a Inbound,
        ns: Option<&'a str>,
    ) -> Result<Option<&'a str>, ProxyError> {
        match (inbound.listener, ns, inbound.registry.as_deref()) {
            (MIRROR, Some(ns), _) => match self.upstreams.get(ns) {
                Some(_) => Ok(Some(ns)),
                None => Err(ProxyError::RegistryNotAllowed(ns.to_owned())),
            },
            (_, Some(ns), Some(registry)) if ns != registry => Err(ProxyError::BadRequest(
                format!("ns={ns} does not name the registry this connection is for ({registry})"),
            )),
            (_, _, registry) => Ok(registry),
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
        order: &InOrder<'_>,
        targets: &[Target],
        req: Request<Incoming>,
        mirrors: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, _) = req.into_parts();
        let (ask, raw_name) = (order.ask, order.raw_name);
        let route = ask.route;
        let mut tried = Vec::new();
        let mut denied = None;
        for (i, target) in targets.iter().enumerate() {
            let verdict = match self.gate.check(&ask.check(target)).await {
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
                let (resp, verdict) = self.served(order, target, resp, verdict).await?;
                if found {
                    self.record_provenance(order.policy, route, target);
                }
                ask.trail.served(target);
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
            let (resp, verdict) = self.served(order, target, resp, verdict).await?;
            info!(name = %raw_name, resolved = %target, "short name resolved");
            self.metrics
                .resolutions
                .with_label_values(&[&target.registry])
                .inc();
            self.resolver.remember(order.name, &target.registry);
            self.record_provenance(order.policy, route, target);
            ask.trail.served(target);
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

    /// The digest decision of a search or mirror answer, when the policy needs one.
    async fn served(
        &self,
        order: &InOrder<'_>,
        target: &Target,
        resp: Response<ProxyBody>,
        verdict: Verdict,
    ) -> Result<(Response<ProxyBody>, Verdict), ProxyError> {
        if !order.served {
            return Ok((resp, verdict));
        }
        let judged = self.judge_served(order.ask, target, order.policy, resp, order.head);
        let (resp, by_digest) = Box::pin(judged).await?;
        Ok((resp, by_digest.unwrap_or(verdict)))
    }

    pub(crate) fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }
}

/// A refused blob `HEAD` becomes "unknown" when a push there is refused too (`push_refused`),
/// so that a client starting a push goes on to the upload and is told why.
fn refused_head(e: ProxyError, blob_head: bool, push_refused: impl FnOnce() -> bool) -> ProxyError {
    if blob_head && e.is_denial() && push_refused() {
        ProxyError::RefusedHead(e.to_string())
    } else {
        e
    }
}

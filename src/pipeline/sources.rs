//! Plans with several targets, tried in order: a short name across the search registries
//! ([`Proxy::search`]) and a fully qualified name across its registries.conf mirrors
//! ([`Proxy::mirrors`]). They differ in what moves on: a search moves on only when a
//! registry does not have the name, so an outage never silently swaps in another registry's
//! image; a mirror is an optimisation, so any failure moves on to the next source and the
//! primary location (last) answers whatever it answers.
//!
//! Both try only the targets the policy lets the request reach ([`Allowed`]): a refused
//! registry is skipped and never contacted, and its refusal is the answer when no other
//! registry had the name.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::pipeline::verdict::Verdict;
use crate::reference::Name;
use crate::upstream::UpstreamError;

use super::intent::what;
use super::{with_warning, Ask, Proxy};

/// The targets of a plan the gate allows, in order, with their verdicts. The first refusal
/// is kept for when no allowed target answers.
pub(super) struct Allowed<'a> {
    proxy: &'a Proxy,
    ask: &'a Ask<'a>,
    targets: &'a [Target],
    next: usize,
    pub denied: Option<ProxyError>,
}

/// One allowed target, and whether it is the plan's last.
pub(super) struct Try<'a> {
    pub target: &'a Target,
    pub verdict: Verdict,
    pub last: bool,
}

impl<'a> Allowed<'a> {
    pub fn new(proxy: &'a Proxy, ask: &'a Ask<'a>, targets: &'a [Target]) -> Allowed<'a> {
        Allowed {
            proxy,
            ask,
            targets,
            next: 0,
            denied: None,
        }
    }

    pub fn next(&mut self) -> Option<Try<'a>> {
        while let Some(target) = self.targets.get(self.next) {
            self.next += 1;
            let admitted = self
                .proxy
                .gate
                .check(&self.ask.check(target))
                .and_then(|v| self.proxy.admit_blob(self.ask, target).map(|()| v));
            match admitted {
                Ok(verdict) => {
                    return Some(Try {
                        target,
                        verdict,
                        last: self.next == self.targets.len(),
                    })
                }
                Err(e) => {
                    self.denied.get_or_insert(e);
                }
            }
        }
        None
    }
}

/// A search or mirror pull.
pub(super) struct InOrder<'a> {
    pub ask: &'a Ask<'a>,
    pub raw_name: &'a str,
    pub name: &'a Name,
    /// Decide the answer on its digest ([`super::served`]); `head`: the client asked with
    /// HEAD.
    pub served: bool,
    pub head: bool,
}

/// Whether a registry has the name: not-found is 404, and the 401/403 registries answer for
/// names that do not exist or are not visible; a 5xx is an outage, not an answer.
fn found(status: StatusCode) -> bool {
    !matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) && !status.is_server_error()
}

impl Proxy {
    /// A short-name pull: the first registry that has it wins; not-found moves on, an
    /// outage stops.
    pub(super) async fn search(
        &self,
        order: &InOrder<'_>,
        targets: &[Target],
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, _) = req.into_parts();
        let (ask, route) = (order.ask, order.ask.route);
        let mut allowed = Allowed::new(self, ask, targets);
        let mut tried = Vec::new();
        while let Some(Try {
            target, verdict, ..
        }) = allowed.next()
        {
            let req = Request::from_parts(parts.clone(), None::<Incoming>);
            let resp = self.forward(route, order.raw_name, target, req).await?;
            let status = resp.status();
            if status.is_server_error() {
                return Err(UpstreamError::Status {
                    registry: target.registry.clone(),
                    status,
                }
                .into());
            }
            if !found(status) {
                tried.push(target.to_string());
                continue;
            }
            let (resp, verdict) = self
                .served(order, target, resp, verdict, &parts.headers)
                .await?;
            info!(name = %order.raw_name, resolved = %target, "short name resolved");
            self.metrics
                .resolutions
                .with_label_values(&[&target.registry])
                .inc();
            self.resolver.remember(order.name, &target.registry);
            self.record_provenance(ask.policy, route, target);
            ask.trail.served(target);
            return Ok(with_warning(resp, verdict));
        }
        Err(not_found(order, allowed, tried))
    }

    /// registries.conf mirrors, then the primary location: any failure moves on, and the
    /// last source answers whatever it answers.
    pub(super) async fn mirrors(
        &self,
        order: &InOrder<'_>,
        targets: &[Target],
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, _) = req.into_parts();
        let (ask, route) = (order.ask, order.ask.route);
        let mut allowed = Allowed::new(self, ask, targets);
        while let Some(Try {
            target,
            verdict,
            last,
        }) = allowed.next()
        {
            let req = Request::from_parts(parts.clone(), None::<Incoming>);
            let resp = match self.forward(route, order.raw_name, target, req).await {
                Ok(resp) => resp,
                Err(e) if !last => {
                    warn!(mirror = %target, error = %e, "mirror failed; trying the next source");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let found = found(resp.status());
            if !found && !last {
                continue;
            }
            let (resp, verdict) = self
                .served(order, target, resp, verdict, &parts.headers)
                .await?;
            if found {
                self.record_provenance(ask.policy, route, target);
            }
            ask.trail.served(target);
            return Ok(with_warning(resp, verdict));
        }
        Err(not_found(order, allowed, Vec::new()))
    }

    /// The digest decision of a search or mirror answer, when the policy needs one.
    async fn served(
        &self,
        order: &InOrder<'_>,
        target: &Target,
        resp: Response<ProxyBody>,
        verdict: Verdict,
        headers: &http::HeaderMap,
    ) -> Result<(Response<ProxyBody>, Verdict), ProxyError> {
        if !order.served {
            return Ok((resp, verdict));
        }
        let ask = order.ask;
        let authorization = headers.get(http::header::AUTHORIZATION).cloned();
        let judged = self.judge_served(ask, target, ask.policy, resp, order.head, authorization);
        let (resp, by_digest) = Box::pin(judged).await?;
        Ok((resp, by_digest.unwrap_or(verdict)))
    }
}

/// No allowed target had the name: the policy's refusal when nothing else was tried, else
/// not-found naming the registries that were asked.
fn not_found(order: &InOrder<'_>, allowed: Allowed<'_>, tried: Vec<String>) -> ProxyError {
    match allowed.denied {
        Some(denial) if tried.is_empty() => denial,
        _ => ProxyError::NotFound {
            name: order.raw_name.to_owned(),
            what: what(order.ask.route),
            tried: tried.join(", "),
        },
    }
}

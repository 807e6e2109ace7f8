//! Writes to the one registry of a push plan, after the gate allowed them by name: staged
//! when the policy needs the push's content ([`super::push`]), otherwise forwarded (uploads
//! through their sessions, mounts decided as pulls of their source, manifests with their
//! referrers index), and every blob the registry accepted recorded for private-push
//! protection.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::route::Route;

use super::intent::query_value;
use super::push::{Publication, Push, Staged};
use super::{with_warning, Ask, Proxy};

impl Proxy {
    /// One push request (upload start, chunk, end, cancel, manifest `PUT`).
    pub(super) async fn push(
        &self,
        ask: &Ask<'_>,
        raw_name: &str,
        target: &Target,
        scope: Option<&str>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = ask.route;
        let req = match Box::pin(self.stage(ask, raw_name, target, req)).await? {
            Staged::Answered(resp) => return Ok(resp),
            Staged::Publish(publication) => {
                return Box::pin(self.publish(ask, raw_name, target, publication)).await
            }
            Staged::Forward(req) => req,
        };
        let req = match route {
            Route::UploadStart { .. } => self.judge_mount(req, ask, target, scope).await?,
            _ => req,
        };
        let pushed = match (route, req.method()) {
            (Route::Upload { .. }, &Method::PUT) => query_value(req.uri().query(), "digest"),
            (Route::UploadStart { .. }, _) => query_value(req.uri().query(), "mount"),
            _ => None,
        };
        let resp = match route {
            Route::Upload { .. } | Route::UploadStart { .. } => {
                Box::pin(self.forward_upload(route, raw_name, target, req)).await?
            }
            _ => Box::pin(self.push_with_referrers(route, raw_name, target, req)).await?,
        };
        if let (Some(digest), StatusCode::CREATED) = (pushed, resp.status()) {
            self.record_pushed(ask.policy, &digest, target);
        }
        Ok(resp)
    }

    /// A push request through staging, when there is a stage: answered there, judged there
    /// (a staged manifest), or handed back to be forwarded.
    async fn stage(
        &self,
        ask: &Ask<'_>,
        raw_name: &str,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<Staged, ProxyError> {
        let Some(stager) = &self.stager else {
            return Ok(Staged::Forward(req));
        };
        let upstream = self
            .upstreams
            .get(&target.registry)
            .ok_or_else(|| ProxyError::RegistryNotAllowed(target.registry.clone()))?;
        let push = Push {
            route: ask.route,
            raw_name,
            target,
            ask,
            upstream,
        };
        stager.stage(&push, &self.gate, req).await
    }

    /// The manifest of a staged push, after its blobs: sent as any manifest push, and the
    /// stager told whether the destination took it.
    async fn publish(
        &self,
        ask: &Ask<'_>,
        raw_name: &str,
        target: &Target,
        publication: Publication,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Publication {
            manifest,
            blobs,
            verdict,
        } = publication;
        let sent = self.push_with_referrers(ask.route, raw_name, target, manifest);
        let resp = Box::pin(sent).await;
        if let Some(stager) = &self.stager {
            let accepted = resp.as_ref().is_ok_and(|r| r.status().is_success());
            stager.published(&blobs, target, ask.policy, accepted);
        }
        let resp = resp?;
        Ok(match verdict {
            Some(verdict) => with_warning(resp, verdict),
            None => resp,
        })
    }
}

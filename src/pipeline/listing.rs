//! `/v2/_catalog` through portcullis: which registries are listed, and the policy filter
//! that hides what a client may not list or pull. Fetching, merging and paginating the
//! upstream catalogs is [`crate::listing::catalog`]'s.

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::policy::Operation;

use super::Proxy;

impl Proxy {
    /// `/v2/_catalog` across the search registries, names fully qualified, paginated over
    /// the concatenation in search order (`last` is a fully qualified name).
    pub(super) async fn catalog(
        &self,
        req: &Request<Incoming>,
        scope: Option<&str>,
        policy: &crate::policy::Policy,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // What may not be listed, or pulled, is not shown.
        let visible = |registry: &str, repository: &str| {
            policy.permits_name(Operation::List, registry, "")
                && (repository.is_empty()
                    || policy.permits_name(Operation::Pull, registry, repository))
        };
        match scope {
            // An intercepted registry (or the one a mirror request names) lists its own
            // catalog, with its own names.
            Some(registry) => {
                let only = [registry.to_string()];
                crate::listing::catalog::serve(&only, false, &self.upstreams, req, &visible).await
            }
            None => {
                let registries = self.resolver.search_registries(policy);
                crate::listing::catalog::serve(&registries, true, &self.upstreams, req, &visible)
                    .await
            }
        }
    }
}

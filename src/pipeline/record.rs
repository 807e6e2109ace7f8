//! Blob provenance, recorded as the pipeline sees blobs pass: private-push protection
//! later asks the [`crate::store::provenance`] store whether a blob was only ever seen in private
//! registries, and under which fully qualified names. Recording is best effort: a failure is logged, never fails the request.

use tracing::warn;

use crate::pipeline::plan::Target;
use crate::policy::Policy;
use crate::route::Route;
use crate::store::provenance::Seen;

use super::Proxy;

impl Proxy {
    /// Remember where a blob was seen: private-push protection asks whether a blob was
    /// only ever seen in private registries.
    pub(super) fn record_provenance(&self, policy: &Policy, route: &Route, target: &Target) {
        let Some(store) = &self.provenance else {
            return;
        };
        let digest = match route {
            Route::Blob { digest, .. } => digest.as_str(),
            _ => return,
        };
        let seen = if policy.is_public(&target.registry) {
            Seen::Public
        } else {
            Seen::Private
        };
        if let Err(e) = store.record_named(digest, seen, &target.to_string()) {
            warn!(error = %e, "cannot record blob provenance");
        }
    }

    /// A blob pushed (or mounted) through portcullis was seen in its destination.
    pub(super) fn record_pushed(&self, policy: &Policy, digest: &str, target: &Target) {
        let Some(store) = &self.provenance else {
            return;
        };
        let seen = if policy.is_public(&target.registry) {
            Seen::Public
        } else {
            Seen::Private
        };
        if let Err(e) = store.record_named(digest, seen, &target.to_string()) {
            warn!(error = %e, "cannot record blob provenance");
        }
    }
}

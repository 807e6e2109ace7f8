//! Cross-repository mounts: `POST .../blobs/uploads/?mount=<digest>&from=<repository>`.
//!
//! A mount reads a blob of `from` and writes it to the destination without a byte passing
//! through the client, so it is a pull of `from` as well as a push. The push is decided
//! like any other; the pull is decided here, on the source repository and the blob's
//! digest. A mount the policy would not let the client pull is not forwarded: the request
//! goes upstream as a plain upload start, the registry answers `202`, and the client
//! uploads the bytes it has (the spec's fallback), so nothing the client could not read
//! reaches the destination.

use http::{Request, Uri};
use tracing::info;

use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::policy::Operation;
use crate::reference::{fully_qualified, Digest, Name, Repository};

use super::intent::with_query;
use super::{Ask, Proxy};

/// The mount a request asks for, as the client wrote it.
struct MountQuery {
    digest: String,
    from: Option<String>,
}

fn mount_query(query: Option<&str>) -> Option<MountQuery> {
    let mut digest = None;
    let mut from = None;
    for (k, v) in form_urlencoded::parse(query?.as_bytes()) {
        match &*k {
            "mount" => digest = Some(v.into_owned()),
            "from" => from = Some(v.into_owned()),
            _ => {}
        }
    }
    Some(MountQuery {
        digest: digest?,
        from,
    })
}

impl Proxy {
    /// Decide the pull half of a mount. Returns the request to forward: with `from`
    /// rewritten to the source's fully qualified name when the mount may go ahead, without
    /// `mount` and `from` when it may not.
    pub(super) async fn judge_mount<B>(
        &self,
        req: Request<B>,
        ask: &Ask<'_>,
        target: &Target,
        scope: Option<&str>,
    ) -> Result<Request<B>, ProxyError> {
        let Some(mount) = mount_query(req.uri().query()) else {
            return Ok(req);
        };
        let source = mount.from.as_deref().and_then(|from| {
            let name = match scope {
                // Intercepted and mirror clients name repositories relative to the registry
                // they talk to.
                Some(registry) => Name::Qualified {
                    registry: registry.to_owned(),
                    repository: Repository::parse(from).ok()?,
                },
                None => Name::parse(from).ok()?,
            };
            self.resolver.for_push(&name).ok()
        });
        let allowed = match (&source, mount.digest.parse::<Digest>()) {
            (Some(src), Ok(digest)) if src.registry == target.registry => {
                let check = crate::pipeline::verdict::Check {
                    policy: ask.policy,
                    trail: ask.trail,
                    op: Operation::Pull,
                    target: src,
                    tag: None,
                    digest: Some(digest.as_str()),
                    peer: ask.peer,
                };
                match self.gate.check(&check) {
                    Ok(_) => true,
                    Err(denied) => {
                        info!(%target, source = %src, error = %denied, "mount refused by policy; the client will upload instead");
                        false
                    }
                }
            }
            // Another registry, no `from`, or a malformed digest: nothing to mount from.
            _ => false,
        };
        let (mut parts, body) = req.into_parts();
        let from = source
            .filter(|_| allowed)
            .map(|src| fully_qualified(&src.registry, &src.repository));
        parts.uri = rewrite_mount(&parts.uri, from.as_deref())?;
        Ok(Request::from_parts(parts, body))
    }
}

/// The upload-start URI with `from` replaced by `from` (fully qualified), or with both
/// `mount` and `from` removed.
fn rewrite_mount(uri: &Uri, from: Option<&str>) -> Result<Uri, ProxyError> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match (&*k, from) {
            ("from", Some(from)) => {
                out.append_pair("from", from);
            }
            ("mount" | "from", None) => {}
            _ => {
                out.append_pair(&k, &v);
            }
        }
    }
    with_query(uri, &out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_read_from_the_query() {
        let m =
            mount_query(Some("mount=sha256:ab&from=corp.example.com/secret/app")).expect("mount");
        assert_eq!(m.digest, "sha256:ab");
        assert_eq!(m.from.as_deref(), Some("corp.example.com/secret/app"));
        assert!(mount_query(Some("digest=sha256:ab")).is_none());
        assert!(mount_query(None).is_none());
        assert!(mount_query(Some("mount=sha256:ab"))
            .expect("no from")
            .from
            .is_none());
    }

    #[test]
    fn a_refused_mount_becomes_a_plain_upload_start() {
        let uri: Uri = "/v2/x/team/leak/blobs/uploads/?mount=sha256:ab&from=x/secret/app&n=1"
            .parse()
            .expect("uri");
        assert_eq!(
            rewrite_mount(&uri, None).expect("rewrite").to_string(),
            "/v2/x/team/leak/blobs/uploads/?n=1"
        );
        assert_eq!(
            rewrite_mount(&uri, Some("corp.example.com/secret/app"))
                .expect("rewrite")
                .to_string(),
            "/v2/x/team/leak/blobs/uploads/?mount=sha256%3Aab&from=corp.example.com%2Fsecret%2Fapp&n=1"
        );
        let bare: Uri = "/v2/x/blobs/uploads/?mount=sha256:ab".parse().expect("uri");
        assert_eq!(
            rewrite_mount(&bare, None).expect("rewrite").to_string(),
            "/v2/x/blobs/uploads/"
        );
    }
}

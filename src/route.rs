//! Distribution API routes, recognised from the right-hand end of the path.
//!
//! Repository names contain slashes, to any depth, and may themselves contain the API's
//! keywords (`foo/blobs`, `tags`). So the route is decided by the last two segments (three for
//! an upload session) and everything before them is the name, however deep. Where more than one
//! keyword appears, the one nearest the end wins: `/v2/a/blobs/uploads/manifests/x` is manifest
//! `x` of repository `a/blobs/uploads`, and `/v2/foo/blobs/manifests/latest` is a manifest of
//! `foo/blobs`. The single overlap between suffixes, `<name>/blobs/uploads`, is an upload start
//! rather than blob "uploads" of `<name>`, since "uploads" can never be a digest.
//!
//! Percent-encoding, `.`/`..` and empty segments are refused outright instead of decoded or
//! normalised: upstream registries and the policy layer must see the same name we checked.

use http::Method;

use crate::reference::{detail, Digest, NameError, Reference};

const SESSION_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` and `/v2`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`, with or without the trailing slash
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<session>`
    Upload { name: String, session: String },
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: String, digest: Digest },
    /// `/v1/_ping`
    V1Ping,
    /// `/v1/search`
    V1Search,
}

impl Route {
    /// The raw, not yet validated `<name>`; see [`crate::reference::Name::parse`].
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
            Route::Base | Route::Catalog | Route::V1Ping | Route::V1Search => None,
        }
    }

    /// A fixed label for logs and metrics, so that label cardinality stays bounded.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "upload",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::V1Ping => "v1_ping",
            Route::V1Search => "v1_search",
        }
    }

    /// Whether the distribution API defines `method` on this route. Kept apart from [`parse`]
    /// so that a wrong method can be answered 405 rather than 404.
    pub fn allows(&self, method: &Method) -> bool {
        let read = *method == Method::GET || *method == Method::HEAD;
        match self {
            Route::Manifest { .. } => read || *method == Method::PUT || *method == Method::DELETE,
            Route::Blob { .. } => read || *method == Method::DELETE,
            Route::UploadStart { .. } => *method == Method::POST,
            Route::Upload { .. } => {
                read || [Method::PATCH, Method::PUT, Method::DELETE].contains(method)
            }
            Route::Base
            | Route::Catalog
            | Route::Tags { .. }
            | Route::Referrers { .. }
            | Route::V1Ping
            | Route::V1Search => read,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// Not a distribution API path at all.
    #[error("not a distribution API path {0}")]
    NotFound(String),
    #[error("invalid request path {0}")]
    InvalidPath(String),
    /// A distribution API path whose reference or digest is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Parses a request path, without its query, into a [`Route`]. The name is returned raw and
/// non-empty; validating it is [`crate::reference::Name::parse`]'s job.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    check_path(path)?;
    match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/v2/_catalog" => return Ok(Route::Catalog),
        "/v1/_ping" => return Ok(Route::V1Ping),
        "/v1/search" => return Ok(Route::V1Search),
        _ => {}
    }
    let not_found = || RouteError::NotFound(detail(path, "no such route"));
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Route::UploadStart { name: name.into() });
    }
    // Only the two routes above may end in '/'; rsplit below would otherwise see "" as a
    // reference and report a misleading tag error.
    if rest.ends_with('/') {
        return Err(not_found());
    }
    let (head, last) = rest.rsplit_once('/').ok_or_else(not_found)?;
    let (name, keyword) = head.rsplit_once('/').ok_or_else(not_found)?;
    let name = name.to_owned();
    match keyword {
        "manifests" => Ok(Route::Manifest {
            name,
            reference: Reference::parse(last)?,
        }),
        "blobs" => Ok(Route::Blob {
            name,
            digest: last.parse()?,
        }),
        "referrers" => Ok(Route::Referrers {
            name,
            digest: last.parse()?,
        }),
        "tags" if last == "list" => Ok(Route::Tags { name }),
        "uploads" => match name.rsplit_once('/') {
            Some((name, "blobs")) => Ok(Route::Upload {
                name: name.into(),
                session: check_session(path, last)?.into(),
            }),
            _ => Err(not_found()),
        },
        _ => Err(not_found()),
    }
}

fn check_path(path: &str) -> Result<(), RouteError> {
    let bad = |reason: &str| Err(RouteError::InvalidPath(detail(path, reason)));
    if path.contains('%') {
        return bad("percent-encoded characters are not allowed");
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return bad("'.' and '..' segments are not allowed");
    }
    // Besides "a//b", this keeps an empty name out: "/v2//manifests/x".
    if path.contains("//") {
        return bad("empty path segments are not allowed");
    }
    Ok(())
}

/// Sessions are minted by the upstream registry and opaque to us; the character set is what
/// registries use in practice (UUIDs, base64url) and keeps the id safe to splice into a URL.
fn check_session<'a>(path: &str, session: &'a str) -> Result<&'a str, RouteError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-');
    if (1..=SESSION_MAX).contains(&session.len()) && session.bytes().all(allowed) {
        Ok(session)
    } else {
        Err(RouteError::InvalidPath(detail(
            path,
            "upload session ids are 1 to 256 of [A-Za-z0-9._=-]",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Compact rendering of a route so that the table below stays one line per case.
    fn show(path: &str) -> Result<String, &'static str> {
        let route = parse(path).map_err(|e| match e {
            RouteError::NotFound(_) => "not found",
            RouteError::InvalidPath(_) => "invalid path",
            RouteError::Name(NameError::InvalidDigest(_)) => "bad digest",
            RouteError::Name(NameError::InvalidTag(_)) => "bad tag",
            RouteError::Name(_) => "bad name",
        })?;
        let name = route.name().map(|n| format!(" {n}")).unwrap_or_default();
        let extra = match &route {
            Route::Manifest { reference, .. } => format!(" @{reference}"),
            Route::Blob { digest, .. } | Route::Referrers { digest, .. } => {
                format!(" @{}", &digest.hex()[..4])
            }
            Route::Upload { session, .. } => format!(" #{session}"),
            _ => String::new(),
        };
        Ok(format!("{}{name}{extra}", route.kind()))
    }

    #[test]
    fn good_paths() {
        let deep = format!("/v2/{}x/manifests/latest", "a/".repeat(40));
        assert_eq!(
            show(&deep),
            Ok(format!("manifest {}x @latest", "a/".repeat(40)))
        );
        let table = [
            ("/v2/", "base"),
            ("/v2", "base"),
            ("/v2/_catalog", "catalog"),
            ("/v1/_ping", "v1_ping"),
            ("/v1/search", "v1_search"),
            ("/v2/alpine/manifests/latest", "manifest alpine @latest"),
            (
                "/v2/library/alpine/manifests/3.19",
                "manifest library/alpine @3.19",
            ),
            (
                &format!("/v2/a/manifests/{SHA}"),
                &format!("manifest a @{SHA}"),
            ),
            (
                "/v2/quay.io/coreos/etcd/manifests/v3",
                "manifest quay.io/coreos/etcd @v3",
            ),
            (
                "/v2/localhost:5000/x/manifests/t",
                "manifest localhost:5000/x @t",
            ),
            (
                "/v2/127.0.0.1:5443/team/app/tags/list",
                "tags 127.0.0.1:5443/team/app",
            ),
            (&format!("/v2/team/app/blobs/{SHA}"), "blob team/app @0123"),
            (
                &format!("/v2/team/app/referrers/{SHA}"),
                "referrers team/app @0123",
            ),
            ("/v2/team/app/blobs/uploads/", "upload team/app"),
            ("/v2/team/app/blobs/uploads", "upload team/app"),
            ("/v2/a/blobs/uploads/3f1c-9a_b.c=", "upload a #3f1c-9a_b.c="),
            ("/v2/a/blobs/uploads/uploads", "upload a #uploads"),
            ("/v2/a/tags/list", "tags a"),
            // Keywords inside the name: the rightmost suffix decides.
            (
                "/v2/foo/blobs/manifests/latest",
                "manifest foo/blobs @latest",
            ),
            (
                "/v2/a/blobs/uploads/manifests/x",
                "manifest a/blobs/uploads @x",
            ),
            ("/v2/tags/tags/list", "tags tags"),
            (
                "/v2/manifests/manifests/manifests",
                "manifest manifests @manifests",
            ),
            ("/v2/a/tags/list/tags/list", "tags a/tags/list"),
            ("/v2/blobs/blobs/uploads/", "upload blobs"),
            ("/v2/a/blobs/blobs/uploads/s1", "upload a/blobs #s1"),
            (
                &format!("/v2/a/blobs/uploads/blobs/{SHA}"),
                "blob a/blobs/uploads @0123",
            ),
            // The name is raw here: Name::parse rejects it later.
            ("/v2/Foo/manifests/latest", "manifest Foo @latest"),
        ];
        for (path, expected) in table {
            assert_eq!(show(path), Ok(expected.to_owned()), "{path}");
        }
    }

    #[test]
    fn bad_paths() {
        let long_session = format!("/v2/a/blobs/uploads/{}", "s".repeat(257));
        let table = [
            ("", "not found"),
            ("/", "not found"),
            ("/v2x", "not found"),
            ("/v3/a/manifests/latest", "not found"),
            ("/v1/", "not found"),
            ("/v1/repositories/a/images", "not found"),
            ("/healthz", "not found"),
            ("v2/a/manifests/latest", "not found"),
            ("/v2/_catalog/x", "not found"),
            ("/v2/alpine", "not found"),
            ("/v2/manifests/latest", "not found"),
            ("/v2/tags/list", "not found"),
            ("/v2/blobs/uploads", "not found"),
            ("/v2/blobs/uploads/", "not found"),
            ("/v2/blobs/uploads/s1", "not found"),
            ("/v2/a/tags/all", "not found"),
            ("/v2/a/uploads/s1", "not found"),
            ("/v2/a/manifests/latest/", "not found"),
            ("/v2/a/tags/list/", "not found"),
            ("/v2/a/other/thing", "not found"),
            ("/v2/a/manifests/%2e%2e", "invalid path"),
            ("/v2/a%2Fb/manifests/latest", "invalid path"),
            ("/v2/../v2/a/manifests/latest", "invalid path"),
            ("/v2/a/../b/manifests/latest", "invalid path"),
            ("/v2/./a/tags/list", "invalid path"),
            ("/v2/a/manifests/..", "invalid path"),
            ("/v2/a//b/manifests/latest", "invalid path"),
            ("/v2//manifests/latest", "invalid path"),
            ("//v2/a/tags/list", "invalid path"),
            ("/v2/a/blobs/uploads/s:1", "invalid path"),
            ("/v2/a/blobs/uploads/s+1", "invalid path"),
            (&long_session, "invalid path"),
            ("/v2/a/manifests/-x", "bad tag"),
            ("/v2/a/manifests/sha256:abc", "bad digest"),
            ("/v2/a/blobs/latest", "bad digest"),
            ("/v2/a/blobs/md5:0123", "bad digest"),
            ("/v2/a/referrers/latest", "bad digest"),
            ("/v2/a/blobs/manifests", "bad digest"),
        ];
        for (path, expected) in table {
            assert_eq!(show(path), Err(expected), "{path}");
        }
    }

    #[test]
    fn names_kinds_and_methods() {
        let manifest = parse("/v2/a/b/manifests/latest").unwrap();
        assert_eq!(
            (manifest.name(), manifest.kind()),
            (Some("a/b"), "manifest")
        );
        assert_eq!(parse("/v2/").map(|r| r.name().is_none()), Ok(true));
        assert!(manifest.allows(&Method::PUT) && manifest.allows(&Method::HEAD));
        assert!(!manifest.allows(&Method::POST) && !manifest.allows(&Method::PATCH));
        let start = parse("/v2/a/blobs/uploads/").unwrap();
        assert!(start.allows(&Method::POST) && !start.allows(&Method::GET));
        let session = parse("/v2/a/blobs/uploads/s").unwrap();
        assert!(session.allows(&Method::PATCH) && !session.allows(&Method::POST));
        assert!(!Route::Base.allows(&Method::DELETE));
        let err = parse("/v2/a/manifests/%2e%2e").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid request path \"/v2/a/manifests/%2e%2e\""),
            "{err}"
        );
    }

    #[test]
    fn never_panics_and_names_are_nonempty() {
        let good: Vec<&str> = "a b.c manifests blobs uploads tags list referrers latest"
            .split(' ')
            .chain([SHA])
            .collect();
        let odd: Vec<&str> = "%2e . .. : sha256: \u{e9} v2 _catalog /"
            .split(' ')
            .chain([&SHA[..20]])
            .collect();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            // xorshift64: deterministic and dependency-free, enough to shake out panics.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut routed = 0;
        for _ in 0..5000 {
            let mut path = String::from(if next() % 8 == 0 { "" } else { "/v2" });
            for _ in 0..next() % 8 {
                let r = next();
                path.push('/');
                let pick = |from: &[&'static str]| from[(r >> 8) as usize % from.len()];
                match r % 8 {
                    0 => path.push(char::from((r >> 8) as u8)),
                    1 => path.push_str(pick(&odd)),
                    _ => path.push_str(pick(&good)),
                }
            }
            if let Ok(route) = parse(&path) {
                assert!(!route.name().is_some_and(str::is_empty), "{path:?}");
                routed += usize::from(route.name().is_some());
            }
        }
        assert!(
            routed > 100,
            "generator too hostile to test the Ok path: {routed}"
        );
    }
}

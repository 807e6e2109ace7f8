//! The one place where a failure becomes an HTTP status and an OCI error body.
//!
//! Every layer has its own small error type; [`ProxyError`] gathers them and
//! [`ProxyError::status`] / [`ProxyError::code`] decide what a client sees. Anything a client
//! did wrong is a 4xx with a distribution-spec code; an upstream failure names the registry.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use oci_spec::distribution::{ErrorCode, ErrorInfoBuilder, ErrorResponseBuilder};

use crate::body::{full, ProxyBody};
use crate::reference::NameError;
use crate::route::RouteError;
use crate::upstream::UpstreamError;

/// The challenge portcullis answers so that docker offers its credentials.
pub const CLIENT_CHALLENGE: &str = r#"Basic realm="portcullis""#;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Name(#[from] NameError),
    /// An image name pointed at a registry the configuration does not list.
    #[error("registry {0} is not configured in portcullis; it will not be contacted")]
    RegistryNotAllowed(String),
    #[error("{0}: no default push registry is configured; push to a fully qualified name such as <portcullis>/registry.example.com/{0}")]
    NoPushRegistry(String),
    #[error("{name}: {what} not found in any search registry (tried {tried})")]
    NotFound {
        name: String,
        what: &'static str,
        tried: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("manifest larger than {0} bytes")]
    ManifestTooLarge(usize),
    #[error("{method} is not supported on {route}")]
    MethodNotAllowed { method: String, route: &'static str },
    #[error("upstream {registry} served a manifest whose digest is {actual}, not the requested {expected}")]
    ManifestDigestMismatch {
        registry: String,
        expected: String,
        actual: String,
    },
    #[error("authentication required")]
    Unauthorized,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("reading the request body: {0}")]
    ClientBody(String),
    #[error("every search registry failed: {0}")]
    SearchFailed(String),
    /// Refused by a policy rule; the message names the rule and says what to do.
    #[error("{0}")]
    Denied(Denial),
    #[error("{0}")]
    DigestMismatch(String),
    #[error("{0}")]
    UploadUnknown(String),
    #[error("staging the push: {0}")]
    Staging(String),
    /// A bounded resource is full for now (upload sessions); the message says what to wait for.
    #[error("{0}")]
    TooManyRequests(String),
    /// A blob `HEAD` refused by policy where a push would be refused too. containers/image
    /// clients start a push with it, and a `HEAD` answer has no body for the reason; as
    /// "unknown" the client goes on to the upload, whose `403` says why.
    #[error("{0}")]
    RefusedHead(String),
    /// A read of a manifest reference that is neither a tag nor a digest: nothing can exist
    /// there, so it is unknown (the spec's 404), and nothing is asked upstream.
    #[error("manifest unknown: {0}")]
    NoSuchReference(String),
    /// The upstream refused to delete a manifest by tag the way distribution 2.x does
    /// (`400 DIGEST_INVALID`): it does not delete tags, which the spec calls `UNSUPPORTED`.
    #[error("{registry} does not delete tags; delete the manifest by digest instead")]
    TagDeleteUnsupported { registry: String },
    /// An upload chunk whose `Content-Range` does not start where the upload stands.
    #[error("{0}")]
    RangeInvalid(String),
    /// Refused by policy without a rule that decided it: a short name that resolves to more
    /// than one place, or a rule that could not be evaluated (fail closed).
    #[error("{0}")]
    Refused(String),
    /// Signatures a signature policy needs could not be read (a lookaside store or the
    /// registry's attachment down, slow or malformed): the image is not let through.
    #[error("signatures cannot be read, so the image is refused: {0}")]
    SignatureStore(String),
}

/// An error and its causes, `outer: cause: root`, for logs and messages (`Display` names
/// only the outermost, and hyper's or rustls's outermost says little).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a policy rule refused, kept apart so the audit line, the metric and the client's
/// message are made from the same facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The image reference as the user would write it.
    pub reference: String,
    /// The rule's id, or "default".
    pub rule: String,
    pub action: DenialAction,
    /// The rule's own message.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialAction {
    Deny,
    /// Refused until the same operation is repeated within this many minutes.
    Confirm {
        within_minutes: u64,
    },
}

/// The text clients print verbatim (and integration tests assert).
impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Denial {
            reference,
            rule,
            action,
            message,
        } = self;
        match action {
            DenialAction::Deny => write!(f, "{reference}: denied by rule {rule}: {message}"),
            DenialAction::Confirm { within_minutes } => write!(
                f,
                "{reference}: {message} (rule {rule}). To confirm, run the same command again within {within_minutes} minutes."
            ),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(RouteError::NotFound(_)) => StatusCode::NOT_FOUND,
            ProxyError::Route(_) | ProxyError::Name(_) | ProxyError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::RegistryNotAllowed(_) | ProxyError::NoPushRegistry(_) => {
                StatusCode::FORBIDDEN
            }
            ProxyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::ManifestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ManifestDigestMismatch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::Upstream(e) => e.status(),
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::SearchFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::DigestMismatch(_) => StatusCode::BAD_REQUEST,
            ProxyError::UploadUnknown(_) => StatusCode::NOT_FOUND,
            ProxyError::Staging(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RefusedHead(_) => StatusCode::NOT_FOUND,
            ProxyError::NoSuchReference(_) => StatusCode::NOT_FOUND,
            ProxyError::TagDeleteUnsupported { .. } => StatusCode::BAD_REQUEST,
            ProxyError::RangeInvalid(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ProxyError::Refused(_) => StatusCode::FORBIDDEN,
            ProxyError::SignatureStore(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            // DENIED is for policy. An upstream that is down, slow or misbehaving, and
            // portcullis's own staging failing, are outages: distribution's UNAVAILABLE,
            // which its clients know. Credentials an upstream refused stay UNAUTHORIZED.
            ProxyError::Upstream(e) if e.status() == StatusCode::UNAUTHORIZED => {
                Code::Oci(ErrorCode::Unauthorized)
            }
            ProxyError::Upstream(_) | ProxyError::SearchFailed(_) | ProxyError::Staging(_) => {
                Code::Unavailable
            }
            ProxyError::Route(RouteError::Name(NameError::InvalidDigest(_)))
            | ProxyError::Name(NameError::InvalidDigest(_)) => Code::Oci(ErrorCode::DigestInvalid),
            ProxyError::Route(RouteError::Name(NameError::InvalidTag(_)))
            | ProxyError::Name(NameError::InvalidTag(_)) => Code::Oci(ErrorCode::ManifestInvalid),
            ProxyError::Route(RouteError::NotFound(_)) => Code::Oci(ErrorCode::NameUnknown),
            ProxyError::Route(_) | ProxyError::Name(_) => Code::Oci(ErrorCode::NameInvalid),
            ProxyError::RegistryNotAllowed(_)
            | ProxyError::NoPushRegistry(_)
            | ProxyError::Denied(_) => Code::Oci(ErrorCode::Denied),
            ProxyError::NotFound { what, .. } => match *what {
                "manifest" => Code::Oci(ErrorCode::ManifestUnknown),
                "blob" => Code::Oci(ErrorCode::BlobUnknown),
                _ => Code::Oci(ErrorCode::NameUnknown),
            },
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => {
                Code::Oci(ErrorCode::Unsupported)
            }
            ProxyError::ManifestTooLarge(_) => Code::Oci(ErrorCode::ManifestInvalid),
            ProxyError::MethodNotAllowed { .. } => Code::Oci(ErrorCode::Unsupported),
            ProxyError::ManifestDigestMismatch { .. } => Code::Oci(ErrorCode::DigestInvalid),
            ProxyError::Unauthorized => Code::Oci(ErrorCode::Unauthorized),
            ProxyError::DigestMismatch(_) => Code::Oci(ErrorCode::DigestInvalid),
            ProxyError::UploadUnknown(_) => Code::Oci(ErrorCode::BlobUploadUnknown),
            ProxyError::TooManyRequests(_) => Code::Oci(ErrorCode::TooManyRequests),
            ProxyError::RefusedHead(_) => Code::Oci(ErrorCode::BlobUnknown),
            ProxyError::NoSuchReference(_) => Code::Oci(ErrorCode::ManifestUnknown),
            ProxyError::TagDeleteUnsupported { .. } => Code::Oci(ErrorCode::Unsupported),
            ProxyError::RangeInvalid(_) => Code::Oci(ErrorCode::BlobUploadInvalid),
            ProxyError::Refused(_) => Code::Oci(ErrorCode::Denied),
            ProxyError::SignatureStore(_) => Code::Unavailable,
        }
    }

    /// Refused by policy or configuration (the access line's `decision=deny`).
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            ProxyError::RegistryNotAllowed(_)
                | ProxyError::NoPushRegistry(_)
                | ProxyError::Denied(_)
                | ProxyError::RefusedHead(_)
                | ProxyError::Refused(_)
        )
    }

    /// A path that did not route, for a request with `method`. A `GET` or `HEAD` of a manifest
    /// reference that cannot be a tag is unknown rather than malformed (the spec's 404); a
    /// malformed digest stays `DIGEST_INVALID`, and a `PUT` or `DELETE` stays 400 (the spec
    /// says a tag "MUST match" its grammar and gives no other code for it).
    pub fn from_route(e: RouteError, method: &Method) -> ProxyError {
        match e {
            RouteError::Name(NameError::InvalidTag(why))
                if *method == Method::GET || *method == Method::HEAD =>
            {
                ProxyError::NoSuchReference(why)
            }
            e => ProxyError::Route(e),
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        error_response(self.status(), self.code(), &self.to_string())
    }
}

/// An error code in an OCI error body: the distribution spec's, or distribution's
/// `UNAVAILABLE` (which the spec does not list but every distribution client knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Oci(ErrorCode),
    Unavailable,
}

/// A distribution-spec error response. Used for every error portcullis itself answers.
pub fn error_response(status: StatusCode, code: Code, message: &str) -> Response<ProxyBody> {
    let body = match code {
        Code::Oci(code) => ErrorInfoBuilder::default()
            .code(code)
            .message(message.to_owned())
            .build()
            .and_then(|info| ErrorResponseBuilder::default().errors(vec![info]).build())
            .ok()
            .and_then(|r| serde_json::to_vec(&r).ok()),
        Code::Unavailable => serde_json::to_vec(&serde_json::json!({
            "errors": [{ "code": "UNAVAILABLE", "message": message }]
        }))
        .ok(),
    }
    .unwrap_or_else(|| br#"{"errors":[{"code":"UNKNOWN"}]}"#.to_vec());
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CLIENT_CHALLENGE),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response<ProxyBody>) -> serde_json::Value {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    /// The variant's name. No wildcard arm: a new variant does not compile until it is named
    /// here, and `every_variant_maps_to_its_status_code_and_an_oci_error_body` then fails until
    /// it has a case.
    fn variant(e: &ProxyError) -> &'static str {
        match e {
            ProxyError::Route(_) => "Route",
            ProxyError::Name(_) => "Name",
            ProxyError::RegistryNotAllowed(_) => "RegistryNotAllowed",
            ProxyError::NoPushRegistry(_) => "NoPushRegistry",
            ProxyError::NotFound { .. } => "NotFound",
            ProxyError::BadRequest(_) => "BadRequest",
            ProxyError::ManifestTooLarge(_) => "ManifestTooLarge",
            ProxyError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ProxyError::ManifestDigestMismatch { .. } => "ManifestDigestMismatch",
            ProxyError::Unauthorized => "Unauthorized",
            ProxyError::Upstream(_) => "Upstream",
            ProxyError::ClientBody(_) => "ClientBody",
            ProxyError::SearchFailed(_) => "SearchFailed",
            ProxyError::Denied(_) => "Denied",
            ProxyError::DigestMismatch(_) => "DigestMismatch",
            ProxyError::UploadUnknown(_) => "UploadUnknown",
            ProxyError::Staging(_) => "Staging",
            ProxyError::TooManyRequests(_) => "TooManyRequests",
            ProxyError::RefusedHead(_) => "RefusedHead",
            ProxyError::NoSuchReference(_) => "NoSuchReference",
            ProxyError::TagDeleteUnsupported { .. } => "TagDeleteUnsupported",
            ProxyError::RangeInvalid(_) => "RangeInvalid",
            ProxyError::Refused(_) => "Refused",
            ProxyError::SignatureStore(_) => "SignatureStore",
        }
    }

    /// Every name `variant` returns, in declaration order.
    const VARIANTS: &[&str] = &[
        "Route",
        "Name",
        "RegistryNotAllowed",
        "NoPushRegistry",
        "NotFound",
        "BadRequest",
        "ManifestTooLarge",
        "MethodNotAllowed",
        "ManifestDigestMismatch",
        "Unauthorized",
        "Upstream",
        "ClientBody",
        "SearchFailed",
        "Denied",
        "DigestMismatch",
        "UploadUnknown",
        "Staging",
        "TooManyRequests",
        "RefusedHead",
        "NoSuchReference",
        "TagDeleteUnsupported",
        "RangeInvalid",
        "Refused",
        "SignatureStore",
    ];

    fn denial(action: DenialAction) -> ProxyError {
        ProxyError::Denied(Denial {
            reference: "registry.example.com/team/app:1".into(),
            rule: "no-app".into(),
            action,
            message: "app is retired".into(),
        })
    }

    /// (error, status, OCI code, whether the access line says `decision=deny`)
    #[rustfmt::skip]
    fn cases() -> Vec<(ProxyError, u16, &'static str, bool)> {
        let upstream = |e| ProxyError::Upstream(e);
        vec![
            (ProxyError::Route(RouteError::NotFound("/x".into())), 404, "NAME_UNKNOWN", false),
            (ProxyError::Route(RouteError::InvalidPath("/v2/%".into())), 400, "NAME_INVALID", false),
            (ProxyError::Route(RouteError::Name(NameError::InvalidDigest("sha256:zz".into()))), 400, "DIGEST_INVALID", false),
            (ProxyError::Route(RouteError::Name(NameError::InvalidTag(".x".into()))), 400, "MANIFEST_INVALID", false),
            (ProxyError::Name(NameError::InvalidName("UPPER".into())), 400, "NAME_INVALID", false),
            (ProxyError::Name(NameError::InvalidDigest("sha256:zz".into())), 400, "DIGEST_INVALID", false),
            (ProxyError::Name(NameError::InvalidTag(".x".into())), 400, "MANIFEST_INVALID", false),
            (ProxyError::RegistryNotAllowed("evil.example.net".into()), 403, "DENIED", true),
            (ProxyError::NoPushRegistry("app".into()), 403, "DENIED", true),
            (ProxyError::NotFound { name: "fedora".into(), what: "manifest", tried: "a, b".into() }, 404, "MANIFEST_UNKNOWN", false),
            (ProxyError::NotFound { name: "fedora".into(), what: "blob", tried: "a".into() }, 404, "BLOB_UNKNOWN", false),
            (ProxyError::NotFound { name: "fedora".into(), what: "repository", tried: "a".into() }, 404, "NAME_UNKNOWN", false),
            (ProxyError::BadRequest("no".into()), 400, "UNSUPPORTED", false),
            (ProxyError::ManifestTooLarge(4), 413, "MANIFEST_INVALID", false),
            (ProxyError::MethodNotAllowed { method: "PATCH".into(), route: "manifests" }, 405, "UNSUPPORTED", false),
            (ProxyError::ManifestDigestMismatch { registry: "r".into(), expected: "sha256:a".into(), actual: "sha256:b".into() }, 502, "DIGEST_INVALID", false),
            (ProxyError::Unauthorized, 401, "UNAUTHORIZED", false),
            (upstream(UpstreamError::Timeout { registry: "docker.io".into(), after: std::time::Duration::from_secs(5) }), 504, "UNAVAILABLE", false),
            (upstream(UpstreamError::Connect { registry: "docker.io".into(), message: "refused".into() }), 502, "UNAVAILABLE", false),
            (upstream(UpstreamError::CredentialsRefused { registry: "r".into(), status: StatusCode::UNAUTHORIZED, client_credentials: true }), 401, "UNAUTHORIZED", false),
            (upstream(UpstreamError::CredentialsRefused { registry: "r".into(), status: StatusCode::UNAUTHORIZED, client_credentials: false }), 502, "UNAVAILABLE", false),
            (ProxyError::ClientBody("reset".into()), 400, "UNSUPPORTED", false),
            (ProxyError::SearchFailed("a: down".into()), 502, "UNAVAILABLE", false),
            (denial(DenialAction::Deny), 403, "DENIED", true),
            (denial(DenialAction::Confirm { within_minutes: 5 }), 403, "DENIED", true),
            (ProxyError::DigestMismatch("sha256:a is not sha256:b".into()), 400, "DIGEST_INVALID", false),
            (ProxyError::UploadUnknown("u".into()), 404, "BLOB_UPLOAD_UNKNOWN", false),
            (ProxyError::Staging("disk full".into()), 503, "UNAVAILABLE", false),
            (ProxyError::TooManyRequests("too many upload sessions".into()), 429, "TOOMANYREQUESTS", false),
            (ProxyError::RefusedHead("blocked".into()), 404, "BLOB_UNKNOWN", true),
            (ProxyError::NoSuchReference("\".x\"".into()), 404, "MANIFEST_UNKNOWN", false),
            (ProxyError::TagDeleteUnsupported { registry: "corp.example.com".into() }, 400, "UNSUPPORTED", false),
            (ProxyError::RangeInvalid("starts at 10".into()), 416, "BLOB_UPLOAD_INVALID", false),
            (ProxyError::Refused("app is ambiguous".into()), 403, "DENIED", true),
            (ProxyError::SignatureStore("lookaside: down".into()), 503, "UNAVAILABLE", false),
        ]
    }

    #[tokio::test]
    async fn every_variant_maps_to_its_status_code_and_an_oci_error_body() {
        let cases = cases();
        let covered: std::collections::BTreeSet<&str> =
            cases.iter().map(|(e, ..)| variant(e)).collect();
        let all: std::collections::BTreeSet<&str> = VARIANTS.iter().copied().collect();
        assert_eq!(covered, all, "every ProxyError variant needs a case");
        for (err, status, code, denial) in cases {
            let message = err.to_string();
            assert_eq!(err.is_denial(), denial, "{message}");
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status, "{message}");
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            assert_eq!(
                content_type.as_ref().map(|v| v.as_bytes()),
                Some(&b"application/json"[..]),
                "{message}"
            );
            let json = body_json(resp).await;
            let errors = json["errors"].as_array().cloned().unwrap_or_default();
            assert_eq!(errors.len(), 1, "{message}: {json}");
            assert_eq!(errors[0]["code"], code, "{message}");
            assert_eq!(errors[0]["message"], message.as_str());
        }
    }

    #[test]
    fn a_denial_reads_exactly_as_clients_have_always_printed_it() {
        assert_eq!(
            denial(DenialAction::Deny).to_string(),
            "registry.example.com/team/app:1: denied by rule no-app: app is retired"
        );
        assert_eq!(
            denial(DenialAction::Confirm { within_minutes: 5 }).to_string(),
            "registry.example.com/team/app:1: app is retired (rule no-app). \
             To confirm, run the same command again within 5 minutes."
        );
    }

    #[test]
    fn reads_of_an_impossible_tag_are_unknown_and_everything_else_keeps_its_400() {
        let route = |path: &str, method: Method| {
            let e = crate::route::parse(path).expect_err("does not route");
            let e = ProxyError::from_route(e, &method);
            (e.status().as_u16(), e.code())
        };
        let unknown = (404, Code::Oci(ErrorCode::ManifestUnknown));
        let bad = "/v2/a/manifests/.INVALID_MANIFEST_NAME";
        assert_eq!(route(bad, Method::GET), unknown);
        assert_eq!(route(bad, Method::HEAD), unknown);
        let invalid = (400, Code::Oci(ErrorCode::ManifestInvalid));
        assert_eq!(route(bad, Method::PUT), invalid);
        assert_eq!(route(bad, Method::DELETE), invalid);
        let digest = (400, Code::Oci(ErrorCode::DigestInvalid));
        assert_eq!(
            route("/v2/a/manifests/sha256:totallywrong", Method::GET),
            digest
        );
        assert_eq!(route("/v2/a/blobs/latest", Method::HEAD), digest);
        let path = (400, Code::Oci(ErrorCode::NameInvalid));
        assert_eq!(route("/v2/a/manifests/%2e", Method::GET), path);
    }

    #[tokio::test]
    async fn unauthorized_carries_a_challenge_so_docker_sends_credentials() {
        let resp = ProxyError::Unauthorized.into_response();
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}

//! Authentication to upstream registries: `WWW-Authenticate` challenges, Bearer tokens
//! (cached until they expire) and Basic credentials.
//!
//! Credentials only ever go to the registry they are configured for, and token realms are
//! fetched only from hosts the configuration allows for that registry, so an upstream's
//! challenge cannot make portcullis call (or send secrets to) an arbitrary URL.

use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use sha2::{Digest as _, Sha256};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// The registry needs no authentication (its `/v2/` answered 200).
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// The challenge portcullis answers among every challenge of one `WWW-Authenticate`
    /// value: Bearer (with a realm) before Basic. Unknown schemes cannot be answered and are
    /// passed over.
    pub fn parse(value: &str) -> Option<Challenge> {
        Challenge::best([value])
    }

    /// [`Challenge::parse`] over every `WWW-Authenticate` header of a response: a registry
    /// may send Basic in one header and Bearer in another, in either order.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Challenge> {
        Challenge::best(
            headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    }

    fn best<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
        let mut basic = false;
        for value in values {
            // A syntax error ends the value: what precedes it was well formed, what follows
            // cannot be told apart from the error.
            for challenge in http_auth::parser::ChallengeParser::new(value).map_while(Result::ok) {
                if challenge.scheme.eq_ignore_ascii_case("basic") {
                    basic = true;
                } else if challenge.scheme.eq_ignore_ascii_case("bearer") {
                    let get = |k: &str| {
                        challenge
                            .params
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(k))
                            .map(|(_, v)| v.to_unescaped())
                    };
                    if let Some(realm) = get("realm") {
                        return Some(Challenge::Bearer {
                            realm,
                            service: get("service"),
                            scope: get("scope"),
                        });
                    }
                }
            }
        }
        basic.then_some(Challenge::Basic)
    }
}

/// Who a request is made as. The token cache is keyed by this, so one client's token is
/// never used for another client's request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Anonymous,
    /// Credentials from the configuration.
    Configured {
        username: String,
        password: String,
    },
    /// The client's own Basic credentials, passed through where the configuration allows.
    Client {
        username: String,
        password: String,
    },
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => write!(f, "Anonymous"),
            Identity::Configured { username, .. } => write!(f, "Configured({username}:<redacted>)"),
            Identity::Client { username, .. } => write!(f, "Client({username}:<redacted>)"),
        }
    }
}

impl Identity {
    /// A cache key that does not hold the secret itself.
    pub fn cache_key(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".to_owned(),
            Identity::Configured { username, password }
            | Identity::Client { username, password } => {
                let mut h = Sha256::new();
                h.update(username.as_bytes());
                h.update([0]);
                h.update(password.as_bytes());
                hex::encode(h.finalize())
            }
        }
    }

    pub fn basic_header(&self) -> Option<HeaderValue> {
        match self {
            Identity::Anonymous => None,
            Identity::Configured { username, password }
            | Identity::Client { username, password } => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
                v.set_sensitive(true);
                Some(v)
            }
        }
    }

    /// The client's `Authorization: Basic ...`, if it sent one.
    pub fn from_client_basic(value: &HeaderValue) -> Option<Identity> {
        let s = value.to_str().ok()?;
        let (scheme, b64) = s.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (username, password) = decoded.split_once(':')?;
        Some(Identity::Client {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// A Bearer token with its expiry; `Debug` never shows the token.
#[derive(Clone)]
pub struct Token {
    pub value: HeaderValue,
    pub expires_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Token(<redacted>, expires in {:?})",
            self.expires_at.saturating_duration_since(Instant::now())
        )
    }
}

/// A cap on a token's cached lifetime: `expires_in` is any u64, and `Instant + Duration`
/// panics past the clock's range. A year is forever for a cache.
const MAX_LIFETIME_SECS: u64 = 365 * 24 * 3600;

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Token {
    /// Parse a token service response. Tokens are renewed a little before they expire so a
    /// request does not race the expiry; the spec's default lifetime is 60 seconds.
    pub fn from_response(body: &[u8]) -> Option<Token> {
        let parsed: TokenResponse = serde_json::from_slice(body).ok()?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())?;
        let lifetime =
            Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(10, MAX_LIFETIME_SECS));
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(Token {
            value,
            expires_at: Instant::now() + lifetime.mul_f32(0.9),
        })
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

/// Does `host[:port]` (from a URL) match an allow-list entry (`host`, `host:port`, `*.domain`)?
pub fn host_allowed(entries: &[String], host: &str, port: Option<u16>) -> bool {
    let host = host.to_ascii_lowercase();
    entries.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let (entry_host, entry_port) = match entry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
                (h.to_owned(), p.parse::<u16>().ok())
            }
            _ => (entry.clone(), None),
        };
        let host_ok = match entry_host.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == entry_host,
        };
        host_ok && (entry_port.is_none() || entry_port == port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn parses_quoted_commas_escapes_and_other_schemes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://t/x", scope="repository:a:pull,push", error="insufficient_scope""#,
        );
        match c {
            Some(Challenge::Bearer { scope, .. }) => {
                assert_eq!(scope.as_deref(), Some("repository:a:pull,push"))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(
            Challenge::parse(r#"Bearer service="x""#),
            None,
            "a Bearer challenge needs a realm"
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            })
        );
    }

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Option<Challenge> {
        Some(Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        })
    }

    #[test]
    fn bearer_is_preferred_to_basic_in_one_header_whichever_comes_first() {
        let hub =
            r#"realm="https://auth.example.com/token",service="reg",scope="repository:a:pull""#;
        let want = bearer(
            "https://auth.example.com/token",
            Some("reg"),
            Some("repository:a:pull"),
        );
        assert_eq!(
            Challenge::parse(&format!(r#"Basic realm="Registry", Bearer {hub}"#)),
            want
        );
        assert_eq!(
            Challenge::parse(&format!(r#"Bearer {hub}, Basic realm="Registry""#)),
            want
        );
    }

    #[test]
    fn an_unknown_scheme_before_bearer_is_passed_over() {
        assert_eq!(
            Challenge::parse(
                r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Bearer realm="https://t/x""#
            ),
            bearer("https://t/x", None, None)
        );
        assert_eq!(
            Challenge::parse(r#"Negotiate, Basic realm="r""#),
            Some(Challenge::Basic)
        );
    }

    #[test]
    fn quoted_commas_and_escaped_quotes_stay_inside_their_parameter() {
        assert_eq!(
            Challenge::parse(
                r#"Basic realm="a, Bearer realm=\"x\"", Bearer realm="https://t/\"q\"", scope="repository:a:pull,push""#
            ),
            bearer("https://t/\"q\"", None, Some("repository:a:pull,push"))
        );
    }

    #[test]
    fn every_www_authenticate_header_of_a_response_is_read() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="Registry""#),
        );
        headers.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://t/token",service="s""#),
        );
        assert_eq!(
            Challenge::from_headers(&headers),
            bearer("https://t/token", Some("s"), None)
        );
        let mut basic_only = http::HeaderMap::new();
        basic_only.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="Registry""#),
        );
        assert_eq!(Challenge::from_headers(&basic_only), Some(Challenge::Basic));
        assert_eq!(Challenge::from_headers(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_bearer_without_a_realm_leaves_basic_to_answer() {
        assert_eq!(
            Challenge::parse(r#"Bearer service="x", Basic realm="r""#),
            Some(Challenge::Basic)
        );
    }

    #[test]
    fn client_basic_credentials_round_trip_and_stay_redacted() {
        let id = Identity::Configured {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let header = id.basic_header().expect("header");
        let back = Identity::from_client_basic(&header).expect("parses");
        assert!(
            matches!(back, Identity::Client { ref username, ref password } if username == "alice" && password == "s3cret")
        );
        assert!(!format!("{back:?}").contains("s3cret"));
        assert!(!back.cache_key().contains("s3cret"));
        assert_ne!(back.cache_key(), Identity::Anonymous.cache_key());
        assert_eq!(
            Identity::from_client_basic(&HeaderValue::from_static("Bearer abc")),
            None
        );
    }

    #[test]
    fn token_responses() {
        let t = Token::from_response(br#"{"token":"abc","expires_in":300}"#).expect("token");
        assert_eq!(t.value.to_str().ok(), Some("Bearer abc"));
        assert!(t.is_fresh());
        assert!(!format!("{t:?}").contains("abc"));
        assert!(Token::from_response(br#"{"access_token":"xyz"}"#).is_some());
        assert!(Token::from_response(br#"{"token":""}"#).is_none());
        assert!(Token::from_response(b"not json").is_none());
    }

    /// Found writing fuzz/fuzz_targets/www_authenticate.rs: a token service may send any u64, and
    /// `Instant + Duration` panics past the clock's range.
    #[test]
    fn a_token_with_a_huge_lifetime_is_cached_for_a_year_instead_of_panicking() {
        let t = Token::from_response(br#"{"token":"abc","expires_in":18446744073709551615}"#)
            .expect("token");
        assert!(t.is_fresh());
        let left = t.expires_at.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_secs(MAX_LIFETIME_SECS), "{left:?}");
    }

    #[test]
    fn host_allow_lists() {
        let entries = vec![
            "auth.docker.io".to_owned(),
            "*.cloudflare.example".to_owned(),
            "127.0.0.1:5009".to_owned(),
        ];
        assert!(host_allowed(&entries, "auth.docker.io", Some(443)));
        assert!(host_allowed(&entries, "x.cloudflare.example", None));
        assert!(!host_allowed(&entries, "cloudflare.example", None));
        assert!(!host_allowed(&entries, "evilcloudflare.example", None));
        assert!(host_allowed(&entries, "127.0.0.1", Some(5009)));
        assert!(!host_allowed(&entries, "127.0.0.1", Some(5010)));
        assert!(!host_allowed(&entries, "auth.docker.io.evil.net", None));
    }
}

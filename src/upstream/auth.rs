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
    /// Parse a `WWW-Authenticate` header value. Unknown schemes are `None`: we cannot answer them.
    pub fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key="quoted, value", key2=token` as in RFC 7235 auth-params.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
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

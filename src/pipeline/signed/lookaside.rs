//! Simple-signing signatures from a lookaside store (containers-registries.d(5) `lookaside`):
//! `<base>/<repository>@sha256=<hex>/signature-1`, `-2`, ... until the first 404, as
//! containers/image reads them.
//!
//! The base URL is the admin's (a registries.d file), never a client's: the path below it is
//! a repository name the route parser validated (no `..`, no `?`), so a client can only pick
//! which of the configured store's signatures are read. Redirects are not followed (a store
//! could otherwise send portcullis anywhere), answers are bounded in size and count, and
//! anything but 200 or 404 is an error: a store that cannot be read decides nothing.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::policy::signature::verify::lookaside_url;
use crate::reference::Digest;

/// containers/image reads at most this many bytes of one signature (`iolimits.MaxSignatureBodySize`).
pub const MAX_SIGNATURE_BYTES: usize = 4 << 20;
/// More signatures than this for one manifest is not a store anyone curates.
pub const MAX_SIGNATURES: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookasideError {
    #[error("signature store {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("signature store {url} did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("signature store {url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("signature store {url}: a signature over {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("signature store for {manifest} holds more than {limit} signatures")]
    TooMany { manifest: String, limit: usize },
    #[error("signature store URL {0} is neither http(s):// nor file://")]
    Scheme(String),
    #[error("signature store: {0}")]
    Url(String),
}

/// Reads lookaside stores over http(s) and from `file://` directories.
pub struct Lookaside {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl Lookaside {
    pub fn new(tls: rustls::ClientConfig, timeout: Duration) -> Lookaside {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Lookaside {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeout,
        }
    }

    /// Every signature of `digest` (`sha256:<hex>`) in `repository` (the path without the
    /// registry) under the store at `base`, in the store's order.
    pub async fn signatures(
        &self,
        base: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<Vec<Bytes>, LookasideError> {
        let mut found = Vec::new();
        // lookaside_url counts from 0 (index 0 is `signature-1`), as containers/image does.
        for index in 0..=MAX_SIGNATURES {
            let url = lookaside_url(base, repository, digest, index)
                .map_err(|e| LookasideError::Url(e.to_string()))?;
            let Some(signature) = self.one(&url).await? else {
                return Ok(found);
            };
            if index == MAX_SIGNATURES {
                return Err(LookasideError::TooMany {
                    manifest: digest.to_string(),
                    limit: MAX_SIGNATURES,
                });
            }
            found.push(signature);
        }
        Ok(found)
    }

    /// One signature, or `None` when there is no such file.
    async fn one(&self, url: &Url) -> Result<Option<Bytes>, LookasideError> {
        match url.scheme() {
            "file" => read_file(url).await,
            "http" | "https" => match tokio::time::timeout(self.timeout, self.get(url)).await {
                Ok(result) => result,
                Err(_) => Err(LookasideError::Timeout {
                    url: url.to_string(),
                    after: self.timeout,
                }),
            },
            _ => Err(LookasideError::Scheme(url.to_string())),
        }
    }

    async fn get(&self, url: &Url) -> Result<Option<Bytes>, LookasideError> {
        let unreachable = |message: String| LookasideError::Unreachable {
            url: url.to_string(),
            message,
        };
        let req = Request::get(url.as_str())
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => {
                return Err(LookasideError::Status {
                    url: url.to_string(),
                    status,
                })
            }
        }
        match Limited::new(resp.into_body(), MAX_SIGNATURE_BYTES)
            .collect()
            .await
        {
            Ok(body) => Ok(Some(body.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(LookasideError::TooLarge {
                url: url.to_string(),
                limit: MAX_SIGNATURE_BYTES,
            }),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

async fn read_file(url: &Url) -> Result<Option<Bytes>, LookasideError> {
    let failed = |message: String| LookasideError::Unreachable {
        url: url.to_string(),
        message,
    };
    let path: PathBuf = url
        .to_file_path()
        .map_err(|()| failed("not a local path".to_owned()))?;
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        file.take(MAX_SIGNATURE_BYTES as u64 + 1)
            .read_to_end(&mut buf)?;
        Ok(Some(buf))
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(|e| failed(e.to_string()))?;
    match read {
        Some(buf) if buf.len() > MAX_SIGNATURE_BYTES => Err(LookasideError::TooLarge {
            url: url.to_string(),
            limit: MAX_SIGNATURE_BYTES,
        }),
        other => Ok(other.map(Bytes::from)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn digest() -> Digest {
        DIGEST.parse().expect("digest")
    }

    /// `signature-<n>` of DIGEST under the store directory `dir`, spelt out as
    /// containers/image's docs do rather than through [`lookaside_url`].
    fn at(dir: &std::path::Path, repository: &str, n: usize) -> std::path::PathBuf {
        let hex = DIGEST.trim_start_matches("sha256:");
        dir.join(format!("{repository}@sha256={hex}/signature-{n}"))
    }

    fn lookaside() -> Lookaside {
        let tls = crate::tls::client_config(None, false).expect("tls");
        Lookaside::new(tls, Duration::from_secs(2))
    }

    #[tokio::test]
    async fn a_file_store_is_read_until_the_first_missing_signature() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Url::from_directory_path(dir.path())
            .expect("url")
            .to_string();
        let at = |n| at(dir.path(), "team/app", n);
        std::fs::create_dir_all(at(1).parent().expect("parent")).expect("mkdir");
        std::fs::write(at(1), b"one").expect("write");
        std::fs::write(at(2), b"two").expect("write");
        std::fs::write(at(4), b"after a gap: not read").expect("write");
        let found = lookaside()
            .signatures(&base, "team/app", &digest())
            .await
            .expect("signatures");
        assert_eq!(
            found,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        let none = lookaside()
            .signatures(&base, "other/app", &digest())
            .await
            .expect("no signatures");
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn an_oversized_signature_and_an_unreachable_store_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Url::from_directory_path(dir.path())
            .expect("url")
            .to_string();
        let first = at(dir.path(), "team/app", 1);
        std::fs::create_dir_all(first.parent().expect("parent")).expect("mkdir");
        std::fs::write(&first, vec![0u8; MAX_SIGNATURE_BYTES + 1]).expect("write");
        let big = lookaside().signatures(&base, "team/app", &digest()).await;
        assert!(
            matches!(big, Err(LookasideError::TooLarge { .. })),
            "{big:?}"
        );

        // Nothing listens on port 9 of loopback: refused, not "no signatures".
        let err = lookaside()
            .signatures("http://127.0.0.1:9/sigs", "team/app", &digest())
            .await;
        assert!(
            matches!(err, Err(LookasideError::Unreachable { .. })),
            "{err:?}"
        );
        let err = lookaside()
            .signatures("ftp://127.0.0.1/sigs", "team/app", &digest())
            .await;
        assert!(matches!(err, Err(LookasideError::Scheme(_))), "{err:?}");
    }

    #[tokio::test]
    async fn a_store_answering_other_than_200_or_404_is_an_error_and_redirects_are_not_followed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/x\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let base = format!("http://{addr}/sigs");
        let err = lookaside().signatures(&base, "team/app", &digest()).await;
        assert!(
            matches!(
                err,
                Err(LookasideError::Status {
                    status: StatusCode::FOUND,
                    ..
                })
            ),
            "{err:?}"
        );
    }
}

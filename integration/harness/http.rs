//! Test clients: a hyper HTTPS client for well-formed requests and a raw TLS client
//! for bytes no well-behaved client would send.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::rt::{block_on, client_tls};

const TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP response, fully read.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `code`s of an OCI error body (`{"errors":[{"code":..}]}`), empty if none.
    pub fn oci_codes(&self) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        value["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["code"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A client trusting one CA: `https(&ca_file).get("https://127.0.0.1:5000/v2/")`.
pub fn https(ca_file: &Path) -> HttpsClient {
    HttpsClient {
        ca_file: ca_file.to_path_buf(),
        headers: Vec::new(),
    }
}

pub struct HttpsClient {
    ca_file: PathBuf,
    headers: Vec<(String, String)>,
}

impl HttpsClient {
    /// Adds a header to every request.
    pub fn header(mut self, name: &str, value: &str) -> HttpsClient {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn get(&self, url: &str) -> Result<Response, String> {
        self.request("GET", url, Vec::new())
    }

    /// Sends one request; any transport or body error (a short body included) is `Err`.
    pub fn request(&self, method: &str, url: &str, body: Vec<u8>) -> Result<Response, String> {
        let tls = client_tls(&self.ca_file);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        block_on(async move {
            let client: Client<_, Full<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector);
            let exchange = async {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                Ok(Response {
                    status,
                    headers,
                    body: body.to_bytes().to_vec(),
                })
            };
            tokio::time::timeout(TIMEOUT, exchange)
                .await
                .map_err(|_| format!("no complete answer from {url} within {TIMEOUT:?}"))?
        })
    }
}

/// Sends `request` verbatim over TLS to `addr` and reads until the server closes
/// (or stops talking for a few seconds). Returns the status code and the raw answer.
pub fn raw_tls(addr: SocketAddr, ca_file: &Path, request: &[u8]) -> Result<(u16, String), String> {
    let tls = Arc::new(client_tls(ca_file));
    let request = request.to_vec();
    block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                // A reset after the answer was sent still leaves us the answer.
                Ok(Err(e)) if answer.is_empty() => return Err(format!("read: {e}")),
                Ok(Err(_)) => break,
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| text.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no HTTP status line in answer: {text:?}"))?;
        Ok((status, text))
    })
}

/// The OCI error codes in the body of a raw answer.
pub fn raw_oci_codes(answer: &str) -> Vec<String> {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Tolerate chunked encoding: the JSON object sits between the first '{' and last '}'.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) if start < end => &body[start..=end],
        _ => body,
    };
    Response {
        status: 0,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
    .oci_codes()
}

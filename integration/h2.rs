//! HTTP/2 clients on portcullis's TLS listeners (the registry endpoint and the intercepted
//! `CONNECT` sessions of the forward proxy), against a real distribution registry: curl
//! `--http2` for pulls, pushes, HEAD answers and denials (HTTP/1.1 alongside), an in-process
//! hyper HTTP/2 client for many slow streams on one connection and for streams reset
//! mid-body, and what the Go clients negotiate when h2 is offered.
//!
//! Every access line carries `version=`, so which protocol served a request is read off
//! portcullis's own log, and its `peer=` (address and port) names the TCP connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::harness::image::{sha256_digest, XorShift, MANIFEST_MEDIA_TYPE};
use crate::harness::matrix::{backend_has_manifest, Door, Flavor, Img, Listener, Proto};
use crate::harness::net::wait_for;
use crate::harness::process::describe;
use crate::harness::prometheus::http_get;
use crate::harness::rt::client_tls;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const EXAMPLE: &str = "registry.example.com";
const HUB: &str = "docker.io";

/// A repository rule to be denied, and a content rule that makes every push to docker.io
/// staged by portcullis (so a reset upload there would be written to staging).
const POLICY: &str = r#"
public_registries = ["docker.io"]

[[rule]]
id = "blocked-repo"
message = "team/blocked is closed"
action = "deny"
repository = "team/blocked"

[[private]]
id = "internal-label"
message = "the image is labelled internal"
action = "reject"
labels = ["com.example.classification=internal"]
"#;

/// registry.example.com and docker.io (both real registries) behind one portcullis.
struct World {
    example: Registry,
    hub: Registry,
    proxy: Portcullis,
    _dir: TestDir,
}

impl World {
    fn start() -> World {
        let example = Registry::start(Auth::None);
        let hub = Registry::start(Auth::None);
        let dir = TestDir::new("h2");
        let policy = dir.write("policy.toml", POLICY);
        let config = ProxyConfig::new()
            .search(&[EXAMPLE])
            .policy_path(policy)
            .registry(Upstream::new(EXAMPLE, &example))
            .registry(Upstream::new(HUB, &hub));
        World {
            example,
            hub,
            proxy: Portcullis::start(&config.toml()),
            _dir: dir,
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.proxy.staging_dir()
    }

    fn staging_files(&self) -> Vec<String> {
        std::fs::read_dir(self.staging_dir())
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let admin = self.proxy.admin_addr().expect("admin listener");
        http_get(admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn healthy(&self) -> bool {
        let admin = self.proxy.admin_addr().expect("admin listener");
        matches!(http_get(admin, "/healthz"), Ok((200, _)))
    }

    /// The access lines of requests whose path contains `needle`.
    fn access_lines(&self, needle: &str) -> Vec<String> {
        self.proxy
            .log()
            .lines()
            .filter(|l| l.contains("request peer="))
            .filter(|l| l.contains(needle) && l.contains(" status="))
            .map(str::to_owned)
            .collect()
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    XorShift::fresh().fill(&mut bytes);
    bytes
}

/// Uploads `bytes` as a blob of `repository` straight into `registry` (no portcullis).
fn seed_blob(registry: &Registry, repository: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let client = https(&registry.ca_file()).header("Content-Type", "application/octet-stream");
    let url = format!("{}/v2/{repository}/blobs/uploads/", registry.url());
    let start = client
        .request("POST", &url, Vec::new())
        .expect("seed upload");
    assert_eq!(start.status, 202, "{}", start.text());
    let location = start.header("Location").expect("an upload Location");
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = if location.starts_with("https://") {
        format!("{location}{sep}digest={digest}")
    } else {
        format!("{}{location}{sep}digest={digest}", registry.url())
    };
    let put = client
        .request("PUT", &url, bytes.to_vec())
        .expect("seed blob");
    assert_eq!(put.status, 201, "{}", put.text());
    digest
}

/// Whether what curl `-I` wrote is header blocks only (curl writes a HEAD's headers where a
/// body would go, and fails on a reset stream, which `error` then holds).
fn head_only(answer: &crate::harness::matrix::Answer) -> bool {
    let text = answer.text();
    answer.error.is_none()
        && text.starts_with("HTTP/")
        && text.ends_with("\r\n\r\n")
        && text
            .split("\r\n\r\n")
            .all(|block| block.is_empty() || block.starts_with("HTTP/"))
}

/// `value` of the first `key=value` field of a log line.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

#[test]
fn curl_over_http2_and_http1_pulls_pushes_and_is_denied_on_the_registry_endpoint_and_the_proxy() {
    let w = World::start();
    let img = Img::plain();
    img.seed(&w.example, "team/app", "1");
    let blocked = Img::plain();
    blocked.seed(&w.example, "team/blocked", "1");
    let big = random_bytes(64 << 20);
    let big_digest = seed_blob(&w.example, "team/app", &big);
    let accept = [("Accept", MANIFEST_MEDIA_TYPE)];
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    for listener in [Listener::Registry, Listener::Forward] {
        let door = Door::of(&w.proxy, listener);
        for proto in [Proto::H2, Proto::H1] {
            let version = match proto {
                Proto::H2 => "2",
                Proto::H1 => "1.1",
            };
            let row = format!("{} {}", listener.as_str(), proto.as_str());
            let manifest = door.repo_url(EXAMPLE, "team/app", "manifests/1");

            let get = door.send(proto, "GET", &manifest, &accept, None);
            check(
                get.status == 200
                    && get.version == version
                    && get.body == img.manifest
                    && get.header("docker-content-digest") == Some(img.digest.as_str()),
                format!("{row} manifest GET: {}", get.detail()),
            );

            // HEAD: the GET's headers, Content-Length included, no body, no reset (curl
            // fails on a reset stream or a body where none may be).
            let head = door.send(proto, "HEAD", &manifest, &accept, None);
            check(
                head.status == 200
                    && head.version == version
                    && head_only(&head)
                    && head.header("content-length")
                        == Some(img.manifest.len().to_string().as_str())
                    && head.header("docker-content-digest") == Some(img.digest.as_str()),
                format!("{row} manifest HEAD: {} {:?}", head.detail(), head.headers),
            );

            let blob = door.repo_url(EXAMPLE, "team/app", &format!("blobs/{big_digest}"));
            // The large body over HTTP/2 only: HTTP/1.1 large bodies are core.rs's, and each
            // of these takes seconds through a debug build.
            if proto == Proto::H2 {
                let started = Instant::now();
                let got = door.send(proto, "GET", &blob, &[], None);
                println!("{row}: 64 MiB blob GET in {:?}", started.elapsed());
                check(
                    got.status == 200
                        && got.version == version
                        && got.body.len() == big.len()
                        && sha256_digest(&got.body) == big_digest,
                    format!(
                        "{row} 64 MiB blob GET: {} ({} bytes)",
                        got.summary(),
                        got.body.len()
                    ),
                );
            }
            let head = door.send(proto, "HEAD", &blob, &[], None);
            check(
                head.status == 200
                    && head_only(&head)
                    && head.header("content-length") == Some(big.len().to_string().as_str()),
                format!(
                    "{row} 64 MiB blob HEAD: {} {:?}",
                    head.detail(),
                    head.headers
                ),
            );

            for flavor in [Flavor::Monolithic, Flavor::Chunked] {
                let pushed = Img::plain();
                let repository = format!(
                    "team/pushed-{}-{}-{flavor:?}",
                    listener.as_str(),
                    proto.as_str()
                )
                .to_lowercase();
                let push = door.push(proto, EXAMPLE, &repository, "1", &pushed, flavor);
                check(
                    push.completed
                        && push.last.version == version
                        && backend_has_manifest(&w.example, &repository, &pushed.digest),
                    format!("{row} {flavor:?} push: {}", push.steps.join(" → ")),
                );
            }

            let denied_url = door.repo_url(EXAMPLE, "team/blocked", "manifests/1");
            let denied = door.send(proto, "GET", &denied_url, &accept, None);
            check(
                denied.status == 403
                    && denied.version == version
                    && denied.oci_codes() == ["DENIED"]
                    && denied.text().contains("blocked-repo"),
                format!("{row} denied GET: {}", denied.detail()),
            );
            let denied = door.send(proto, "HEAD", &denied_url, &accept, None);
            check(
                denied.status == 403 && head_only(&denied),
                format!("{row} denied HEAD: {}", denied.detail()),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let h2_lines = w
        .access_lines("/team/app/")
        .iter()
        .filter(|l| log_field(l, "version") == Some("HTTP/2.0"))
        .count();
    assert!(
        h2_lines >= 8,
        "portcullis logged {h2_lines} HTTP/2 requests for team/app:\n{}",
        w.proxy.log()
    );
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = BoxBody<Bytes, BoxError>;

/// A request body fed through a channel; an `Err` sent makes the client reset the stream.
struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }
}

fn empty() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// One HTTP/2 connection to one of portcullis's TLS listeners, from a hyper client.
struct H2 {
    send: SendRequest<ReqBody>,
    /// The client end of the TCP connection (for the forward proxy: the `CONNECT`ed one).
    local: SocketAddr,
    /// `https://127.0.0.1:<port>/v2/registry.example.com` or `https://registry.example.com/v2`.
    base: String,
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl H2 {
    /// Connects, with small flow-control windows so that slow readers hold the sender back.
    async fn connect(proxy: &Portcullis, listener: Listener, ca: &Path) -> H2 {
        let (tcp, server_name, base) = match listener {
            Listener::Registry => (
                tokio::net::TcpStream::connect(proxy.addr())
                    .await
                    .expect("connect"),
                "127.0.0.1".to_owned(),
                format!("https://{}/v2/{EXAMPLE}", proxy.addr()),
            ),
            Listener::Forward => {
                let addr = proxy.proxy_addr().expect("proxy listener");
                let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.write_all(
                    format!("CONNECT {EXAMPLE}:443 HTTP/1.1\r\nHost: {EXAMPLE}:443\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .expect("write CONNECT");
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    tcp.read_exact(&mut byte)
                        .await
                        .expect("read CONNECT answer");
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                assert!(head.starts_with("HTTP/1.1 200"), "CONNECT: {head}");
                (tcp, EXAMPLE.to_owned(), format!("https://{EXAMPLE}/v2"))
            }
            Listener::Mirror => unreachable!("not used here"),
        };
        let local = tcp.local_addr().expect("local address");
        let mut tls = client_tls(ca);
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "portcullis did not choose h2"
        );
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(1 << 20)
            .adaptive_window(false)
            .handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
        let driver = tokio::spawn(conn);
        H2 {
            send,
            local,
            base,
            driver,
        }
    }

    fn url(&self, repository: &str, rest: &str) -> String {
        format!("{}/{repository}/{rest}", self.base)
    }

    /// Sends a request on this connection (a new stream); the response head.
    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<::http::Response<hyper::body::Incoming>, hyper::Error> {
        let mut request = ::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(body).expect("request");
        let mut send = self.send.clone();
        send.ready().await?;
        send.send_request(request).await
    }

    /// A `Location` as an absolute URL on this connection.
    fn follow(&self, location: &str) -> String {
        if location.starts_with("https://") {
            return location.to_owned();
        }
        let origin = self
            .base
            .find("/v2")
            .map(|i| &self.base[..i])
            .unwrap_or(&self.base);
        format!("{origin}{location}")
    }
}

/// Reads a body to its end, sleeping `pause` after every frame; its digest and length.
async fn read_slowly(
    body: hyper::body::Incoming,
    pause: Duration,
) -> Result<(String, usize), hyper::Error> {
    let mut body = body;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            context.update(&data);
            len += data.len();
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok((format!("sha256:{}", hex::encode(context.finish())), len))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn sixty_four_slow_concurrent_blob_downloads_share_one_http2_connection_and_arrive_intact() {
    const STREAMS: usize = 64;
    const SIZE: usize = 2 << 20;
    let w = World::start();
    let blobs: Vec<(String, usize)> = std::thread::scope(|s| {
        let seeders: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..STREAMS / 8)
                        .map(|_| {
                            (
                                seed_blob(&w.example, "team/many", &random_bytes(SIZE)),
                                SIZE,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        seeders
            .into_iter()
            .flat_map(|h| h.join().expect("seeder"))
            .collect()
    });
    let ca = w.proxy.ca_file();
    let admin = w.proxy.admin_addr().expect("admin listener");
    let started = Instant::now();
    let (local, results, open_during) = runtime().block_on(async {
        let h2 = H2::connect(&w.proxy, Listener::Registry, &ca).await;
        // Every stream's head first, so all 64 are open at once, their windows full.
        let heads = futures_util::future::join_all(blobs.iter().map(|(digest, _)| {
            let url = h2.url("team/many", &format!("blobs/{digest}"));
            let h2 = &h2;
            async move { h2.send("GET", &url, &[], empty()).await }
        }))
        .await;
        let open_during = tokio::task::spawn_blocking(move || {
            http_get(admin, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default()
        })
        .await
        .expect("metrics");
        let readers: Vec<_> = heads
            .into_iter()
            .map(|head| {
                tokio::spawn(async move {
                    let resp = head.map_err(|e| format!("no answer: {e:?}"))?;
                    if resp.status() != 200 {
                        return Err(format!("status {}", resp.status()));
                    }
                    read_slowly(resp.into_body(), Duration::from_millis(2))
                        .await
                        .map_err(|e| format!("body: {e:?}"))
                })
            })
            .collect();
        let mut results = Vec::new();
        for reader in readers {
            results.push(reader.await.expect("reader task"));
        }
        assert!(!h2.driver.is_finished(), "the connection ended");
        (h2.local, results, open_during)
    });
    let took = started.elapsed();
    println!(
        "{STREAMS} streams × {} MiB on one HTTP/2 connection, read slowly: {took:?}",
        SIZE >> 20
    );
    for ((digest, size), result) in blobs.iter().zip(&results) {
        assert_eq!(
            result.as_ref().map(|(d, n)| (d.as_str(), *n)),
            Ok((digest.as_str(), *size)),
            "stream for {digest}"
        );
    }
    let open = open_during
        .lines()
        .find(|l| l.starts_with("portcullis_open_connections{listener=\"registry\"}"));
    assert_eq!(
        open.and_then(|l| l.split_whitespace().last()),
        Some("1"),
        "open connections while the 64 streams were open: {open:?}"
    );
    let lines = w.access_lines("/team/many/blobs/");
    assert_eq!(lines.len(), STREAMS, "{lines:#?}");
    let peer = local.to_string();
    for line in &lines {
        assert_eq!(log_field(line, "peer"), Some(peer.as_str()), "{line}");
        assert_eq!(log_field(line, "version"), Some("HTTP/2.0"), "{line}");
        assert_eq!(log_field(line, "status"), Some("200"), "{line}");
    }
}

/// What a reset upload leaves behind: its digest, the answer the client saw, and how many
/// files staging held just before the reset.
struct ResetUpload {
    digest: String,
    outcome: String,
    staged_before_reset: usize,
}

/// Starts an upload at `url_start` on `h2`, sends `sent` bytes of a blob of `total`, waits
/// `pause`, then resets the stream.
async fn upload_then_reset(
    h2: &H2,
    url_start: String,
    sent: usize,
    total: usize,
    pause: Duration,
    staging: &Path,
) -> ResetUpload {
    let bytes = random_bytes(total);
    let digest = sha256_digest(&bytes);
    let start = h2
        .send("POST", &url_start, &[("Content-Length", "0")], empty())
        .await
        .expect("upload start");
    assert_eq!(start.status(), 202, "upload start {url_start}");
    let location = start
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_owned();
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}digest={digest}", h2.follow(&location));
    let (tx, rx) = mpsc::channel(4);
    let len = total.to_string();
    let headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", len.as_str()),
    ];
    let put = h2.send("PUT", &url, &headers, ChannelBody(rx).boxed());
    let feed = async move {
        for chunk in bytes[..sent].chunks(64 * 1024) {
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return 0;
            }
        }
        // Let the bytes reach portcullis (and upstream, or staging) before the reset.
        tokio::time::sleep(pause).await;
        let staged = std::fs::read_dir(staging).map(|d| d.count()).unwrap_or(0);
        let _ = tx.send(Err("client gives up".into())).await;
        staged
    };
    let (answer, staged_before_reset) = tokio::join!(put, feed);
    let outcome = match answer {
        Ok(resp) => format!("answered {}", resp.status()),
        Err(e) => format!("reset ({e})"),
    };
    ResetUpload {
        digest,
        outcome,
        staged_before_reset,
    }
}

#[test]
fn streams_reset_mid_body_leave_the_connection_serving_and_no_upload_behind() {
    const SIZE: usize = 16 << 20;
    let mut w = World::start();
    let img = Img::plain();
    img.seed(&w.example, "team/app", "1");
    let blobs: Vec<String> = (0..4)
        .map(|_| seed_blob(&w.example, "team/big", &random_bytes(SIZE)))
        .collect();
    let ca = w.proxy.ca_file();
    let staging = w.staging_dir();
    let mut resets = Vec::new();
    for listener in [Listener::Registry, Listener::Forward] {
        let rt = runtime();
        let (uploads, healthy_after) = rt.block_on(async {
            let h2 = H2::connect(&w.proxy, listener, &ca).await;
            let mut downloads = Vec::new();
            for digest in &blobs {
                let resp = h2
                    .send(
                        "GET",
                        &h2.url("team/big", &format!("blobs/{digest}")),
                        &[],
                        empty(),
                    )
                    .await
                    .expect("blob GET");
                assert_eq!(resp.status(), 200);
                downloads.push(resp.into_body());
            }
            // Streams 0 and 1: read a MiB, then drop (RST_STREAM CANCEL). 2 and 3 go on.
            let mut dropped = Vec::new();
            for mut body in downloads.drain(..2) {
                let mut read = 0;
                while read < 1 << 20 {
                    match body.frame().await {
                        Some(Ok(f)) => read += f.into_data().map(|d| d.len()).unwrap_or(0),
                        other => panic!("download ended early: {other:?}"),
                    }
                }
                dropped.push(read);
                drop(body);
            }
            let readers: Vec<_> = downloads
                .into_iter()
                .map(|b| tokio::spawn(read_slowly(b, Duration::ZERO)))
                .collect();
            let pause = Duration::from_millis(300);
            let start = h2.url("team/upload", "blobs/uploads/");
            let mut uploads =
                vec![upload_then_reset(&h2, start, 4 << 20, SIZE, pause, &staging).await];
            if listener == Listener::Registry {
                // docker.io pushes are staged by portcullis: these are written to staging,
                // the first reset while portcullis waits for the body, the others at once,
                // while it may still be writing what came before.
                let start = format!(
                    "https://{}/v2/{HUB}/team/staged/blobs/uploads/",
                    w.proxy.addr()
                );
                let staged =
                    upload_then_reset(&h2, start.clone(), 4 << 20, SIZE, pause, &staging).await;
                assert_eq!(
                    staged.staged_before_reset, 1,
                    "the upload was not being staged"
                );
                uploads.push(staged);
                for _ in 0..4 {
                    let upload = upload_then_reset(
                        &h2,
                        start.clone(),
                        2 << 20,
                        SIZE,
                        Duration::ZERO,
                        &staging,
                    );
                    uploads.push(upload.await);
                }
            }
            for (reader, digest) in readers.into_iter().zip(&blobs[2..]) {
                let (got, len) = reader.await.expect("reader").expect("download completes");
                assert_eq!((got.as_str(), len), (digest.as_str(), SIZE));
            }
            // The same connection still serves.
            let after = h2
                .send(
                    "GET",
                    &h2.url("team/app", "manifests/1"),
                    &[("Accept", MANIFEST_MEDIA_TYPE)],
                    empty(),
                )
                .await
                .expect("a request after the resets");
            let status = after.status();
            let (manifest, _) = read_slowly(after.into_body(), Duration::ZERO)
                .await
                .expect("manifest body");
            assert_eq!((status.as_u16(), manifest), (200, img.digest.clone()));
            // HEAD answers on it: the GET's headers, no DATA, no reset.
            let accept = [("Accept", MANIFEST_MEDIA_TYPE)];
            for (repository, status, length) in [
                ("team/app", 200, Some(img.manifest.len().to_string())),
                ("team/blocked", 403, None),
            ] {
                let head = h2
                    .send("HEAD", &h2.url(repository, "manifests/1"), &accept, empty())
                    .await
                    .expect("HEAD answered");
                assert_eq!(head.status(), status, "HEAD {repository}");
                if let Some(length) = length {
                    assert_eq!(
                        head.headers()
                            .get("content-length")
                            .and_then(|v| v.to_str().ok()),
                        Some(length.as_str())
                    );
                }
                let body = head.into_body().collect().await.expect("no reset");
                assert!(body.to_bytes().is_empty(), "HEAD {repository} had a body");
            }
            assert!(!h2.driver.is_finished(), "the connection ended");
            (uploads, true)
        });
        assert!(healthy_after);
        resets.push((listener, uploads));
    }
    assert!(w.proxy.is_running(), "portcullis exited");
    assert!(w.healthy(), "portcullis is not healthy after the resets");
    for (listener, uploads) in &resets {
        for upload in uploads {
            println!(
                "{listener:?}: reset upload {}: {}",
                upload.digest, upload.outcome
            );
            assert!(
                !upload.outcome.starts_with("answered 201"),
                "{listener:?}: a reset upload was committed"
            );
            assert!(
                !w.example.has_blob(&upload.digest),
                "half-written blob upstream"
            );
            assert!(
                !w.hub.has_blob(&upload.digest),
                "half-written blob on docker.io"
            );
        }
    }
    let door = Door::of(&w.proxy, Listener::Registry);
    for (_, uploads) in &resets {
        let head = door.send(
            Proto::H2,
            "HEAD",
            &door.repo_url(
                EXAMPLE,
                "team/upload",
                &format!("blobs/{}", uploads[0].digest),
            ),
            &[],
            None,
        );
        assert_eq!(head.status, 404, "{}", head.detail());
    }
    let emptied = wait_for(Duration::from_secs(5), || {
        w.staging_files().is_empty().then_some(())
    });
    assert!(
        emptied.is_some(),
        "the reset staged upload left {:?} in {}",
        w.staging_files(),
        w.staging_dir().display()
    );
    let metrics = w.metrics();
    let sessions = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_staging_sessions "));
    assert_eq!(sessions, Some("portcullis_staging_sessions 0"), "{metrics}");
}

#[test]
fn skopeo_and_dockerd_speak_http1_to_portcullis_even_though_it_offers_h2() {
    let w = World::start();
    let image = OciImage::random(&[1 << 20]);
    let cert_dir = w.proxy.cert_dir().display().to_string();
    let skopeo = Skopeo::new();
    let reference = format!("docker://{}/{EXAMPLE}/team/skopeo:1", w.proxy.addr());
    let push = skopeo.copy(
        &image.reference(),
        &reference,
        &["--dest-cert-dir", &cert_dir],
    );
    assert!(push.status.success(), "{}", describe(&push));
    let pulled = TestDir::new("h2-pull");
    let pull = skopeo.copy(
        &reference,
        &format!("dir:{}", pulled.path().display()),
        &["--src-cert-dir", &cert_dir],
    );
    assert!(pull.status.success(), "{}", describe(&pull));
    crate::harness::image::assert_same_image(&image, pulled.path());
    let versions = |needle: &str| {
        let mut v: Vec<String> = w
            .access_lines(needle)
            .iter()
            .filter_map(|l| log_field(l, "version").map(str::to_owned))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    println!("skopeo: {:?}", versions("/team/skopeo/"));
    assert_eq!(versions("/team/skopeo/"), ["HTTP/1.1"], "{}", w.proxy.log());

    // The same through the forward proxy's intercepted session (the CA from SSL_CERT_FILE,
    // not a cert dir): still HTTP/1.1.
    let proxy_url = format!("http://{}", w.proxy.proxy_addr().expect("proxy listener"));
    let ca = w.proxy.ca_file().display().to_string();
    let inspect = skopeo.run_with_env(
        &[
            "inspect",
            "--raw",
            &format!("docker://{EXAMPLE}/team/skopeo:1"),
        ],
        &[("HTTPS_PROXY", &proxy_url), ("SSL_CERT_FILE", &ca)],
    );
    assert!(inspect.status.success(), "{}", describe(&inspect));
    assert_eq!(inspect.stdout, image.manifest_bytes());
    let forwarded: Vec<String> = w
        .access_lines("path=/v2/team/skopeo/")
        .iter()
        .filter_map(|l| log_field(l, "version").map(str::to_owned))
        .collect();
    println!("skopeo through the forward proxy: {forwarded:?}");
    assert!(
        !forwarded.is_empty() && forwarded.iter().all(|v| v == "HTTP/1.1"),
        "{forwarded:?}"
    );

    w.example
        .seed(&OciImage::random(&[1 << 20]), "team/docker:1");
    let dockerd = Dockerd::start();
    let name = format!("{}/{EXAMPLE}/team/docker:1", w.proxy.addr());
    let pull = dockerd.docker(&["pull", &name]);
    assert!(pull.status.success(), "{}", describe(&pull));
    let pushed = format!("{}/{EXAMPLE}/team/docker-pushed:1", w.proxy.addr());
    dockerd.docker_ok(&["tag", &name, &pushed]);
    let push = dockerd.docker(&["push", &pushed]);
    assert!(push.status.success(), "{}", describe(&push));
    println!("dockerd pull: {:?}", versions("/team/docker/"));
    println!("dockerd push: {:?}", versions("/team/docker-pushed/"));
    assert_eq!(versions("/team/docker/"), ["HTTP/1.1"]);
    assert_eq!(versions("/team/docker-pushed/"), ["HTTP/1.1"]);
}

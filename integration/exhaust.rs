//! Closing every way around the gate by exhaustion: connections that never send a request,
//! headers trickled a byte at a time, idle keep-alive connections, floods of idle TCP
//! connections, and the connection limit itself, on every listener (the registry endpoint,
//! the docker.io mirror, and the forward proxy with its intercepted CONNECT sessions).
//!
//! Every test runs portcullis with small limits so the timeouts are seconds, not minutes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::harness::net::free_port;
use crate::harness::prometheus::http_get;
use crate::harness::rt::block_on;
use crate::harness::sockets::*;
use crate::harness::*;

const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long past a timeout a close may come on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, Debug)]
enum Listener {
    Registry,
    Mirror,
    /// A TLS session inside `CONNECT registry.example.com:443` on the forward proxy.
    Intercepted,
}

const TLS_LISTENERS: [Listener; 3] = [Listener::Registry, Listener::Mirror, Listener::Intercepted];

struct World {
    portcullis: Portcullis,
    _registry: Registry,
}

/// portcullis with small limits, a real registry as registry.example.com (and docker.io,
/// for the mirror), and every listener on.
fn world(more: impl FnOnce(ProxyConfig, &Registry) -> ProxyConfig) -> World {
    let registry = Registry::start(Auth::None);
    let config = ProxyConfig::new()
        .search(&["registry.example.com"])
        .registry(Upstream::new("registry.example.com", &registry))
        .registry(Upstream::new("docker.io", &registry))
        .set("listen", "mirror", format!("127.0.0.1:{}", free_port()))
        .set("limits", "max_connections", MAX_CONNECTIONS as i64)
        .set(
            "limits",
            "header_read_timeout_secs",
            HEADER_TIMEOUT.as_secs() as i64,
        )
        .set("limits", "idle_timeout_secs", IDLE_TIMEOUT.as_secs() as i64)
        .set("limits", "tls_handshake_timeout_secs", 2);
    let portcullis = Portcullis::start(&more(config, &registry).toml());
    World {
        portcullis,
        _registry: registry,
    }
}

impl World {
    fn mirror(&self) -> SocketAddr {
        self.portcullis.mirror_addr().expect("mirror listener")
    }

    fn proxy(&self) -> SocketAddr {
        self.portcullis.proxy_addr().expect("proxy listener")
    }

    fn admin(&self) -> SocketAddr {
        self.portcullis.admin_addr().expect("admin listener")
    }

    /// A verified TLS session on `listener`, offering `alpn`.
    async fn open(
        &self,
        listener: Listener,
        alpn: &[&[u8]],
    ) -> Result<TlsStream<TcpStream>, String> {
        let ca = self.portcullis.ca_file();
        match listener {
            Listener::Registry => tls(self.portcullis.addr(), &ca, "127.0.0.1", alpn).await,
            Listener::Mirror => tls(self.mirror(), &ca, "127.0.0.1", alpn).await,
            Listener::Intercepted => tls_via(self.proxy(), "registry.example.com", &ca, alpn).await,
        }
    }

    /// `GET /v2/` on `listener` answers, over a fresh connection.
    async fn served(&self, listener: Listener) -> Result<u16, String> {
        let mut s = self.open(listener, &[b"http/1.1"]).await?;
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.example.com\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_response(&mut s).await.map(|(status, _)| status)
    }

    /// The value of one sample on the admin listener's `/metrics` (0 when absent).
    fn metric(&self, name_and_labels: &str) -> f64 {
        let (status, body) = http_get(self.admin(), "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

type Check<'a> = Pin<Box<dyn Future<Output = (String, Option<Duration>)> + 'a>>;

/// Waits for every check, then lists those that were not closed about `after` from their
/// start.
async fn closes(checks: Vec<Check<'_>>, after: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    for (what, closed) in futures_util::future::join_all(checks).await {
        match closed {
            Some(t) if t + Duration::from_millis(300) >= after && t <= after + SLACK => {}
            Some(t) => problems.push(format!(
                "{what}: closed after {t:?}, expected about {after:?}"
            )),
            None => problems.push(format!("{what}: still open after {:?}", after + SLACK)),
        }
    }
    problems
}

/// Trickles `head` a byte every 50 ms; when the server closed the connection, or `None`
/// if it was still open `limit` after the start.
async fn slowloris<S: AsyncRead + AsyncWrite>(
    stream: S,
    head: String,
    limit: Duration,
) -> Option<Duration> {
    let (mut r, mut w) = tokio::io::split(stream);
    tokio::select! {
        closed = closed_within(&mut r, limit) => closed,
        _ = async {
            trickle(&mut w, head.as_bytes(), Duration::from_millis(50)).await;
            tokio::time::sleep(limit).await;
        } => None,
    }
}

#[test]
fn connections_that_send_no_request_are_closed_after_the_header_timeout_on_every_listener() {
    let w = world(|c, _| c);
    let limit = HEADER_TIMEOUT + SLACK + SLACK;
    let problems = block_on(async {
        let mut checks: Vec<Check> = Vec::new();
        for listener in TLS_LISTENERS {
            let mut h1 = w
                .open(listener, &[b"http/1.1"])
                .await
                .expect("TLS (http/1.1)");
            checks.push(Box::pin(async move {
                (
                    format!("{listener:?}: idle TLS (http/1.1)"),
                    closed_within(&mut h1, limit).await,
                )
            }));
            let mut h2 = w.open(listener, &[b"h2"]).await.expect("TLS (h2)");
            h2.write_all(H2_PREFACE_AND_SETTINGS)
                .await
                .expect("h2 preface");
            checks.push(Box::pin(async move {
                (
                    format!("{listener:?}: h2 preface and SETTINGS, then silence"),
                    closed_within(&mut h2, limit).await,
                )
            }));
        }
        // Plain TCP that sends nothing: the proxy's CONNECT listener and the admin listener
        // (HTTP), and a TLS listener before the handshake (its timeout is also 2 s here).
        for (what, addr) in [
            ("proxy: idle TCP", w.proxy()),
            ("admin: idle TCP", w.admin()),
            ("registry: no TLS handshake", w.portcullis.addr()),
        ] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            checks.push(Box::pin(async move {
                (what.to_string(), closed_within(&mut s, limit).await)
            }));
        }
        closes(checks, HEADER_TIMEOUT).await
    });
    assert!(problems.is_empty(), "{problems:#?}\n{}", w.portcullis.log());
}

#[test]
fn headers_trickled_a_byte_at_a_time_are_cut_by_the_header_timeout() {
    let w = world(|c, _| c);
    let slow = "a".repeat(200);
    let head = format!("GET /v2/ HTTP/1.1\r\nHost: registry.example.com\r\nX-Slow: {slow}\r\n\r\n");
    let connect = format!("CONNECT registry.example.com:443 HTTP/1.1\r\nHost: registry.example.com\r\nX-Slow: {slow}\r\n\r\n");
    let limit = HEADER_TIMEOUT + SLACK + SLACK;
    let problems = block_on(async {
        let mut checks: Vec<Check> = Vec::new();
        for listener in TLS_LISTENERS {
            let s = w.open(listener, &[b"http/1.1"]).await.expect("TLS");
            let head = head.clone();
            checks.push(Box::pin(async move {
                (format!("{listener:?}"), slowloris(s, head, limit).await)
            }));
        }
        let proxy = TcpStream::connect(w.proxy()).await.expect("connect proxy");
        checks.push(Box::pin(async move {
            (
                "proxy: CONNECT head".to_string(),
                slowloris(proxy, connect, limit).await,
            )
        }));
        closes(checks, HEADER_TIMEOUT).await
    });
    assert!(problems.is_empty(), "{problems:#?}\n{}", w.portcullis.log());
}

#[test]
fn keep_alive_connections_are_closed_after_the_idle_timeout_not_the_header_timeout() {
    let w = world(|c, _| c);
    let limit = IDLE_TIMEOUT + SLACK + SLACK;
    let problems = block_on(async {
        let mut checks: Vec<Check> = Vec::new();
        for listener in TLS_LISTENERS {
            let mut s = w.open(listener, &[b"http/1.1"]).await.expect("TLS");
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.example.com\r\n\r\n")
                .await
                .expect("write");
            let (status, head) = read_response(&mut s).await.expect("a response to GET /v2/");
            assert_eq!(status, 200, "{listener:?}: {head}");
            checks.push(Box::pin(async move {
                (
                    format!("{listener:?}: HTTP/1.1 keep-alive"),
                    closed_within(&mut s, limit).await,
                )
            }));
        }
        let s = w
            .open(Listener::Registry, &[b"h2"])
            .await
            .expect("TLS (h2)");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .expect("h2 handshake");
        let request = ::http::Request::get("https://127.0.0.1/v2/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
            Instant::now()
        });
        let response = sender.send_request(request).await.expect("h2 GET /v2/");
        assert_eq!(response.status(), 200);
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        let start = Instant::now();
        checks.push(Box::pin(async move {
            let closed = tokio::time::timeout(limit, conn)
                .await
                .ok()
                .and_then(Result::ok)
                .map(|t| t - start);
            ("Registry: h2 keep-alive".to_string(), closed)
        }));
        closes(checks, IDLE_TIMEOUT).await
    });
    assert!(problems.is_empty(), "{problems:#?}\n{}", w.portcullis.log());
}

#[test]
fn an_idle_flood_on_every_listener_leaves_every_listener_serving_within_max_connections() {
    let w = world(|c, _| c);
    let per_listener = (open_files_limit().saturating_sub(2000) / 4).min(2000) as usize;
    let targets = [w.portcullis.addr(), w.mirror(), w.proxy()];
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let flood = std::thread::spawn(move || {
        block_on(async move {
            let floods =
                futures_util::future::join_all(targets.map(|a| idle_flood(a, per_listener))).await;
            let _ = opened_tx.send(floods.iter().map(Vec::len).collect::<Vec<_>>());
            // Held open until the test has measured.
            let _ = tokio::task::spawn_blocking(move || done_rx.recv()).await;
            drop(floods);
        })
    });
    let opened = opened_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the flood connected");
    let mut problems = Vec::new();
    block_on(async {
        for listener in TLS_LISTENERS {
            let start = Instant::now();
            match tokio::time::timeout(Duration::from_secs(5), w.served(listener)).await {
                Ok(Ok(200)) => eprintln!(
                    "{listener:?}: served in {:?} during the flood",
                    start.elapsed()
                ),
                other => problems.push(format!(
                    "{listener:?}: {other:?} after {:?}",
                    start.elapsed()
                )),
            }
        }
    });
    for listener in ["registry", "mirror", "proxy"] {
        let open = w.metric(&format!(
            "portcullis_open_connections{{listener=\"{listener}\"}}"
        ));
        let evicted = w.metric(&format!(
            "portcullis_connections_closed_total{{listener=\"{listener}\",reason=\"evicted\"}}"
        ));
        eprintln!("{listener}: {open} open, {evicted} idle connections closed to make room");
        if open > MAX_CONNECTIONS as f64 {
            problems.push(format!(
                "{listener}: {open} connections open, over max_connections"
            ));
        }
        if evicted < 1.0 {
            problems.push(format!(
                "{listener}: the flood never reached max_connections"
            ));
        }
    }
    let _ = done_tx.send(());
    let _ = flood.join();
    assert_eq!(
        opened,
        vec![per_listener; 3],
        "not every flood connection was accepted by the kernel"
    );
    assert!(problems.is_empty(), "{problems:#?}\n{}", w.portcullis.log());
}

#[test]
fn over_max_connections_a_new_connection_waits_for_a_free_slot_instead_of_being_refused() {
    let silent = SilentUpstream::start();
    let w = world(|c, registry| {
        c.registry(
            Upstream::at("slow.example.com", &silent.url(), registry.ca_file())
                .response_timeout_secs(4),
        )
    });
    let (waited, busy_answers) = block_on(async {
        let mut busy = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = w
                .open(Listener::Registry, &[b"http/1.1"])
                .await
                .expect("TLS");
            s.write_all(b"GET /v2/slow.example.com/team/app/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .expect("write");
            busy.push(s);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let served =
            tokio::time::timeout(Duration::from_secs(20), w.served(Listener::Registry)).await;
        let waited = start.elapsed();
        assert!(
            matches!(served, Ok(Ok(200))),
            "the connection over the limit was not served: {served:?} after {waited:?}"
        );
        let mut answers = Vec::new();
        for s in &mut busy {
            answers.push(read_response(s).await.map(|(status, _)| status));
        }
        (waited, answers)
    });
    eprintln!(
        "connection {} waited {waited:?} for a slot",
        MAX_CONNECTIONS + 1
    );
    assert!(
        waited >= Duration::from_millis(2500),
        "connection {} was served after {waited:?}, while all {MAX_CONNECTIONS} slots held a request \
         the upstream answers only after 4 s",
        MAX_CONNECTIONS + 1
    );
    assert!(waited <= Duration::from_secs(10), "it waited {waited:?}");
    assert!(
        busy_answers.iter().all(|a| matches!(a, Ok(s) if *s >= 500)),
        "the requests in flight were not answered (as upstream timeouts): {busy_answers:?}"
    );
    let waits = w.metric("portcullis_connection_limit_waits_total{listener=\"registry\"}");
    assert!(
        waits >= 1.0,
        "the wait at the limit was not counted:\n{}",
        w.portcullis.log()
    );
    let log = w.portcullis.log();
    assert_eq!(
        log.matches("reached max_connections").count(),
        1,
        "the limit was not logged once for the burst:\n{log}"
    );
}

#[test]
fn tunnel_hosts_without_a_port_mean_443_and_idle_tunnels_are_closed() {
    let silent = SilentUpstream::start();
    let target = silent.addr().to_string();
    let w = world(|c, _| {
        c.set(
            "forward",
            "tunnel_hosts",
            vec!["tunnel.example.com", target.as_str()],
        )
    });
    block_on(async {
        let (status, _) = connect_via(w.proxy(), "tunnel.example.com:5000")
            .await
            .expect("CONNECT :5000");
        assert_eq!(
            status, 403,
            "a tunnel_hosts entry without a port let another port through"
        );
        let (status, _) = connect_via(w.proxy(), "tunnel.example.com:443")
            .await
            .expect("CONNECT :443");
        assert_eq!(
            status, 200,
            "a tunnel_hosts entry without a port did not tunnel :443"
        );
        let (status, mut tunnel) = connect_via(w.proxy(), &target)
            .await
            .expect("CONNECT silent");
        assert_eq!(status, 200);
        let closed = closed_within(&mut tunnel, IDLE_TIMEOUT + SLACK + SLACK).await;
        assert!(
            closed.is_some_and(
                |t| t + Duration::from_millis(300) >= IDLE_TIMEOUT && t <= IDLE_TIMEOUT + SLACK
            ),
            "an idle tunnel closed after {closed:?}, expected about {IDLE_TIMEOUT:?}"
        );
    });
}

//! Closed-loop load generator for the manifest runs of integration/bench: N keep-alive
//! HTTP/1.1 connections over TLS, each sending one request after the other (like wrk), for
//! GET and HEAD alike. wrk cannot do HEAD: its parser waits for the body that a HEAD
//! response announces in Content-Length and never sends (wg/wrk#198).
//!
//! ```text
//! loadgen URL --cacert FILE --connections N [--threads 2] [--duration 10] [--warmup 1]
//!         [--method GET|HEAD] [--header 'Name: value']... [--rate R]
//! ```
//!
//! `--rate R` paces the connections to R requests per second in all (each connection sends
//! on a fixed schedule, R / N per second, phases spread over the interval), so latency is
//! measured below saturation: what a proxy adds to a request rather than how long requests
//! queue for a CPU. Latency then counts from the scheduled send time, so a stall that makes
//! later requests late is not hidden (no coordinated omission).
//!
//! All connections are opened (TCP + TLS) before the clock starts; then `--warmup` seconds
//! are not recorded, then `--duration` seconds are. Prints one JSON object: requests,
//! req/s, latency p50/p99/max in ms, and every kind of failure. Any failed request or
//! non-2xx answer makes the exit status 1, so a broken path cannot pass as a fast one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{watch, Barrier};
use tokio_rustls::TlsConnector;

struct Args {
    url: Uri,
    cacert: String,
    connections: usize,
    threads: usize,
    duration: Duration,
    warmup: Duration,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Requests per second over all connections; None: as fast as answers come.
    rate: Option<f64>,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\nusage: loadgen URL --cacert FILE --connections N [--threads T] [--duration S] [--warmup S] [--method GET|HEAD] [--header 'Name: value']... [--rate R]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut url, mut cacert, mut connections) = (None, None, None);
    let (mut threads, mut duration, mut warmup) = (2, 10.0, 1.0);
    let mut method = Method::GET;
    let mut headers = Vec::new();
    let mut rate = None;
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        let number = |s: String| s.parse::<f64>().unwrap_or_else(|_| usage(&format!("{s}?")));
        match arg.as_str() {
            "--cacert" => cacert = Some(value()),
            "--connections" => connections = Some(number(value()) as usize),
            "--threads" => threads = number(value()) as usize,
            "--duration" => duration = number(value()),
            "--warmup" => warmup = number(value()),
            "--rate" => rate = Some(number(value())).filter(|r| *r > 0.0),
            "--method" => {
                method = value().parse().unwrap_or_else(|_| usage("bad --method"));
            }
            "--header" => {
                let h = value();
                let (k, v) = h
                    .split_once(':')
                    .unwrap_or_else(|| usage("--header 'Name: value'"));
                let k = HeaderName::try_from(k.trim()).unwrap_or_else(|_| usage("header name"));
                let v = HeaderValue::try_from(v.trim()).unwrap_or_else(|_| usage("header value"));
                headers.push((k, v));
            }
            s if !s.starts_with("--") && url.is_none() => {
                url = Some(s.parse::<Uri>().unwrap_or_else(|_| usage("bad URL")));
            }
            s => usage(&format!("unknown argument {s}")),
        }
    }
    Args {
        url: url.unwrap_or_else(|| usage("URL missing")),
        cacert: cacert.unwrap_or_else(|| usage("--cacert missing")),
        connections: connections
            .filter(|&c| c > 0)
            .unwrap_or_else(|| usage("--connections")),
        threads: threads.max(1),
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        method,
        headers,
        rate,
    }
}

/// What one connection saw while the clock ran.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    /// Every request answered, warm-up and overrun included (for CPU per request).
    completed: u64,
    non_2xx: u64,
    errors: u64,
    reconnects: u64,
    last_error: Option<String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn connect(
    tls: &TlsConnector,
    addr: SocketAddr,
    name: &ServerName<'static>,
) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let stream = tls
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct Shared {
    args: Args,
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: TlsConnector,
    connected: Barrier,
}

/// One connection: connect, wait for the start, then request after request until `until`,
/// recording only what completes after `record_from`.
async fn client(shared: Arc<Shared>, index: usize, mut go: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let mut sender = connect(&shared.tls, shared.addr, &shared.name).await;
    shared.connected.wait().await;
    let _ = go.wait_for(|&go| go).await;
    let record_from = Instant::now() + shared.args.warmup;
    let until = record_from + shared.args.duration;
    // Paced: connection i sends at start + (i / N + k) * interval, k = 0, 1, 2, ...
    let interval = shared
        .args
        .rate
        .map(|r| Duration::from_secs_f64(shared.args.connections as f64 / r));
    let mut next = interval
        .map(|every| Instant::now() + every.mul_f64(index as f64 / shared.args.connections as f64));
    let path = shared
        .args
        .url
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let authority = shared
        .args
        .url
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    while Instant::now() < until {
        let s = match &mut sender {
            Ok(s) => s,
            Err(e) => {
                tally.errors += 1;
                tally.last_error = Some(e.clone());
                tokio::time::sleep(Duration::from_millis(10)).await;
                tally.reconnects += 1;
                sender = connect(&shared.tls, shared.addr, &shared.name).await;
                continue;
            }
        };
        let mut req = Request::builder()
            .method(shared.args.method.clone())
            .uri(path)
            .header(http::header::HOST, authority);
        for (k, v) in &shared.args.headers {
            req = req.header(k, v);
        }
        let req = req.body(Empty::new()).expect("a valid request");
        let sent = match (next, interval) {
            (Some(at), Some(every)) => {
                tokio::time::sleep_until(at.into()).await;
                next = Some(at + every);
                at
            }
            _ => Instant::now(),
        };
        let result = async {
            let resp = s
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            // A server may end a keep-alive connection (nginx after keepalive_requests):
            // like wrk, open a new one, which is not an error.
            let closing = resp
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            resp.into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>((status, closing))
        }
        .await;
        let done = Instant::now();
        tally.completed += u64::from(result.is_ok());
        if let Ok((_, true)) = result {
            tally.reconnects += 1;
            sender = connect(&shared.tls, shared.addr, &shared.name).await;
        }
        match result {
            Ok((status, _)) if record_from <= done && done <= until => {
                tally
                    .latencies_us
                    .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                if !status.is_success() {
                    tally.non_2xx += 1;
                }
            }
            Ok(_) => {}
            Err(e) => sender = Err(e),
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn tls_connector(cacert: &str) -> TlsConnector {
    let pem = std::fs::read(cacert).unwrap_or_else(|e| usage(&format!("{cacert}: {e}")));
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.unwrap_or_else(|e| usage(&format!("{cacert}: {e}")));
        roots
            .add(cert)
            .unwrap_or_else(|e| usage(&format!("{cacert}: {e}")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn main() {
    let args = parse_args();
    if args.url.scheme_str() != Some("https") {
        usage("only https:// URLs");
    }
    let host = args
        .url
        .host()
        .unwrap_or_else(|| usage("URL without host"))
        .to_owned();
    let port = args.url.port_u16().unwrap_or(443);
    let host_ip = host.trim_start_matches('[').trim_end_matches(']');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host_ip, port))
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| usage("cannot resolve the URL's host"));
    let name = ServerName::try_from(host_ip.to_owned()).unwrap_or_else(|_| usage("server name"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let shared = Arc::new(Shared {
        tls: tls_connector(&args.cacert),
        connected: Barrier::new(args.connections + 1),
        addr,
        name,
        args,
    });
    let (tallies, measured) = runtime.block_on(async {
        let (start, go) = watch::channel(false);
        let tasks: Vec<_> = (0..shared.args.connections)
            .map(|i| tokio::spawn(client(shared.clone(), i, go.clone())))
            .collect();
        shared.connected.wait().await;
        let _ = start.send(true);
        let mut tallies = Vec::new();
        for t in tasks {
            tallies.push(t.await.expect("a client task"));
        }
        (tallies, shared.args.duration)
    });

    let mut all: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let non_2xx: u64 = tallies.iter().map(|t| t.non_2xx).sum();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let reconnects: u64 = tallies.iter().map(|t| t.reconnects).sum();
    let completed: u64 = tallies.iter().map(|t| t.completed).sum();
    let last_error = tallies
        .iter()
        .find_map(|t| t.last_error.clone())
        .unwrap_or_default();
    println!(
        "{{\"requests\": {}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \
         \"completed\": {completed}, \"non_2xx\": {non_2xx}, \"errors\": {errors}, \
         \"reconnects\": {reconnects}, \
         \"last_error\": {:?}}}",
        all.len(),
        all.len() as f64 / measured.as_secs_f64(),
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
        last_error,
    );
    if all.is_empty() || non_2xx > 0 || errors > 0 {
        std::process::exit(1);
    }
}

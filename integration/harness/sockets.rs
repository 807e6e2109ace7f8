//! Raw sockets for the tests that misbehave on purpose: connections that complete TLS and
//! then say nothing, HTTP/2 prefaces followed by silence, headers trickled a byte at a time,
//! floods of idle TCP connections, CONNECT tunnels opened by hand, and an upstream that
//! accepts and never answers. All async: run them inside [`super::rt::block_on`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::rt::client_tls;

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a client sends first.
pub const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A TLS session to `addr`, verified against `ca_file` as `name`, offering `alpn`.
pub async fn tls(
    addr: SocketAddr,
    ca_file: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tls_over(tcp, ca_file, name, alpn).await
}

/// A TLS session over an established stream (a CONNECT tunnel, say).
pub async fn tls_over<S>(
    stream: S,
    ca_file: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = client_tls(ca_file);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("server name {name}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {name}: {e}"))
}

/// Sends `CONNECT authority` to the forward proxy and reads its answer head. Returns the
/// status and, on 200, the stream (now a tunnel).
pub async fn connect_via(proxy: SocketAddr, authority: &str) -> Result<(u16, TcpStream), String> {
    let mut tcp = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect {proxy}: {e}"))?;
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    // Byte by byte: nothing after the head may be consumed, it belongs to the tunnel.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            Ok(Ok(_)) => return Err(format!("proxy closed after {head:?}")),
            Ok(Err(e)) => return Err(format!("read CONNECT answer: {e}")),
            Err(_) => return Err("no CONNECT answer within 10 s".into()),
        }
    }
    let status = status_of(&head).ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, tcp))
}

/// A TLS session to `name` (`host:443`) through the forward proxy's CONNECT interception.
pub async fn tls_via(
    proxy: SocketAddr,
    name: &str,
    ca_file: &Path,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, String> {
    let (status, tunnel) = connect_via(proxy, &format!("{name}:443")).await?;
    if status != 200 {
        return Err(format!("CONNECT {name}:443 answered {status}"));
    }
    tls_over(tunnel, ca_file, name, alpn).await
}

/// Reads (and discards) until the peer closes; the time it took, or `None` if the stream was
/// still open after `limit`. A reset counts as closed.
pub async fn closed_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Writes `bytes` one at a time, `every` apart, until done or the peer stops accepting
/// them. Returns how many were written.
pub async fn trickle<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    every: Duration,
) -> usize {
    for (i, b) in bytes.iter().enumerate() {
        if stream.write_all(&[*b]).await.is_err() || stream.flush().await.is_err() {
            return i;
        }
        tokio::time::sleep(every).await;
    }
    bytes.len()
}

/// One HTTP/1.1 response read from a keep-alive stream (its head and a `Content-Length`
/// body): the status and the head.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u16, String), String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let status =
                    status_of(head.as_bytes()).ok_or_else(|| format!("no status: {head}"))?;
                return Ok((status, head));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Err(format!("closed before a whole response: {data:?}")),
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => return Err(format!("no whole response within 10 s: {data:?}")),
        }
    }
}

/// `n` TCP connections to `addr` that send nothing, opened concurrently. Connections the
/// server had already closed again by the time they are returned are included.
pub async fn idle_flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let connects = (0..n).map(|_| async move {
        tokio::time::timeout(Duration::from_secs(20), TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok)
    });
    futures_util::future::join_all(connects)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How many of `streams` the server has closed (a read returns EOF or an error at once).
pub async fn count_closed(streams: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    for s in streams.iter_mut() {
        let mut buf = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    closed
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// A plain-HTTP "registry" that accepts connections, reads nothing and never answers: an
/// upstream that keeps every request portcullis sends it in flight.
pub struct SilentUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentUpstream {
    pub fn start() -> SilentUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind silent upstream");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("silent upstream address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SilentUpstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SilentUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn status_of(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

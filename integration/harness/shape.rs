//! Network conditions on loopback, made in the test process.
//!
//! [`ShapedRelay`] is one link: it listens on a free loopback port and forwards TCP to a
//! target, adding in each direction a one-way delay of half the round trip and a rate limit.
//! The rate is one token bucket per direction shared by all the relay's connections (one
//! link, not one link per connection); the delay is applied per chunk with timestamps (a
//! chunk that leaves the bucket at `t` is written at `t + delay`), so throughput is bound by
//! the rate, not by the delay. Only the client's side of the test is shaped: shaping `lo`
//! itself (`tc ... tbf`) would slow portcullis's own upstream traffic as well and make
//! "through portcullis" and "direct" unequal.
//!
//! [`SlowHeaders`] terminates TLS and holds each response's first bytes until a delay after
//! its request arrived: an upstream that answers slowly without being down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ca::{Ca, LOOPBACK_NAMES};
use super::rt::{client_tls, server_tls, Background};

/// What a link does to the bytes crossing it.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub rtt: Duration,
    pub bits_per_sec: u64,
}

impl Link {
    /// A link of `rtt_ms` round trip and `mbit` Mbit/s in each direction.
    pub fn new(rtt_ms: u64, mbit: u64) -> Link {
        Link {
            rtt: Duration::from_millis(rtt_ms),
            bits_per_sec: mbit * 1_000_000,
        }
    }

    fn one_way(&self) -> Duration {
        self.rtt / 2
    }

    fn bytes_per_sec(&self) -> f64 {
        self.bits_per_sec as f64 / 8.0
    }
}

/// The largest read taken as one chunk: a tenth of a millisecond at 100 Mbit/s costs little
/// latency, and it keeps the bucket's bursts small.
const CHUNK: usize = 16 * 1024;

/// The bucket may lend this much time when it has been idle: a short burst, as `tbf` has,
/// long enough that a relay woken late on a busy machine does not lose link time.
const BURST: Duration = Duration::from_millis(20);

/// A token bucket kept as the instant the link is next free: a chunk of `n` bytes occupies
/// the link for `n / rate` from `max(now - burst, next_free)`.
struct Bucket {
    next_free: Mutex<Instant>,
    bytes_per_sec: f64,
}

impl Bucket {
    fn new(bytes_per_sec: f64) -> Bucket {
        Bucket {
            next_free: Mutex::new(Instant::now()),
            bytes_per_sec,
        }
    }

    /// When a chunk of `bytes` reserved now has been sent whole.
    fn reserve(&self, bytes: usize) -> Instant {
        let now = Instant::now();
        let mut next_free = self.next_free.lock().expect("bucket");
        let start = (*next_free).max(now.checked_sub(BURST).unwrap_or(now));
        let done = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        *next_free = done;
        done
    }
}

/// Bytes a relay has carried, per direction.
#[derive(Default)]
struct Carried {
    up: AtomicU64,
    down: AtomicU64,
}

pub struct ShapedRelay {
    addr: SocketAddr,
    link: Link,
    carried: Arc<Carried>,
    _runtime: Background,
}

impl ShapedRelay {
    /// A relay to `target` over `link`, listening on a free loopback port.
    pub fn start(target: SocketAddr, link: Link) -> ShapedRelay {
        let runtime = Background::new("shaped-relay");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the shaped relay");
        let addr = listener.local_addr().expect("address");
        let carried = Arc::new(Carried::default());
        let up = Arc::new(Bucket::new(link.bytes_per_sec()));
        let down = Arc::new(Bucket::new(link.bytes_per_sec()));
        let counters = carried.clone();
        runtime.handle().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, down, counters) = (up.clone(), down.clone(), counters.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let delay = link.one_way();
                    let to_server =
                        carry(client_read, server_write, up, delay, counters.clone(), true);
                    let to_client = carry(server_read, client_write, down, delay, counters, false);
                    let _ = tokio::join!(to_server, to_client);
                });
            }
        });
        ShapedRelay {
            addr,
            link,
            carried,
            _runtime: runtime,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the host part of image references that go over this link.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn link(&self) -> Link {
        self.link
    }

    /// Bytes carried from clients to the target.
    pub fn bytes_up(&self) -> u64 {
        self.carried.up.load(Ordering::Relaxed)
    }

    /// Bytes carried from the target to clients.
    pub fn bytes_down(&self) -> u64 {
        self.carried.down.load(Ordering::Relaxed)
    }
}

/// One direction of one connection: read a chunk, wait for the bucket to have sent it, hand
/// it to the writer stamped with when it arrives at the far end. The reader waits for the
/// bucket before reading more, so the queue in front of the link is the sender's socket
/// buffer (the sender feels the rate as TCP backpressure) and only bytes "on the wire" wait
/// in the channel. End of stream travels the same way, so a half-close arrives in order.
async fn carry<R, W>(
    mut from: R,
    mut to: W,
    bucket: Arc<Bucket>,
    delay: Duration,
    counters: Arc<Carried>,
    up: bool,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Enough chunks for the bytes in flight on a fast link with a long delay.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(4096);
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                    let counter = if up { &counters.up } else { &counters.down };
                    counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            let _ = tx.send((Instant::now() + delay, None)).await;
            break;
        }
        // A burst's credit may put the end of sending before now; the bytes left now.
        let sent = bucket.reserve(n).max(Instant::now());
        tokio::time::sleep_until(sent).await;
        if tx
            .send((sent + delay, Some(buf[..n].to_vec())))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// An HTTPS front for a registry that sends each response's first bytes no sooner than
/// `delay` after its request began, on connections of its own (HTTP/1.1 only, so a response
/// is what follows a request).
pub struct SlowHeaders {
    addr: SocketAddr,
    ca: Arc<Ca>,
    _runtime: Background,
}

impl SlowHeaders {
    /// Fronts `https://<target>` (whose certificate `target_ca` signed) with `delay`.
    pub fn start(target: SocketAddr, target_ca: &Path, delay: Duration) -> SlowHeaders {
        let ca = Ca::new("slow-headers");
        let leaf = ca.issue(&LOOPBACK_NAMES);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(&leaf.cert_pem, &leaf.key_pem));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(target_ca)));
        let runtime = Background::new("slow-headers");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the slow-headers front");
        let addr = listener.local_addr().expect("address");
        runtime.handle().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                tokio::spawn(async move {
                    let Ok(client) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(tcp) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let name =
                        rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
                    let Ok(server) = connector.connect(name, tcp).await else {
                        return;
                    };
                    slow_responses(client, server, delay).await;
                });
            }
        });
        SlowHeaders {
            addr,
            ca,
            _runtime: runtime,
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.ca.cert_file()
    }
}

/// Copies both ways; the first response bytes after a request waits until `delay` after
/// the request's first bytes.
async fn slow_responses<C, S>(client: C, server: S, delay: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    // When the request being answered began, until its answer starts.
    let asked: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let asking = asked.clone();
    let requests = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            asking
                .lock()
                .expect("asked")
                .get_or_insert_with(Instant::now);
            // TLS holds written records until flushed: unflushed, the end of a message
            // waits for the next one.
            if server_write.write_all(&buf[..n]).await.is_err()
                || server_write.flush().await.is_err()
            {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let responses = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let began = asked.lock().expect("asked").take();
            if let Some(began) = began {
                tokio::time::sleep_until(began + delay).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err()
                || client_write.flush().await.is_err()
            {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, responses);
}

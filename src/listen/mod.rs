//! The one accept-and-serve path every listener uses (registry endpoint, mirror, forward
//! proxy, admin): per-listener connection slots, TLS termination, HTTP/1.1 and HTTP/2, the
//! header, handshake and idle limits, eviction at the limit, and graceful drain.
//!
//! Each listener owns `max_connections` slots, so a flood on one cannot starve another. A
//! connection holds its slot from accept until it closes; a CONNECT hands its slot to the
//! intercepted session or tunnel it becomes ([`Conn::take`]). When every slot is taken, the
//! connection that has had no request in flight for longest is closed to make room; if every
//! connection has a request in flight, the accept loop stops accepting, so new connections
//! wait in the kernel's listen backlog until a slot frees.
//!
//! Time limits are kept per connection by one timer beside the hyper connection, fed by
//! [`Activity`] (a few atomics updated by the service and by reads): no complete request
//! within `header_read_timeout` of the connection (or of the first byte after an idle
//! period, on HTTP/1), or no request for `idle_timeout` after the last response, and the
//! connection is closed. Nothing is in flight then, so nothing is lost. Shutdown drains
//! gracefully instead (HTTP/1: close when idle; HTTP/2: GOAWAY).

pub mod admin;
pub mod forward;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::body::{BoxError, ProxyBody};
use crate::metrics::Metrics;
use crate::pipeline::{Inbound, Proxy};

pub use crate::config::Limits;

/// While every slot holds a request in flight, how often to look again for an idle one.
const EVICT_RETRY: Duration = Duration::from_millis(100);
/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS: u32 = 128;

/// What every listener needs to serve HTTP into the proxy pipeline.
#[derive(Clone)]
pub struct Http {
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Http {
    pub fn new(proxy: Arc<Proxy>, metrics: Arc<Metrics>, limits: Limits) -> Http {
        let builder = Arc::new(builder(&limits));
        Http {
            proxy,
            metrics,
            limits,
            builder,
        }
    }

    /// Terminate TLS on `io` (bounded in time), then serve HTTP on it.
    pub async fn serve_tls<I>(&self, io: I, acceptor: TlsAcceptor, conn: Conn, inbound: Inbound)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = conn.peer;
        let handshake =
            tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(io));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    self.metrics.tls_handshake_failures.inc();
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    self.metrics.tls_handshake_failures.inc();
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = conn.activity.evict.notified() => return,
            // Nothing can be in flight before the handshake: shutdown need not wait for it.
            _ = conn.stopping() => return,
        };
        let proxy = self.proxy.clone();
        serve_http(&self.builder, tls, &conn, move |req| {
            proxy.clone().handle(req, peer, inbound.clone())
        })
        .await;
    }
}

/// The HTTP/1.1 + HTTP/2 server settings every listener shares. hyper's own HTTP/1 header
/// timer is off: it restarts after each response, which would cut keep-alive connections at
/// the header timeout; [`drive`] applies both limits instead, to HTTP/2 as well.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes.max(8192))
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serve HTTP/1.1 or HTTP/2 on an established stream until it closes, times out, is
/// evicted or drains.
pub async fn serve_http<I, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    conn: &Conn,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    conn.activity.restart();
    let io = TokioIo::new(Tracked::new(io, conn.activity.clone()));
    let served = builder.serve_connection(io, tracked(&conn.activity, handler));
    if let Err(e) = drive(served, conn).await {
        debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// Like [`serve_http`], HTTP/1.1 only and with upgrades (`CONNECT`): the forward proxy.
pub async fn serve_http1_upgrades<I, H, F>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    conn: &Conn,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    conn.activity.restart();
    let io = TokioIo::new(Tracked::new(io, conn.activity.clone()));
    let served = builder
        .serve_connection(io, tracked(&conn.activity, handler))
        .with_upgrades();
    if let Err(e) = drive(served, conn).await {
        debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// The HTTP/1.1 settings of the forward proxy's CONNECT listener.
pub fn builder_http1(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes.max(8192))
        .header_read_timeout(None);
    builder
}

/// `handler` as a hyper service that counts each request in flight until its response
/// body is done.
fn tracked<H, F>(
    activity: &Arc<Activity>,
    handler: H,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Guarded<ProxyBody>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Guarded<ProxyBody>>, Infallible>> + Send + 'static,
> + Send
       + 'static
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let activity = activity.clone();
    let handler = Arc::new(handler);
    service_fn(move |req: Request<Incoming>| {
        if req.version() == http::Version::HTTP_2 {
            activity.h2.store(true, Ordering::Release);
        }
        let busy = Busy::begin(&activity);
        let response = handler(req);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(response.map(|body| Guarded { body, _busy: busy }))
        }
    })
}

/// A hyper server connection that can be told to finish what it is doing and close.
pub trait Shutdown: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    fn shut_down(self: Pin<&mut Self>);
}

type BoxStdError = Box<dyn std::error::Error + Send + Sync>;

impl<I, S, B, E> Shutdown for auto::Connection<'_, I, S, E>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxStdError>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<BoxStdError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Error = BoxStdError;
    fn shut_down(self: Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Shutdown for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxStdError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxStdError>,
{
    type Error = hyper::Error;
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Polls a hyper connection beside its timer: timeouts and eviction shut it down, a
/// shutdown signal drains it.
async fn drive<C: Shutdown>(conn: C, c: &Conn) -> Result<(), C::Error> {
    tokio::pin!(conn);
    let activity = &c.activity;
    let limits = &c.shared.limits;
    let mut shutdown = c.shutdown.clone();
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().shut_down();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().shut_down();
            }
            _ = activity.evict.notified() => {
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    return Ok(());
                }
                // A request arrived meanwhile: let it finish, then close.
                conn.as_mut().shut_down();
            }
            _ = tokio::time::sleep_until(activity.wake_at(limits)) => {
                // Nothing is in flight past a deadline: whatever was read of a next request
                // (a partial head, an HTTP/2 stream still without its headers) is abandoned,
                // so the connection is dropped rather than asked to finish.
                if let Some(reason) = activity.expired(limits) {
                    c.shared.closed(reason).inc();
                    debug!(peer = %c.peer, listener = c.shared.name, reason, "closing connection");
                    return Ok(());
                }
            }
        }
    }
}

/// Accept connections on `listener` and run `serve` for each, within the listener's slots,
/// until `shutdown` changes; then stop accepting and drain for `drain_timeout`.
pub async fn serve<S, F>(
    listener: TcpListener,
    name: &'static str,
    limits: &Limits,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
    serve: S,
) where
    S: Fn(TcpStream, Conn) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let shared = Arc::new(Shared::new(name, limits, metrics));
    let mut next_id = 0u64;
    // When the limit was reached, while it lasts: logged once per burst, not per connection.
    let mut at_limit: Option<Instant> = None;
    loop {
        let Some((tcp, peer)) = accept(&listener, &mut shutdown).await else {
            break;
        };
        let permit = match shared.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(since) = at_limit.take() {
                    info!(
                        listener = name,
                        seconds = since.elapsed().as_secs_f64(),
                        "below max_connections again"
                    );
                }
                permit
            }
            Err(_) => {
                if at_limit.is_none() {
                    at_limit = Some(Instant::now());
                    warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "reached max_connections: closing the connections idle longest to make room; \
                         while every connection has a request in flight, new ones wait to be accepted"
                    );
                }
                match shared.wait_for_slot(&mut shutdown).await {
                    Some(permit) => permit,
                    None => break,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        let conn = shared.admit(next_id, permit, peer, shutdown.clone());
        tokio::spawn(serve(tcp, conn));
    }
    // Closing the socket resets what waits in the backlog instead of leaving it hanging.
    drop(listener);
    info!(
        listener = name,
        "listener stopped accepting; draining connections"
    );
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(limits.drain_timeout, shared.slots.acquire_many(all)).await;
    match drained {
        Ok(_) => info!(listener = name, "all connections drained"),
        Err(_) => warn!(
            listener = name,
            "drain timed out; closing remaining connections"
        ),
    }
}

/// Serve a TLS registry endpoint (the registry listener, the mirror) until `shutdown`
/// changes, then drain in-flight requests.
pub async fn serve_registry(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    http: Http,
    inbound: Inbound,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let (limits, metrics) = (http.limits.clone(), http.metrics.clone());
    serve(
        listener,
        inbound.listener,
        &limits,
        &metrics,
        shutdown,
        move |tcp, conn| {
            let (http, acceptor, inbound) = (http.clone(), acceptor.clone(), inbound.clone());
            async move { http.serve_tls(tcp, acceptor, conn, inbound).await }
        },
    )
    .await;
}

/// The next connection, or `None` once `shutdown` changes. Accept errors (usually EMFILE)
/// back off briefly instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    if *shutdown.borrow() {
        return None;
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// One listener's slots, its live connections (for eviction) and its counters.
struct Shared {
    name: &'static str,
    limits: Limits,
    epoch: Instant,
    slots: Arc<Semaphore>,
    live: Mutex<HashMap<u64, Arc<Activity>>>,
    open: IntGauge,
    header_timeouts: IntCounter,
    idle_timeouts: IntCounter,
    evictions: IntCounter,
    waits: IntCounter,
}

impl Shared {
    fn new(name: &'static str, limits: &Limits, metrics: &Metrics) -> Shared {
        let closed = |reason| {
            metrics
                .connections_closed
                .with_label_values(&[name, reason])
        };
        Shared {
            name,
            limits: limits.clone(),
            epoch: Instant::now(),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            live: Mutex::new(HashMap::new()),
            open: metrics.connections.with_label_values(&[name]),
            header_timeouts: closed("header_timeout"),
            idle_timeouts: closed("idle_timeout"),
            evictions: closed("evicted"),
            waits: metrics.connection_limit_waits.with_label_values(&[name]),
        }
    }

    fn closed(&self, reason: &str) -> &IntCounter {
        match reason {
            "header_timeout" => &self.header_timeouts,
            _ => &self.idle_timeouts,
        }
    }

    fn admit(
        self: &Arc<Self>,
        id: u64,
        permit: OwnedSemaphorePermit,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Conn {
        let activity = Arc::new(Activity::new(self.epoch));
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, activity.clone());
        }
        self.open.inc();
        let slot = Slot {
            _permit: permit,
            shared: self.clone(),
            id,
        };
        Conn {
            peer,
            shared: self.clone(),
            activity,
            slot: Arc::new(Mutex::new(Some(slot))),
            shutdown,
        }
    }

    /// Tell the connection idle longest to go; false when every one has a request in flight.
    fn evict_one(&self) -> bool {
        let Ok(live) = self.live.lock() else {
            return false;
        };
        let victim = live
            .values()
            .filter(|a| {
                a.in_flight.load(Ordering::Acquire) == 0 && !a.evicting.load(Ordering::Acquire)
            })
            .min_by_key(|a| a.since.load(Ordering::Acquire));
        match victim {
            Some(a) => {
                a.evicting.store(true, Ordering::Release);
                a.evict.notify_one();
                self.evictions.inc();
                true
            }
            None => false,
        }
    }

    async fn wait_for_slot(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<OwnedSemaphorePermit> {
        let mut counted = false;
        loop {
            if !self.evict_one() && !counted {
                counted = true;
                self.waits.inc();
            }
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => return permit.ok(),
                _ = tokio::time::sleep(EVICT_RETRY) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }
}

/// A listener slot; returned (and the connection forgotten) when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut live) = self.shared.live.lock() {
            live.remove(&self.id);
        }
        self.shared.open.dec();
    }
}

/// One accepted connection: its peer, its slot, its activity and the shutdown signal.
/// Clones share the slot: whichever clone [`Conn::take`]s it carries it on.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    slot: Arc<Mutex<Option<Slot>>>,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    /// Moves the slot to a new `Conn` for what this connection becomes (a CONNECT's tunnel or
    /// intercepted session), so the slot lives as long as that does. `None` if already taken.
    pub fn take(&self) -> Option<Conn> {
        let slot = self.slot.lock().ok()?.take()?;
        Some(Conn {
            peer: self.peer,
            shared: self.shared.clone(),
            activity: self.activity.clone(),
            slot: Arc::new(Mutex::new(Some(slot))),
            shutdown: self.shutdown.clone(),
        })
    }

    /// Wraps a raw stream (a tunnel's two ends) so that reading from it counts as activity.
    pub fn track<I>(&self, io: I) -> Tracked<I> {
        Tracked::new(io, self.activity.clone())
    }

    /// Completes once shutdown has begun.
    async fn stopping(&self) {
        let mut shutdown = self.shutdown.clone();
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Marks the connection busy (never evicted) until the guard drops: a tunnel.
    pub fn busy(&self) -> impl Drop {
        Busy::begin(&self.activity)
    }

    /// Completes once nothing was read from a [`Conn::track`]ed stream for `idle_timeout`
    /// (counted as an idle-timeout close).
    pub async fn idle(&self) {
        let activity = &self.activity;
        activity.last_read.store(activity.now(), Ordering::Release);
        let idle = millis(self.shared.limits.idle_timeout);
        loop {
            let due = activity.last_read.load(Ordering::Acquire) + idle;
            if activity.now() >= due {
                self.shared.idle_timeouts.inc();
                return;
            }
            tokio::time::sleep_until(activity.instant(due)).await;
        }
    }
}

/// What one connection did, in milliseconds since the listener's epoch (plus one; 0 means
/// never): updated by the service per request and by [`Tracked`] per read.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Requests since the session (the TLS session, on a CONNECT) began.
    served: AtomicU64,
    /// Since when nothing has been in flight (the session start, or the last response).
    since: AtomicU64,
    /// The first read after `since`: a request is on its way.
    head: AtomicU64,
    last_read: AtomicU64,
    /// The session speaks HTTP/2, whose control frames (window updates, pings, settings
    /// acks) are reads that start no request: after its first request only the idle limit
    /// applies.
    h2: AtomicBool,
    evict: Notify,
    evicting: AtomicBool,
}

impl Activity {
    fn new(epoch: Instant) -> Activity {
        let a = Activity {
            epoch,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            since: AtomicU64::new(0),
            head: AtomicU64::new(0),
            last_read: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
        };
        a.since.store(a.now(), Ordering::Release);
        a
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2) + 1
    }

    fn instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_millis(ms.saturating_sub(1)))
    }

    /// A new HTTP session on this connection: nothing asked yet.
    fn restart(&self) {
        self.served.store(0, Ordering::Release);
        self.h2.store(false, Ordering::Release);
        self.head.store(0, Ordering::Release);
        self.since.store(self.now(), Ordering::Release);
    }

    /// When the connection must have done something, and which limit applies; `None` while
    /// a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<(u64, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.since.load(Ordering::Acquire);
        let header = millis(limits.header_read_timeout);
        if self.served.load(Ordering::Acquire) == 0 {
            return Some((since + header, "header_timeout"));
        }
        let head = self.head.load(Ordering::Acquire);
        if head > since && !self.h2.load(Ordering::Acquire) {
            return Some((head + header, "header_timeout"));
        }
        Some((since + millis(limits.idle_timeout), "idle_timeout"))
    }

    fn wake_at(&self, limits: &Limits) -> tokio::time::Instant {
        match self.deadline(limits) {
            Some((due, _)) => self.instant(due),
            // In flight: look again later; the deadline starts when the response is done.
            None => {
                tokio::time::Instant::now() + limits.header_read_timeout.min(limits.idle_timeout)
            }
        }
    }

    /// The limit this connection has exceeded, if any.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        let (due, reason) = self.deadline(limits)?;
        (self.now() >= due).then_some(reason)
    }

    fn read(&self) {
        let now = self.now();
        self.last_read.store(now, Ordering::Relaxed);
        if self.head.load(Ordering::Relaxed) == 0 {
            self.head.store(now, Ordering::Relaxed);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// A request in flight on a connection: from its head until its response body is done.
pub struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.served.fetch_add(1, Ordering::AcqRel);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.head.store(0, Ordering::Release);
            self.0.since.store(self.0.now(), Ordering::Release);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is done.
    pub struct Guarded<B> {
        #[pin]
        body: B,
        _busy: Busy,
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A stream whose reads are recorded in its connection's [`Activity`]: one clock read and
    /// an atomic store per read, nothing per write.
    pub struct Tracked<I> {
        #[pin]
        io: I,
        activity: Arc<Activity>,
    }
}

impl<I> Tracked<I> {
    fn new(io: I, activity: Arc<Activity>) -> Tracked<I> {
        Tracked { io, activity }
    }
}

impl<I: AsyncRead> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        result
    }
}

impl<I: AsyncWrite> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
            ..Limits::default()
        }
    }

    #[test]
    fn a_connection_without_a_request_is_due_at_the_header_timeout() {
        let a = Activity::new(Instant::now());
        let since = a.since.load(Ordering::Acquire);
        a.read();
        assert_eq!(
            a.deadline(&limits()),
            Some((since + 2000, "header_timeout")),
            "trickled bytes do not extend it"
        );
    }

    #[test]
    fn after_a_response_the_idle_timeout_applies_until_the_next_request_starts() {
        let a = Arc::new(Activity::new(Instant::now()));
        let busy = Busy::begin(&a);
        assert_eq!(
            a.deadline(&limits()),
            None,
            "no limit while a request is in flight"
        );
        drop(busy);
        let since = a.since.load(Ordering::Acquire);
        assert_eq!(a.deadline(&limits()), Some((since + 3000, "idle_timeout")));
        std::thread::sleep(Duration::from_millis(5));
        a.read();
        let head = a.head.load(Ordering::Acquire);
        assert!(head > since);
        assert_eq!(
            a.deadline(&limits()),
            Some((head + 2000, "header_timeout")),
            "a started request must complete in time"
        );
    }

    #[test]
    fn on_http2_reads_after_the_first_request_do_not_start_the_header_timeout() {
        let a = Arc::new(Activity::new(Instant::now()));
        a.h2.store(true, Ordering::Release);
        drop(Busy::begin(&a));
        let since = a.since.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(5));
        a.read();
        assert_eq!(
            a.deadline(&limits()),
            Some((since + 3000, "idle_timeout")),
            "a WINDOW_UPDATE is not a request"
        );
        a.restart();
        assert!(
            !a.h2.load(Ordering::Acquire),
            "a new session is HTTP/1 until it says otherwise"
        );
    }
}

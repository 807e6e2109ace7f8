//! Accept loops: TLS termination, HTTP/1.1 and HTTP/2, bounded headers and connections,
//! graceful drain on shutdown. The registry endpoint and the mirror endpoint share one loop;
//! intercepted forward-proxy connections ([`crate::forward`]) reuse [`Http::serve`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::proxy::{Inbound, Proxy};

pub use crate::config::Limits;

/// What every listener needs to serve HTTP into the proxy pipeline.
#[derive(Clone)]
pub struct Http {
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    slots: Arc<Semaphore>,
}

impl Http {
    pub fn new(proxy: Arc<Proxy>, metrics: Arc<Metrics>, limits: Limits) -> Http {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(limits.max_header_bytes.max(8192))
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Http {
            proxy,
            metrics,
            limits,
            builder: Arc::new(builder),
            slots,
        }
    }

    /// A connection slot, or `None` when the limit is reached.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Terminate TLS on `io` (bounded in time), then serve HTTP on it.
    pub async fn serve_tls<I>(
        &self,
        io: I,
        acceptor: TlsAcceptor,
        peer: SocketAddr,
        inbound: Inbound,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(io))
            .await
        {
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
        };
        self.serve(tls, peer, inbound, None).await;
    }

    /// Serve HTTP/1.1 or HTTP/2 on an established stream until it closes (or drains).
    pub async fn serve<I>(
        &self,
        io: I,
        peer: SocketAddr,
        inbound: Inbound,
        graceful: Option<Watcher>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let open = self
            .metrics
            .connections
            .with_label_values(&[inbound.listener]);
        open.inc();
        let _open = scopeguard(move || open.dec());
        let proxy = self.proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let inbound = inbound.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer, inbound).await) }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let result = match graceful {
            Some(watcher) => watcher.watch(conn).await,
            None => conn.await,
        };
        if let Err(e) = result {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Serve a TLS registry endpoint until `shutdown` changes, then drain in-flight requests.
pub async fn serve_registry(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    http: Http,
    inbound: Inbound,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let Some((tcp, peer)) = accept(&listener, &mut shutdown).await else {
            break;
        };
        let Some(permit) = http.slot() else {
            warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, http, inbound, watcher) = (
            acceptor.clone(),
            http.clone(),
            inbound.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(http.limits.tls_handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        http.metrics.tls_handshake_failures.inc();
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        http.metrics.tls_handshake_failures.inc();
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            http.serve(tls, peer, inbound, Some(watcher)).await;
        });
    }
    info!(
        listener = inbound.listener,
        "listener stopped accepting; draining connections"
    );
    drain(graceful, http.limits.drain_timeout).await;
}

pub async fn drain(graceful: GracefulShutdown, timeout: Duration) {
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained"),
        _ = tokio::time::sleep(timeout) => warn!("drain timed out; closing remaining connections"),
    }
}

/// The next connection, or `None` once `shutdown` changes. Accept errors (usually EMFILE)
/// back off briefly instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
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

/// Runs `f` when dropped, however the connection task ends.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

//! portcullis: a gatekeeper proxy for container registries.
//!
//! The request pipeline reads top to bottom: [`listener`] accepts and terminates TLS,
//! [`route`] parses the distribution API path, [`resolve`] turns the image name into the
//! registry (or ordered registries) that may serve it, [`proxy`] forwards through
//! [`upstream`], and [`error`] is the one place where a failure becomes an HTTP status and
//! an OCI error body. There are no globals: [`run`] builds everything from a [`Config`].

pub mod admin;
pub mod body;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reference;
pub mod resolve;
pub mod route;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tracing::info;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The registry endpoint's certificate: configured files, or one issued by the local CA.
fn server_tls(config: &Config) -> Result<Arc<rustls::ServerConfig>, RunError> {
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        let chain = tls::load_certs(cert)?;
        let key = tls::load_private_key(key)?;
        return Ok(tls::server_config(chain, key)?);
    }
    let identity = tls::server_identity(&config.state_dir, &config.tls.names)?;
    let ca_path = identity.ca.cert_path().to_owned();
    if identity.ca_origin == tls::Origin::Created {
        info!(ca = %ca_path.display(), "created a local CA for portcullis");
        eprintln!(
            "portcullis: created a local CA at {}\n{}",
            ca_path.display(),
            tls::trust_instructions(&ca_path)
        );
    } else {
        info!(ca = %ca_path.display(), "using local CA");
    }
    Ok(tls::server_config(identity.chain, identity.key)?)
}

/// Run portcullis until `shutdown` completes, then drain in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let server_tls = server_tls(&config)?;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(metrics::Metrics::new(
        &registry,
        config.registries.keys().cloned(),
    )?);
    let proxy = Arc::new(proxy::Proxy::new(&config, metrics.clone())?);
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let admin = Arc::new(admin::Admin {
        registry,
        ready: std::sync::atomic::AtomicBool::new(false),
        token: config.admin_token.clone(),
    });
    let admin_task = match config.listen_admin {
        Some(addr) => {
            let listener = listener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            info!(%addr, "admin listener (metrics, health) listening (HTTP)");
            Some(tokio::spawn(admin::serve(
                listener,
                admin.clone(),
                stopped.clone(),
            )))
        }
        None => None,
    };

    let addr = config.listen_registry;
    let listener = listener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })?;
    info!(%addr, search = ?config.resolve.search, "registry endpoint listening (HTTPS)");
    let server = tokio::spawn(listener::serve_registry(
        listener,
        server_tls,
        proxy,
        metrics,
        listener::Limits::default(),
        stopped,
    ));
    admin
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    shutdown.await;
    admin
        .ready
        .store(false, std::sync::atomic::Ordering::Release);
    let _ = stop.send(true);
    let _ = server.await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    Ok(())
}

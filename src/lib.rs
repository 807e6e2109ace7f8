//! portcullis: a gatekeeper proxy for container registries.
//!
//! The folders are the architecture:
//! - [`listen`]: every listener's accept-and-serve path (slots, TLS, HTTP/1.1 and HTTP/2,
//!   timeouts, drain), the forward proxy and the admin listener;
//! - [`pipeline`]: one request's journey through its stages, top to bottom;
//! - [`policy`]: the policy engine (pure), its files and their live reload;
//! - [`upstream`]: pooled clients to the configured registries, auth, redirects;
//! - [`store`]: what is kept between requests (audit, manifest cache, provenance, staging);
//! - [`listing`]: answers that span registries (search, catalog, tag pagination).
//!
//! [`error`] is the one place where a failure becomes an HTTP status and an OCI error body.
//! There are no globals: [`run`] builds everything from a [`Config`].

pub mod body;
pub mod config;
pub mod error;
pub mod listen;
pub mod listing;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod reference;
pub mod route;
pub mod store;
pub mod tls;
pub mod toml_check;
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
    #[error("policy:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<policy::Problem>),
    #[error(transparent)]
    Audit(#[from] store::audit::AuditError),
    #[error(transparent)]
    Provenance(#[from] store::provenance::ProvenanceError),
    #[error(transparent)]
    Stage(#[from] store::stage::StageError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("blob cache {dir}: {source}")]
    BlobCache {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The local CA (created on first start) and the registry endpoint's TLS configuration:
/// configured files, or a certificate issued by the local CA.
fn tls_setup(config: &Config) -> Result<(Arc<tls::LocalCa>, Arc<rustls::ServerConfig>), RunError> {
    let (ca, server) = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => {
            let (ca, origin) = tls::LocalCa::load_or_create(&config.state_dir)?;
            let server = tls::server_config(tls::load_certs(cert)?, tls::load_private_key(key)?)?;
            ((ca, origin), server)
        }
        _ => {
            let identity = tls::server_identity(&config.state_dir, &config.tls.names)?;
            let server = tls::server_config(identity.chain, identity.key)?;
            ((identity.ca, identity.ca_origin), server)
        }
    };
    let (ca, origin) = ca;
    let ca_path = ca.cert_path().to_owned();
    if origin == tls::Origin::Created {
        info!(ca = %ca_path.display(), "created a local CA for portcullis");
        eprintln!(
            "portcullis: created a local CA at {}\n{}",
            ca_path.display(),
            tls::trust_instructions(&ca_path)
        );
    } else {
        info!(ca = %ca_path.display(), "using local CA");
    }
    Ok((Arc::new(ca), server))
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, RunError> {
    listen::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Drop upload sessions that received nothing within the idle limit (checked at half that
/// limit, at most every minute), and staged uploads no manifest claimed within an hour.
async fn sweep(stage: Arc<store::stage::Stage>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(stage.sweep_interval()) => {
                // Directory walks and unlinks: on the blocking pool, off the request threads.
                let sweeping = stage.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    sweeping.sweep(std::time::Duration::from_secs(3600))
                });
                let n = swept.await.unwrap_or(0);
                if n > 0 {
                    info!(n, "swept stale staged uploads");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Run portcullis until `shutdown` completes, then drain in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let (ca, server_tls) = tls_setup(&config)?;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(metrics::Metrics::new(
        &registry,
        config.registries.keys().cloned(),
    )?);
    let audit = Arc::new(store::audit::Audit::open(
        config.policy.audit_log.as_deref(),
    )?);
    let sources = policy::live::Sources {
        paths: config.policy.paths.clone(),
    };
    let live = Arc::new(
        policy::live::LivePolicy::new(sources, metrics.clone()).map_err(RunError::Policy)?,
    );
    let provenance = Arc::new(store::provenance::Provenance::open(
        &config.state_dir,
        config.policy.provenance_max_entries,
    )?);
    let stage = Arc::new(store::stage::Stage::open(
        &config.state_dir.join("staging"),
        store::stage::Limits {
            max_bytes: config.policy.staging_max_bytes,
            max_sessions: config.policy.staging_max_sessions,
            max_sessions_per_client: config.policy.staging_max_sessions_per_client,
            idle_session: config.policy.staging_idle_session,
        },
        &metrics,
    )?);
    let blobs = match config.cache.blobs_max_bytes {
        0 => None,
        max => Some(Arc::new(
            store::blobs::BlobCache::open(
                &config.cache.blobs_dir,
                max,
                metrics.blob_cache_counters(),
            )
            .map_err(|source| RunError::BlobCache {
                dir: config.cache.blobs_dir.clone(),
                source,
            })?,
        )),
    };
    let proxy = Arc::new(pipeline::Proxy::new(
        &config,
        metrics.clone(),
        live.clone(),
        pipeline::Stores {
            audit,
            provenance: Some(provenance),
            stage: Some(stage.clone()),
            blobs,
        },
    )?);
    let http = listen::Http::new(proxy, metrics.clone(), config.limits.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(policy::live::watch(
        live.clone(),
        config.policy.reload_interval,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(sweep(stage, stopped.clone())));

    let admin = Arc::new(listen::admin::Admin {
        registry,
        ready: std::sync::atomic::AtomicBool::new(false),
        token: config.admin_token.clone(),
        policy: Some(live),
    });
    if let Some(addr) = config.listen_admin {
        let listener = bind(addr).await?;
        info!(%addr, "admin listener (metrics, health) listening (HTTP)");
        tasks.push(tokio::spawn(listen::admin::serve(
            listener,
            admin.clone(),
            config.limits.clone(),
            metrics.clone(),
            stopped.clone(),
        )));
    }
    if let Some(addr) = config.listen_proxy {
        let listener = bind(addr).await?;
        info!(%addr, "forward proxy listening (CONNECT)");
        let forward = Arc::new(listen::forward::Forward::new(
            &config,
            http.clone(),
            ca.clone(),
        ));
        tasks.push(tokio::spawn(listen::forward::serve(
            listener,
            forward,
            stopped.clone(),
        )));
    }
    if let Some(addr) = config.listen_mirror {
        let listener = bind(addr).await?;
        info!(%addr, "docker.io mirror endpoint listening (HTTPS)");
        let inbound = pipeline::Inbound {
            listener: pipeline::MIRROR,
            registry: Some(reference::DOCKER_HUB.into()),
        };
        tasks.push(tokio::spawn(listen::serve_registry(
            listener,
            server_tls.clone(),
            http.clone(),
            inbound,
            stopped.clone(),
        )));
    }
    let addr = config.listen_registry;
    let listener = bind(addr).await?;
    info!(%addr, search = ?config.resolve.search, "registry endpoint listening (HTTPS)");
    tasks.push(tokio::spawn(listen::serve_registry(
        listener,
        server_tls,
        http,
        pipeline::Inbound::endpoint(),
        stopped,
    )));

    admin
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    shutdown.await;
    admin
        .ready
        .store(false, std::sync::atomic::Ordering::Release);
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

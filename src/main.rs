//! The `portcullis` command line: `serve`, `config check`, `certs init|ca`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::tls;
use portcullis::Config;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A gatekeeper proxy for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded defaults unless --config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a configuration file and report every problem.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage the local certificate authority.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Check, explain and inspect policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// What the blob cache holds, and removing some of it.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Blobs, bytes and the bound of the blob cache, and its least recently used blobs.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove cached blobs: one digest, those unused for a while, or (with neither) all.
    Purge {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, conflicts_with = "older_than")]
        digest: Option<String>,
        /// Not read for at least this long: `90m`, `12h`, `7d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Report every problem in policy files and registries.conf files (file:line).
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the decision for one operation on one image: the rule, the fully qualified
    /// name, and why.
    Explain {
        #[arg(long, default_value = "pull")]
        op: String,
        /// Server configuration (its search registries and policy paths).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Policy files to use instead of the configuration's.
        #[arg(long = "policy")]
        policies: Vec<PathBuf>,
        reference: String,
    },
    /// Print the running server's policy status (generation, sources, last reload).
    Status {
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the local CA if it does not exist yet.
    Init {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the CA certificate's path and PEM.
    Ca {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    match config {
        Some(path) => Config::load(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("invalid configuration"),
        None => Ok(Config::embedded_defaults()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => {
            init_logging(log_format);
            load(config.as_ref()).and_then(|config| {
                let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
                runtime
                    .block_on(portcullis::run(config, shutdown_signal()))
                    .map_err(anyhow::Error::from)
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => load(Some(&file)).map(|_| {
            println!("{}: ok", file.display());
        }),
        Command::Certs { command } => certs(command),
        Command::Policy { command } => policy(command),
        Command::Cache { command } => cache(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cache(command: CacheCommand) -> anyhow::Result<()> {
    use portcullis::store::blobs::admin;
    let config_path = match &command {
        CacheCommand::Status { config } | CacheCommand::Purge { config, .. } => config.clone(),
    };
    let config = load(config_path.as_ref())?;
    let dir = &config.cache.blobs_dir;
    let read = |e: std::io::Error| anyhow::anyhow!("{}: {e}", dir.display());
    match command {
        CacheCommand::Status { .. } => {
            let entries = admin::entries(dir).map_err(read)?;
            let bytes: u64 = entries.iter().map(|e| e.size).sum();
            let bound = match config.cache.blobs_max_bytes {
                0 => "disabled (cache.blobs_max_bytes = 0)".to_owned(),
                max => format!("{max} bytes"),
            };
            println!("blob cache {}", dir.display());
            println!(
                "  blobs: {}\n  bytes: {bytes}\n  bound: {bound}",
                entries.len()
            );
            for e in entries.iter().take(10) {
                println!(
                    "  {} {} bytes, last used {}",
                    e.digest,
                    e.size,
                    humantime::format_rfc3339_seconds(e.used)
                );
            }
            if entries.len() > 10 {
                println!("  ... and {} more used since", entries.len() - 10);
            }
        }
        CacheCommand::Purge {
            digest, older_than, ..
        } => {
            let what = match (digest, older_than) {
                (Some(d), _) => {
                    if !d.starts_with("sha256:") {
                        anyhow::bail!("{d}: the cache holds sha256 digests (sha256:<hex>)");
                    }
                    admin::Purge::Digest(d)
                }
                (None, Some(age)) => admin::Purge::OlderThan(age),
                (None, None) => admin::Purge::All,
            };
            let gone = admin::purge(dir, &what, std::time::SystemTime::now()).map_err(read)?;
            let bytes: u64 = gone.iter().map(|e| e.size).sum();
            println!(
                "purged {} blobs, {bytes} bytes, from {}",
                gone.len(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    let (config, print_pem) = match command {
        CertsCommand::Init { config } => (config, false),
        CertsCommand::Ca { config } => (config, true),
    };
    let config = load(config.as_ref())?;
    let (ca, origin) = tls::LocalCa::load_or_create(&config.state_dir)?;
    let path = ca.cert_path();
    if print_pem {
        println!("{}", path.display());
        print!(
            "{}",
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        );
    } else {
        let verb = if origin == tls::Origin::Created {
            "created"
        } else {
            "exists"
        };
        println!(
            "local CA {verb}: {}\n{}",
            path.display(),
            tls::trust_instructions(path)
        );
    }
    Ok(())
}

fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { files } => {
            let policy = portcullis::policy::load(&files).map_err(|problems| {
                for p in &problems {
                    eprintln!("{p}");
                }
                anyhow::anyhow!("{} problem(s) found", problems.len())
            })?;
            for w in policy.warnings() {
                eprintln!("warning: {w}");
            }
            let stats = policy.stats();
            println!(
                "ok: {} rule(s), {} private-push rule(s)",
                stats.rules, stats.private_rules
            );
            Ok(())
        }
        PolicyCommand::Explain {
            op,
            config,
            policies,
            reference,
        } => {
            let config = load(config.as_ref())?;
            let paths = if policies.is_empty() {
                config.policy.paths.clone()
            } else {
                policies
            };
            let sources = portcullis::policy::live::Sources { paths };
            let policy = sources.load().map_err(|problems| {
                anyhow::anyhow!(
                    "{}",
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
            let op: portcullis::policy::Operation =
                op.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            print!(
                "{}",
                portcullis::policy::explain::explain(&config, &policy, op, &reference)?
            );
            Ok(())
        }
        PolicyCommand::Status { admin } => {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(&admin)
                .with_context(|| format!("connecting to {admin}"))?;
            write!(stream, "GET /policy HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            let body = answer
                .split_once("\r\n\r\n")
                .map(|(_, b)| b)
                .unwrap_or(&answer);
            println!("{body}");
            Ok(())
        }
    }
}

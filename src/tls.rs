//! Local CA and TLS configuration, for both sides: the listeners' server configs and the
//! upstream clients' root stores.
//!
//! portcullis terminates TLS for the docker daemon, which insists on HTTPS for anything but
//! localhost registries. Rather than asking operators to bring certificates, it keeps a small
//! CA in its state directory and issues its own server certificate (and later, short-lived
//! interception certificates) from it; the operator trusts `ca.crt` once.
//!
//! All rustls configs here name the ring provider explicitly, so behaviour never depends on
//! which provider some other crate installed process-wide.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use time::OffsetDateTime;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.crt";
pub const SERVER_KEY_FILE: &str = "server.key";

const DAY: u64 = 24 * 60 * 60;
const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// Renewing this early leaves a month of slack for processes that cached the old chain.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY);
/// Backdating tolerates a client whose clock runs slightly behind ours.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot create directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("malformed PEM in {path}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate found in {path}")]
    NoCertificate { path: PathBuf },
    #[error("no private key found in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("{path} is not usable as part of the local CA")]
    BadCa { path: PathBuf, source: rcgen::Error },
    #[error("CA key {key_path} does not belong to {cert_path}")]
    CaKeyMismatch {
        key_path: PathBuf,
        cert_path: PathBuf,
        source: rustls::Error,
    },
    #[error("{cert_path} exists but its key {key_path} is missing; restore the key, or remove both files to create a new CA (clients must then trust the new one)")]
    CaKeyMissing {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    #[error("cannot issue a certificate for {names:?} from CA {ca_path}")]
    Issue {
        ca_path: PathBuf,
        names: Vec<String>,
        source: rcgen::Error,
    },
    #[error("cannot issue a certificate from CA {ca_path}: {reason}")]
    BadRequest {
        ca_path: PathBuf,
        reason: &'static str,
    },
    #[error("cannot trust the CA certificates in {path}")]
    ExtraCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("invalid TLS configuration")]
    Config { source: rustls::Error },
}

/// Whether a persisted item was found on disk or had to be made, so the CLI can tell the
/// operator about a new CA exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Created,
    Reused,
}

/// The local certificate authority. Deliberately not `Clone`: share it behind an `Arc`.
pub struct LocalCa {
    cert_path: PathBuf,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// The CA's subject, key usages and signing key, as rcgen reads them from `cert_der`;
    /// the bytes handed to clients are always `cert_der` from disk.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for LocalCa {
    // The signing key must never reach a log line, so only the location is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// A freshly issued certificate: DER for rustls, PEM for files.
pub struct CertifiedLeaf {
    /// Leaf first, then the CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub chain_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedLeaf")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads `ca.crt`/`ca.key` from `state_dir`, creating the directory (0700) and a new CA
    /// if there is no certificate yet.
    pub fn load_or_create(state_dir: &Path) -> Result<(Self, Origin), TlsError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| TlsError::CreateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        // The certificate is written last, so a lone key is debris from an interrupted
        // creation that nobody can have trusted yet; a lone certificate may be trusted, and
        // silently replacing it would break every client that did.
        if cert_path.exists() {
            if !key_path.exists() {
                return Err(TlsError::CaKeyMissing {
                    cert_path,
                    key_path,
                });
            }
            return Ok((Self::load(cert_path, &key_path)?, Origin::Reused));
        }
        Ok((Self::create(cert_path, &key_path)?, Origin::Created))
    }

    fn create(cert_path: PathBuf, key_path: &Path) -> Result<Self, TlsError> {
        let bad = |source| TlsError::BadCa {
            path: cert_path.clone(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(bad)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "portcullis local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) =
            validity_window(CA_VALIDITY).ok_or_else(|| bad(rcgen::Error::Time))?;
        let cert = params.self_signed(&key).map_err(bad)?;
        write_file(key_path, &key.serialize_pem(), 0o600)?;
        write_file(&cert_path, &cert.pem(), 0o644)?;
        let (cert_der, cert_pem) = (cert.der().clone(), cert.pem());
        Ok(Self {
            cert_path,
            cert_der,
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    fn load(cert_path: PathBuf, key_path: &Path) -> Result<Self, TlsError> {
        let mut cert_pem = read_string(&cert_path)?;
        if !cert_pem.ends_with('\n') {
            cert_pem.push('\n'); // issue() concatenates it after the leaf's PEM block
        }
        let key = KeyPair::from_pem(&read_string(key_path)?).map_err(|source| TlsError::BadCa {
            path: key_path.to_path_buf(),
            source,
        })?;
        let cert_der = parse_certs(cert_pem.as_bytes(), &cert_path)?.swap_remove(0);
        // Leaves signed by a foreign key would chain to nothing any client trusts, and that
        // would only surface later as handshake failures far from the cause.
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::sign::CertifiedKey::from_der(
            vec![cert_der.clone()],
            pkcs8,
            &ring::default_provider(),
        )
        .map_err(|source| TlsError::CaKeyMismatch {
            key_path: key_path.to_path_buf(),
            cert_path: cert_path.clone(),
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| TlsError::BadCa {
                path: cert_path.clone(),
                source,
            })?;
        Ok(Self {
            cert_path,
            cert_der,
            cert_pem,
            issuer,
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a server certificate for `names` (IP literals become IP SANs, everything else
    /// DNS SANs; the first name is also the CN), valid from a few minutes ago for `validity`.
    pub fn issue(&self, names: &[String], validity: Duration) -> Result<CertifiedLeaf, TlsError> {
        let bad_request = |reason| TlsError::BadRequest {
            ca_path: self.cert_path.clone(),
            reason,
        };
        let Some(first) = names.first() else {
            return Err(bad_request("no names given"));
        };
        let (not_before, not_after) =
            validity_window(validity).ok_or_else(|| bad_request("validity out of range"))?;
        let failed = |source| TlsError::Issue {
            ca_path: self.cert_path.clone(),
            names: names.to_vec(),
            source,
        };
        let mut params = CertificateParams::new(names.to_vec()).map_err(failed)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = (not_before, not_after);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(CertifiedLeaf {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// portcullis's own certificate for the registry endpoint, plus the CA that signed it.
#[derive(Debug)]
pub struct ServerIdentity {
    pub ca: LocalCa,
    pub ca_origin: Origin,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub cert_origin: Origin,
}

/// Reuses `server.crt`/`server.key` from `state_dir` when they chain to the current CA, cover
/// every name, and stay valid for at least 30 more days; otherwise issues and writes new ones.
pub fn server_identity(state_dir: &Path, names: &[String]) -> Result<ServerIdentity, TlsError> {
    let (ca, ca_origin) = LocalCa::load_or_create(state_dir)?;
    let cert_path = state_dir.join(SERVER_CERT_FILE);
    let key_path = state_dir.join(SERVER_KEY_FILE);
    let (chain, key, cert_origin) = match reusable(&ca, &cert_path, &key_path, names) {
        Ok((chain, key)) => (chain, key, Origin::Reused),
        Err(reason) => {
            tracing::info!(path = %cert_path.display(), %reason, "issuing server certificate");
            let leaf = ca.issue(names, SERVER_CERT_VALIDITY)?;
            write_file(&key_path, &leaf.key_pem, 0o600)?;
            write_file(&cert_path, &leaf.chain_pem, 0o644)?;
            (leaf.chain, leaf.key, Origin::Created)
        }
    };
    Ok(ServerIdentity {
        ca,
        ca_origin,
        chain,
        key,
        cert_path,
        cert_origin,
    })
}

/// The error is only a reason for the log line: any failure just means "issue a new one".
type Reusable = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);
fn reusable(ca: &LocalCa, cert: &Path, key: &Path, names: &[String]) -> Result<Reusable, String> {
    if !cert.exists() {
        return Err("no existing certificate".into());
    }
    let chain = load_certs(cert).map_err(|e| crate::error::chain(&e))?;
    let key = load_private_key(key).map_err(|e| crate::error::chain(&e))?;
    let provider = Arc::new(ring::default_provider());
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(|e| format!("key does not match certificate: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).map_err(|e| e.to_string())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let now = UnixTime::now();
    let soon = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + RENEW_BEFORE);
    for name in names {
        let server_name = ServerName::try_from(name.as_str()).map_err(|e| e.to_string())?;
        for at in [now, soon] {
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], at)
                .map_err(|e| format!("not valid for {name} within 30 days: {e}"))?;
        }
    }
    Ok((chain, key))
}

/// Reads every PEM certificate in `path`, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&read(path)?, path)
}

/// Reads the first PEM private key (PKCS#8, PKCS#1 or SEC1) in `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::{Error, PemObject};
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|source| match source {
        Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Server config for the registry endpoint. Docker speaks h2 when offered, h1 otherwise.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|source| TlsError::Config { source })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client config for talking to upstream registries: the bundled web PKI roots plus the
/// certificates in `extra_ca`.
///
/// ALPN is left empty on purpose. Upstream connections are HTTP/1.1 only, because registries
/// stream large blobs and one stream per connection keeps a slow blob from starving others.
/// Without ALPN a server cannot pick h2 (RFC 9113 §3.2), and
/// `hyper_rustls::HttpsConnectorBuilder::with_tls_config` panics on a preset ALPN list: build
/// the connector with `.enable_http1()` only, which keeps the list empty.
///
/// **`insecure_skip_verify` accepts any certificate for any name from anyone.** It exists only
/// for upstream registries the operator explicitly configured as insecure; never set it for
/// anything else. Handshake signatures are still checked, so the peer must at least hold the
/// key of the certificate it shows.
pub fn client_config(
    extra_ca: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    // Built even when skipping verification, so a broken extra_ca path is reported either way.
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::ExtraCa {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config { source })?;
    Ok(if insecure_skip_verify {
        let verifier = Arc::new(AcceptAnyServerCert { algorithms });
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    })
}

/// See the warning on [`client_config`]: chain and name checks are skipped entirely.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// How to make clients trust the local CA, for the CLI to print after creating it.
pub fn trust_instructions(ca_path: &Path) -> String {
    let ca = ca_path.display();
    format!(
        "Trust the portcullis CA ({ca}) with one of (as root):\n\
         \x20 whole system, Debian/Ubuntu (restart dockerd afterwards so it rereads the store):\n\
         \x20   cp {ca} /usr/local/share/ca-certificates/portcullis.crt && update-ca-certificates\n\
         \x20 docker only, per registry (<host:port> exactly as written in image names):\n\
         \x20   mkdir -p /etc/docker/certs.d/<host:port> && cp {ca} /etc/docker/certs.d/<host:port>/ca.crt\n\
         \x20 a single process (replaces that process's whole CA bundle):\n\
         \x20   SSL_CERT_FILE={ca} <command>\n"
    )
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn validity_window(validity: Duration) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    let not_after = now.checked_add(time::Duration::try_from(validity).ok()?)?;
    Some((now.checked_sub(CLOCK_SKEW)?, not_after))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes via a fresh temporary file and a rename: the mode is set at creation (so a key is
/// never readable by others, even briefly, and an old file's looser mode is not inherited),
/// and a crash never leaves a truncated file behind.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    fn mode(path: &Path) -> io::Result<u32> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    fn verifier_for(ca: &LocalCa) -> Result<Arc<WebPkiServerVerifier>, Box<dyn std::error::Error>> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone())?;
        let provider = Arc::new(ring::default_provider());
        Ok(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
    }

    /// Runs a handshake plus one byte each way; returns the client's view of the outcome.
    async fn handshake(server: Arc<ServerConfig>, client: ClientConfig) -> io::Result<()> {
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_side = async move {
            let mut tls = acceptor.accept(server_io).await?;
            tls.write_all(b"s").await?;
            tls.flush().await
        };
        let client_side = async move {
            let mut tls = connector
                .connect(
                    ServerName::try_from("localhost").map_err(io::Error::other)?,
                    client_io,
                )
                .await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            assert_eq!(&byte, b"s");
            Ok::<_, io::Error>(())
        };
        let (_, client_result) = tokio::join!(server_side, client_side);
        client_result
    }

    #[test]
    fn ca_is_private_and_reloaded_unchanged() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let state = tmp.path().join("state");
        let (created, origin) = LocalCa::load_or_create(&state)?;
        assert_eq!(origin, Origin::Created);
        assert_eq!(mode(&state)?, 0o700);
        assert_eq!(mode(&state.join(CA_KEY_FILE))?, 0o600);
        let (reloaded, origin) = LocalCa::load_or_create(&state)?;
        assert_eq!(origin, Origin::Reused);
        assert_eq!(reloaded.cert_der(), created.cert_der());
        assert_eq!(
            format!("{reloaded:?}"),
            format!("LocalCa {{ cert_path: {:?}, .. }}", reloaded.cert_path())
        );
        Ok(())
    }

    #[test]
    fn leaf_from_reloaded_ca_verifies_for_its_names_only() -> TestResult {
        let tmp = tempfile::tempdir()?;
        LocalCa::load_or_create(tmp.path())?;
        let (ca, _) = LocalCa::load_or_create(tmp.path())?;
        let leaf = ca.issue(
            &names(&["localhost", "127.0.0.1"]),
            Duration::from_secs(3600),
        )?;
        assert_eq!(leaf.chain[1], *ca.cert_der());
        let verifier = verifier_for(&ca)?;
        let verify = |name: &'static str| {
            let name = ServerName::try_from(name)?;
            verifier.verify_server_cert(
                &leaf.chain[0],
                &leaf.chain[1..],
                &name,
                &[],
                UnixTime::now(),
            )?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        verify("localhost")?;
        verify("127.0.0.1")?;
        assert!(verify("example.com").is_err());
        assert!(ca.issue(&[], Duration::from_secs(60)).is_err());
        Ok(())
    }

    #[test]
    fn mismatched_or_missing_ca_key_is_refused() -> TestResult {
        let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        LocalCa::load_or_create(a.path())?;
        LocalCa::load_or_create(b.path())?;
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE))?;
        let err = LocalCa::load_or_create(a.path())
            .err()
            .ok_or("foreign key accepted")?;
        assert!(matches!(err, TlsError::CaKeyMismatch { .. }), "{err}");
        fs::remove_file(a.path().join(CA_KEY_FILE))?;
        let err = LocalCa::load_or_create(a.path())
            .err()
            .ok_or("missing key accepted")?;
        assert!(matches!(err, TlsError::CaKeyMissing { .. }), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn handshake_needs_the_right_ca() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let id = server_identity(tmp.path(), &names(&["localhost"]))?;
        let server = server_config(id.chain, id.key)?;
        let trusted = client_config(Some(id.ca.cert_path()), false)?;
        handshake(server.clone(), trusted).await?;

        let other = tempfile::tempdir()?;
        let (other_ca, _) = LocalCa::load_or_create(other.path())?;
        let untrusted = client_config(Some(other_ca.cert_path()), false)?;
        assert!(handshake(server, untrusted).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn insecure_verifier_accepts_unknown_ca() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (ca, _) = LocalCa::load_or_create(tmp.path())?;
        let leaf = ca.issue(&names(&["localhost"]), Duration::from_secs(3600))?;
        let server = server_config(leaf.chain, leaf.key)?;
        assert!(handshake(server.clone(), client_config(None, false)?)
            .await
            .is_err());
        handshake(server, client_config(None, true)?).await?;
        Ok(())
    }

    #[test]
    fn client_config_fits_hyper_rustls() -> TestResult {
        let config = client_config(None, false)?;
        assert!(config.alpn_protocols.is_empty());
        // Panics if the config presets ALPN; enable_http1 alone must keep it empty.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        drop(connector);
        Ok(())
    }

    #[test]
    fn server_identity_reuses_until_names_change_or_expiry_nears() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let first = server_identity(dir, &names(&["localhost", "127.0.0.1"]))?;
        assert_eq!(
            (first.ca_origin, first.cert_origin),
            (Origin::Created, Origin::Created)
        );
        assert_eq!(mode(&dir.join(SERVER_KEY_FILE))?, 0o600);
        let again = server_identity(dir, &names(&["127.0.0.1"]))?;
        assert_eq!(
            (again.ca_origin, again.cert_origin),
            (Origin::Reused, Origin::Reused)
        );
        assert_eq!(again.chain, first.chain);
        let renamed = server_identity(dir, &names(&["localhost", "registry.test"]))?;
        assert_eq!(renamed.cert_origin, Origin::Created);
        assert_ne!(renamed.chain, first.chain);

        let short = renamed
            .ca
            .issue(&names(&["localhost"]), Duration::from_secs(10 * DAY))?;
        write_file(&dir.join(SERVER_CERT_FILE), &short.chain_pem, 0o644)?;
        write_file(&dir.join(SERVER_KEY_FILE), &short.key_pem, 0o600)?;
        let renewed = server_identity(dir, &names(&["localhost"]))?;
        assert_eq!(renewed.cert_origin, Origin::Created);
        assert_eq!(load_certs(&dir.join(SERVER_CERT_FILE))?, renewed.chain);
        Ok(())
    }

    #[test]
    fn bad_files_are_named_in_errors() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("x.pem");
        let shown = path.display().to_string();
        let message = |err: TlsError| crate::error::chain(&err);

        fs::write(&path, "not pem at all\n")?;
        let msg = message(load_certs(&path).err().ok_or("garbage accepted")?);
        assert_eq!(msg, format!("no certificate found in {shown}"));
        let msg = message(load_private_key(&path).err().ok_or("garbage accepted")?);
        assert_eq!(msg, format!("no private key found in {shown}"));

        fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )?;
        let msg = message(load_certs(&path).err().ok_or("bad base64 accepted")?);
        assert!(
            msg.starts_with(&format!("malformed PEM in {shown}: ")),
            "{msg}"
        );

        let missing = tmp.path().join("missing.pem");
        let msg = message(
            load_private_key(&missing)
                .err()
                .ok_or("missing file accepted")?,
        );
        assert!(msg.contains(&missing.display().to_string()), "{msg}");

        let state = tmp.path().join("state");
        LocalCa::load_or_create(&state)?;
        fs::write(
            state.join(CA_KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )?;
        let msg = message(
            LocalCa::load_or_create(&state)
                .err()
                .ok_or("bad CA key accepted")?,
        );
        assert!(
            msg.contains(&state.join(CA_KEY_FILE).display().to_string()),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn trust_instructions_name_the_ca_file() {
        let text = trust_instructions(Path::new("/var/lib/portcullis/ca.crt"));
        assert!(text.contains(
            "cp /var/lib/portcullis/ca.crt /usr/local/share/ca-certificates/portcullis.crt"
        ));
        assert!(text.contains("/etc/docker/certs.d/<host:port>/ca.crt"));
        assert!(text.contains("SSL_CERT_FILE=/var/lib/portcullis/ca.crt"));
    }
}

//! A test certificate authority: writes `ca.crt` and issues ECDSA P-256 leaf
//! certificates for `127.0.0.1` and `localhost`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use super::tempdir::TestDir;

/// The names every test server answers to.
pub const LOOPBACK_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

pub struct Ca {
    dir: TestDir,
    cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM encoded.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    /// A new CA in its own directory, holding only `ca.crt` (usable as a `--cert-dir`).
    pub fn new(name: &str) -> Arc<Ca> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("portcullis test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Duration::from_secs(24 * 3600));
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let dir = TestDir::new("ca");
        dir.write("ca.crt", cert.pem());
        let issuer = Issuer::new(params, key);
        Arc::new(Ca { dir, cert, issuer })
    }

    /// The PEM file of the CA certificate.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A directory holding only `ca.crt`: what `--src-cert-dir`/`--dest-cert-dir` want.
    pub fn cert_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (IP literals become IP SANs).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// A certificate to sign tokens with (no names, digital signature only).
    pub fn issue_signer(&self, common_name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("signer params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// Writes a loopback server certificate and key into `dir` as `server.crt`/`server.key`.
    pub fn issue_loopback_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let leaf = self.issue(&LOOPBACK_NAMES);
        let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&crt, &leaf.cert_pem).expect("write server.crt");
        std::fs::write(&key, &leaf.key_pem).expect("write server.key");
        (crt, key)
    }

    fn sign(&self, mut params: CertificateParams) -> Leaf {
        set_validity(&mut params, Duration::from_secs(24 * 3600));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
}

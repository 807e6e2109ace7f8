//! Trust roots: the GPG keyrings of `signedBy` and the public keys of `sigstoreSigned`,
//! loaded once when the policy is, so a key that cannot be used fails the policy load (fail
//! closed) instead of every pull. containers/image loads them per signature; it likewise
//! refuses the whole requirement when any one key is unreadable.

use std::time::{Duration, SystemTime};

use p256::pkcs8::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use p256::pkcs8::DecodePublicKey;
use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::packet::{self, Signature, SignatureType};
use pgp::types::{KeyDetails, KeyId, Tag, VerifyingKey};

use super::super::containers_policy::{GpgKeys, PublicKeys, SigstoreKeys};

/// id-ecPublicKey (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1, i.e. P-256 (RFC 5480).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A trust root that cannot be used. Each names the key source as the policy gave it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {message}")]
    Read { path: String, message: String },
    #[error("GPG keys from {source_name}: {message}")]
    Gpg {
        source_name: String,
        message: String,
    },
    #[error("no GPG public keys imported from {0}")]
    NoGpgKeys(String),
    #[error("sigstore public key {source_name}: {message}")]
    Sigstore {
        source_name: String,
        message: String,
    },
    #[error("{0} is not supported: only sigstore public keys (keyPath, keyPaths, keyData, keyDatas) are")]
    Unsupported(&'static str),
}

/// One key that may have made a data signature: a primary key or a subkey of a trusted key.
#[derive(Debug)]
pub(super) struct Signer {
    pub key: SignerKey,
    pub key_id: KeyId,
    /// Uppercase hex, as containers/image (and gpgme) spell fingerprints.
    pub fingerprint: String,
    /// The trusted primary key's fingerprint, which containers/image compares.
    pub primary_fingerprint: String,
    /// A revocation signature by the primary key exists for this key (or its primary).
    pub revoked: bool,
    /// From the newest self-signature: creation + key expiration time.
    pub expires: Option<SystemTime>,
}

#[derive(Debug)]
pub(super) enum SignerKey {
    Primary(packet::PublicKey),
    Subkey(packet::PublicSubkey),
}

impl SignerKey {
    pub fn verifying(&self) -> &dyn VerifyingKey {
        match self {
            SignerKey::Primary(k) => k,
            SignerKey::Subkey(k) => k,
        }
    }
}

/// The keys a `signedBy` requirement trusts: every primary key in its keyring(s) and their
/// subkeys, of which those marked for signing may sign.
#[derive(Debug)]
pub struct GpgKeyring {
    pub(super) signers: Vec<Signer>,
    fingerprints: Vec<String>,
}

impl GpgKeyring {
    /// Reads the files or takes the data of `keys` (the parser already base64-decoded
    /// `keyData`).
    pub fn load(keys: &GpgKeys) -> Result<GpgKeyring, KeyError> {
        match keys {
            GpgKeys::Path(path) => {
                let blob = read(path)?;
                GpgKeyring::from_blobs(&[(format!("keyPath {path}"), blob)])
            }
            GpgKeys::Paths(paths) => {
                let blobs = paths
                    .iter()
                    .map(|p| Ok((format!("keyPaths {p}"), read(p)?)))
                    .collect::<Result<Vec<_>, KeyError>>()?;
                GpgKeyring::from_blobs(&blobs)
            }
            GpgKeys::Data(data) => GpgKeyring::from_blobs(&[("keyData".to_owned(), data)]),
        }
    }

    /// Keyrings, each binary or ASCII-armored, holding one or more public keys; each is named
    /// for errors. containers/image's `newEphemeralGPGSigningMechanism`: a blob that does not
    /// parse fails all of them, and so does importing no key at all.
    pub fn from_blobs<B: AsRef<[u8]>>(blobs: &[(String, B)]) -> Result<GpgKeyring, KeyError> {
        let mut signers = Vec::new();
        let mut fingerprints = Vec::new();
        for (name, blob) in blobs {
            let bad = |message: String| KeyError::Gpg {
                source_name: name.clone(),
                message,
            };
            let (keys, _headers) = SignedPublicKey::from_reader_many(blob.as_ref())
                .map_err(|e| bad(format!("not an OpenPGP keyring: {e}")))?;
            for key in keys {
                let key = key.map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?;
                let (fingerprint, mut key_signers) = trusted(key).map_err(bad)?;
                fingerprints.push(fingerprint);
                signers.append(&mut key_signers);
            }
        }
        if fingerprints.is_empty() {
            let names: Vec<&str> = blobs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(KeyError::NoGpgKeys(names.join(", ")));
        }
        Ok(GpgKeyring {
            signers,
            fingerprints,
        })
    }

    /// The trusted primary keys' fingerprints, uppercase hex.
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }
}

/// A primary key's fingerprint and the keys of it that may sign data. Self-signatures that do
/// not verify are ignored (third-party certifications sit among them), but a key with no
/// valid self-signature at all is refused: nothing says what it is for.
fn trusted(key: SignedPublicKey) -> Result<(String, Vec<Signer>), String> {
    let primary = &key.primary_key;
    let primary_fingerprint = format!("{:X}", primary.fingerprint());
    let self_sigs: Vec<&Signature> = key
        .details
        .users
        .iter()
        .flat_map(|u| {
            u.signatures.iter().filter(move |s| {
                is_certification(s) && s.verify_certification(primary, Tag::UserId, &u.id).is_ok()
            })
        })
        .chain(
            key.details
                .direct_signatures
                .iter()
                .filter(|s| s.typ() == Some(SignatureType::Key) && s.verify_key(primary).is_ok()),
        )
        .collect();
    let Some(latest) = newest(&self_sigs) else {
        return Err(format!(
            "key {primary_fingerprint} has no valid self-signature"
        ));
    };
    let primary_revoked =
        key.details.revocation_signatures.iter().any(|s| {
            s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok()
        });

    let mut signers = Vec::new();
    if latest.key_flags().sign() {
        signers.push(Signer {
            key_id: primary.legacy_key_id(),
            fingerprint: primary_fingerprint.clone(),
            primary_fingerprint: primary_fingerprint.clone(),
            revoked: primary_revoked,
            expires: expiry(primary.created_at(), latest),
            key: SignerKey::Primary(primary.clone()),
        });
    }
    for sub in &key.public_subkeys {
        let bindings: Vec<&Signature> = sub
            .signatures
            .iter()
            .filter(|s| {
                s.typ() == Some(SignatureType::SubkeyBinding)
                    && s.verify_subkey_binding(primary, &sub.key).is_ok()
            })
            .collect();
        let Some(binding) = newest(&bindings) else {
            continue;
        };
        if !binding.key_flags().sign() {
            continue;
        }
        let revoked = sub.signatures.iter().any(|s| {
            s.typ() == Some(SignatureType::SubkeyRevocation)
                && s.verify_subkey_binding(primary, &sub.key).is_ok()
        });
        signers.push(Signer {
            key_id: sub.key.legacy_key_id(),
            fingerprint: format!("{:X}", sub.key.fingerprint()),
            primary_fingerprint: primary_fingerprint.clone(),
            revoked: revoked || primary_revoked,
            expires: expiry(sub.key.created_at(), binding),
            key: SignerKey::Subkey(sub.key.clone()),
        });
    }
    Ok((primary_fingerprint, signers))
}

fn is_certification(s: &Signature) -> bool {
    matches!(
        s.typ(),
        Some(
            SignatureType::CertGeneric
                | SignatureType::CertPersona
                | SignatureType::CertCasual
                | SignatureType::CertPositive
        )
    )
}

fn newest<'s>(sigs: &[&'s Signature]) -> Option<&'s Signature> {
    sigs.iter()
        .copied()
        .max_by_key(|s| s.created().map(|t| t.as_secs()))
}

fn expiry(created: pgp::types::Timestamp, self_sig: &Signature) -> Option<SystemTime> {
    let lifetime = self_sig.key_expiration_time()?;
    // A zero lifetime means "does not expire" (RFC 9580 5.2.3.13).
    if lifetime.as_secs() == 0 {
        return None;
    }
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::from(created.as_secs()) + u64::from(lifetime.as_secs())),
    )
}

/// The public keys a `sigstoreSigned` requirement trusts: ECDSA P-256 only, the kind
/// `cosign generate-key-pair` makes.
#[derive(Debug, Clone)]
pub struct CosignKeys {
    pub(super) keys: Vec<p256::ecdsa::VerifyingKey>,
}

impl CosignKeys {
    /// Fulcio and PKI roots need certificate verification, not done here: refused.
    pub fn load(keys: &SigstoreKeys) -> Result<CosignKeys, KeyError> {
        match keys {
            SigstoreKeys::Keys(keys) => CosignKeys::load_public_keys(keys),
            SigstoreKeys::Fulcio { .. } => Err(KeyError::Unsupported("fulcio")),
            SigstoreKeys::Pki { .. } => Err(KeyError::Unsupported("pki")),
        }
    }

    pub fn load_public_keys(keys: &PublicKeys) -> Result<CosignKeys, KeyError> {
        let pems: Vec<(String, Vec<u8>)> = match keys {
            PublicKeys::Path(p) => vec![(format!("keyPath {p}"), read(p)?)],
            PublicKeys::Paths(paths) => paths
                .iter()
                .map(|p| Ok((format!("keyPaths {p}"), read(p)?)))
                .collect::<Result<_, KeyError>>()?,
            PublicKeys::Data(d) => vec![("keyData".to_owned(), d.clone())],
            PublicKeys::Datas(ds) => ds
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("keyDatas[{i}]"), d.clone()))
                .collect(),
        };
        CosignKeys::from_pems(&pems)
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo) blocks, each named for errors. As in
    /// containers/image, one bad key fails them all, so a broken fallback key is found before
    /// it is needed; and at least one is required.
    pub fn from_pems<B: AsRef<[u8]>>(pems: &[(String, B)]) -> Result<CosignKeys, KeyError> {
        if pems.is_empty() {
            return Err(KeyError::Sigstore {
                source_name: "(none)".to_owned(),
                message: "no public keys given".to_owned(),
            });
        }
        let keys = pems
            .iter()
            .map(|(name, pem)| {
                p256_key(pem.as_ref()).map_err(|message| KeyError::Sigstore {
                    source_name: name.clone(),
                    message,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(CosignKeys { keys })
    }
}

fn p256_key(pem: &[u8]) -> Result<p256::ecdsa::VerifyingKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_owned())?;
    let (label, der) = p256::pkcs8::Document::from_pem(text.trim())
        .map_err(|e| format!("not a PEM block: {e}"))?;
    if label != "PUBLIC KEY" {
        return Err(format!(
            "PEM block is {label:?}, expected \"PUBLIC KEY\" (SubjectPublicKeyInfo)"
        ));
    }
    let spki = SubjectPublicKeyInfoRef::try_from(der.as_bytes())
        .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
    let curve = spki
        .algorithm
        .parameters_oid()
        .ok()
        .filter(|_| spki.algorithm.oid == EC_PUBLIC_KEY);
    if curve != Some(SECP256R1) {
        return Err(format!(
            "unsupported key algorithm {} (only ECDSA P-256 is supported)",
            match curve {
                Some(curve) => format!("ECDSA curve {curve}"),
                None => spki.algorithm.oid.to_string(),
            }
        ));
    }
    p256::ecdsa::VerifyingKey::from_public_key_der(der.as_bytes())
        .map_err(|e| format!("invalid P-256 public key: {e}"))
}

fn read(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::signature::containers_policy::PathOrData;
    use p256::pkcs8::EncodePublicKey;

    const TRUSTED_GPG: &[u8] = include_bytes!("testdata/trusted.gpg");
    const OTHER_GPG: &[u8] = include_bytes!("testdata/other.gpg");

    #[test]
    fn trust_roots_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<GpgKeyring>();
        shared::<CosignKeys>();
    }

    #[test]
    fn key_paths_are_each_read_and_combined() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.gpg"), dir.path().join("b.gpg"));
        std::fs::write(&a, TRUSTED_GPG).unwrap();
        std::fs::write(&b, OTHER_GPG).unwrap();
        let paths = vec![a.display().to_string(), b.display().to_string()];
        let ring = GpgKeyring::load(&GpgKeys::Paths(paths.clone())).unwrap();
        assert_eq!(
            ring.fingerprints(),
            [
                "496936A9965277DCC9F287810FB559DAE178073F",
                "406C93DBE8101DA8AEEA82AE9C192F16555BA887"
            ]
        );
        let ring = GpgKeyring::load(&GpgKeys::Data(OTHER_GPG.to_vec())).unwrap();
        assert_eq!(ring.fingerprints().len(), 1);

        // One missing file fails them all.
        let missing = dir.path().join("missing.gpg").display().to_string();
        let e =
            GpgKeyring::load(&GpgKeys::Paths(vec![paths[0].clone(), missing.clone()])).unwrap_err();
        assert!(
            matches!(&e, KeyError::Read { path, .. } if *path == missing),
            "{e}"
        );
    }

    #[test]
    fn sigstore_key_sources_load_and_certificates_are_refused() {
        let pem = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into())
            .unwrap()
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosign.pub");
        std::fs::write(&path, &pem).unwrap();
        let by_path = CosignKeys::load(&SigstoreKeys::Keys(PublicKeys::Path(
            path.display().to_string(),
        )))
        .unwrap();
        let by_datas = CosignKeys::load(&SigstoreKeys::Keys(PublicKeys::Datas(vec![
            pem.clone().into_bytes(),
            pem.into_bytes(),
        ])))
        .unwrap();
        assert_eq!((by_path.keys.len(), by_datas.keys.len()), (1, 2));
        assert_eq!(by_path.keys[0], by_datas.keys[1]);

        let fulcio = SigstoreKeys::Fulcio {
            ca: PathOrData::Data(Vec::new()),
            oidc_issuer: "https://issuer.example".to_owned(),
            subject_email: "a@example.invalid".to_owned(),
        };
        assert_eq!(
            CosignKeys::load(&fulcio).unwrap_err(),
            KeyError::Unsupported("fulcio")
        );
    }
}

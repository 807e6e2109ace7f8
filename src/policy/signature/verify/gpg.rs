//! GPG "simple signing" (containers/image `signedBy`): the signature is an OpenPGP signed
//! message, as `gpg --sign` and `skopeo standalone-sign` / `--sign-by` write it, whose literal
//! data is the payload. Verified the way containers/image's `verifyAndExtractSignature` does:
//! the message must be signed by a key of the keyring (a signing subkey counts for its
//! primary), the signature must not have expired, and only then is the payload parsed.

use std::io::Read;
use std::time::{Duration, SystemTime};

use pgp::composed::Message;
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::SignatureType;

use super::keys::GpgKeyring;
use super::payload::{self, Payload, PayloadKind};
use super::SigError;

/// A payload is a few hundred bytes; the cap stops a compressed bomb from being inflated.
const MAX_PAYLOAD: u64 = 64 * 1024;

/// Verifies `signature` against `keyring` now and returns the payload it signs.
pub fn verify_simple_signing(signature: &[u8], keyring: &GpgKeyring) -> Result<Payload, SigError> {
    verify_simple_signing_at(signature, keyring, SystemTime::now())
}

/// [`verify_simple_signing`] as of `now` (signature and key expiry are judged against it).
pub fn verify_simple_signing_at(
    signature: &[u8],
    keyring: &GpgKeyring,
    now: SystemTime,
) -> Result<Payload, SigError> {
    let malformed = |e: &dyn std::fmt::Display| SigError::Malformed(e.to_string());
    let message = Message::from_bytes(signature).map_err(|e| malformed(&e))?;
    let mut message = message.decompress().map_err(|e| malformed(&e))?;
    let Message::Signed { reader, .. } = &message else {
        return Err(SigError::Malformed(
            "not a signed OpenPGP message".to_owned(),
        ));
    };
    // Signed data must be the payload itself; nested signed or compressed layers are never
    // written by gpg or containers/image and would make "what was signed" ambiguous.
    if !reader.get_ref().is_literal() {
        return Err(SigError::Malformed(
            "the signed content is not literal data".to_owned(),
        ));
    }

    let mut content = Vec::new();
    (&mut message)
        .take(MAX_PAYLOAD + 1)
        .read_to_end(&mut content)
        .map_err(|e| malformed(&e))?;
    if content.len() as u64 > MAX_PAYLOAD {
        return Err(SigError::Malformed(format!(
            "signed content is larger than {MAX_PAYLOAD} bytes"
        )));
    }
    // Reading to the end completes the hashes and reads the trailing signature packets.
    let mut rest = [0u8; 1];
    if message.read(&mut rest).map_err(|e| malformed(&e))? != 0 {
        return Err(SigError::Malformed(
            "signed content is larger than expected".to_owned(),
        ));
    }

    let signer = find_signer(&message, keyring)?;
    let sig = signer.signature;
    if let (Some(created), Some(lifetime)) = (sig.created(), sig.signature_expiration_time()) {
        // A zero lifetime means the signature does not expire.
        if lifetime.as_secs() != 0 {
            let expires = SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::from(created.as_secs()) + u64::from(lifetime.as_secs()));
            if now > expires {
                return Err(SigError::Expired(format!(
                    "signature expired at {}",
                    unix(expires)
                )));
            }
        }
    }
    let key = signer.key;
    if key.revoked {
        return Err(SigError::KeyUnusable(format!(
            "signing key {} of {} is revoked",
            key.fingerprint, key.primary_fingerprint
        )));
    }
    if let Some(expires) = key.expires {
        if now > expires {
            return Err(SigError::KeyUnusable(format!(
                "signing key {} of {} expired at {}",
                key.fingerprint,
                key.primary_fingerprint,
                unix(expires)
            )));
        }
    }
    // Every signer carries its primary's fingerprint, so this holds by construction; kept
    // as containers/image keeps its `acceptedKeyIdentities` check, against future changes.
    if !keyring.fingerprints().contains(&key.primary_fingerprint) {
        return Err(SigError::NoTrustedSignature(format!(
            "signature by key {} is not accepted",
            key.primary_fingerprint
        )));
    }

    payload::parse(&content, PayloadKind::SimpleSigning).map_err(|e| SigError::Payload(e.0))
}

struct Found<'m, 'k> {
    signature: &'m pgp::packet::Signature,
    key: &'k super::keys::Signer,
}

/// The first of the message's signatures that a trusted signing key verifies.
fn find_signer<'m, 'k>(
    message: &'m Message<'_>,
    keyring: &'k GpgKeyring,
) -> Result<Found<'m, 'k>, SigError> {
    let Message::Signed { reader, .. } = message else {
        return Err(SigError::Malformed(
            "not a signed OpenPGP message".to_owned(),
        ));
    };
    let mut issuers = Vec::new();
    let mut claimed_trusted = false;
    let mut md5 = false;
    for index in 0..reader.num_signatures() {
        let Some(signature) = reader.signature(index) else {
            continue;
        };
        if signature.typ() != Some(SignatureType::Binary) {
            continue;
        }
        // MD5 collisions are cheap; gpg (and so skopeo) refuses MD5 signatures by default.
        if signature.hash_alg() == Some(HashAlgorithm::Md5) {
            md5 = true;
            continue;
        }
        let ids = signature.issuer_key_id();
        let fprs = signature.issuer_fingerprint();
        // Only the key the signature names is tried (a hostile signature cannot make every
        // trusted key run a verification); one that names none is tried with all, as RFC
        // 9580 lets the issuer be omitted.
        let anonymous = ids.is_empty() && fprs.is_empty();
        for signer in &keyring.signers {
            let names_it = ids.iter().any(|id| **id == signer.key_id)
                || fprs.iter().any(|f| format!("{f:X}") == signer.fingerprint);
            claimed_trusted |= names_it;
            if (names_it || anonymous)
                && message
                    .verify_nested_explicit(index, signer.key.verifying())
                    .is_ok()
            {
                return Ok(Found {
                    signature,
                    key: signer,
                });
            }
        }
        issuers.extend(ids.iter().map(|id| hex::encode_upper(id.as_ref())));
    }
    if md5 {
        return Err(SigError::Invalid(
            "signature uses the MD5 hash, which is not accepted".to_owned(),
        ));
    }
    if claimed_trusted {
        // It names a trusted key but that key's check fails: altered content or signature.
        return Err(SigError::Invalid(
            "cryptographic verification failed".to_owned(),
        ));
    }
    Err(SigError::NoTrustedSignature(if issuers.is_empty() {
        "no data signature found".to_owned()
    } else {
        format!("signature by key ID {} is not trusted", issuers.join(", "))
    }))
}

fn unix(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = "docker.io/library/busybox:latest";
    const DIGEST: &str = "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";
    const TRUSTED_FPR: &str = "496936A9965277DCC9F287810FB559DAE178073F";
    const SUBKEY_PRIMARY_FPR: &str = "56B85ABE423AD4419169D78F43460681F3753915";

    const TRUSTED_GPG: &[u8] = include_bytes!("testdata/trusted.gpg");
    const TRUSTED_ASC: &[u8] = include_bytes!("testdata/trusted.asc");
    const OTHER_GPG: &[u8] = include_bytes!("testdata/other.gpg");
    const SUBKEY_GPG: &[u8] = include_bytes!("testdata/subkey.gpg");
    const SEVERAL_GPG: &[u8] = include_bytes!("testdata/several.gpg");
    const TRUSTED_SIG: &[u8] = include_bytes!("testdata/trusted.sig");
    const OTHER_SIG: &[u8] = include_bytes!("testdata/other.sig");
    const SUBKEY_SIG: &[u8] = include_bytes!("testdata/subkey.sig");
    const UNCOMPRESSED_SIG: &[u8] = include_bytes!("testdata/uncompressed.sig");
    const EXPIRED_SIG: &[u8] = include_bytes!("testdata/expired.sig");
    const EXPIRED_KEY_GPG: &[u8] = include_bytes!("testdata/expired-key.gpg");
    const EXPIRED_KEY_SIG: &[u8] = include_bytes!("testdata/expired-key.sig");
    const REVOKED_KEY_GPG: &[u8] = include_bytes!("testdata/revoked-key.gpg");
    const REVOKED_KEY_SIG: &[u8] = include_bytes!("testdata/revoked-key.sig");
    const MD5_SIG: &[u8] = include_bytes!("testdata/md5.sig");
    const MANIFEST: &[u8] = include_bytes!("testdata/manifest.json");

    fn keyring(blob: &[u8]) -> GpgKeyring {
        GpgKeyring::from_blobs(&[("test".to_owned(), blob)]).unwrap()
    }

    #[test]
    fn skopeo_signature_with_the_right_key_gives_its_payload() {
        let p = verify_simple_signing(TRUSTED_SIG, &keyring(TRUSTED_GPG)).unwrap();
        assert_eq!(p.docker_reference, REFERENCE);
        assert_eq!(p.manifest_digest, DIGEST);
        // The signed digest is the committed manifest's.
        assert_eq!(
            p.manifest_digest,
            format!("sha256:{}", sha256_hex(MANIFEST))
        );
    }

    #[test]
    fn armored_keyring_verifies_as_the_binary_one() {
        let ring = keyring(TRUSTED_ASC);
        assert_eq!(ring.fingerprints(), [TRUSTED_FPR]);
        let p = verify_simple_signing(TRUSTED_SIG, &ring).unwrap();
        assert_eq!(p.docker_reference, REFERENCE);
    }

    #[test]
    fn signature_by_another_key_is_not_trusted() {
        let e = verify_simple_signing(OTHER_SIG, &keyring(TRUSTED_GPG)).unwrap_err();
        assert!(matches!(e, SigError::NoTrustedSignature(_)), "{e}");
        assert!(
            e.to_string().starts_with("no signature by a trusted key"),
            "{e}"
        );
        assert!(e.to_string().contains("9C192F16555BA887"), "{e}");
        // And the other way round.
        let e = verify_simple_signing(TRUSTED_SIG, &keyring(OTHER_GPG)).unwrap_err();
        assert!(matches!(e, SigError::NoTrustedSignature(_)), "{e}");
    }

    #[test]
    fn keyring_of_several_keys_accepts_each_signer_it_holds() {
        let ring = keyring(SEVERAL_GPG);
        assert_eq!(ring.fingerprints().len(), 3);
        assert!(ring.fingerprints().contains(&TRUSTED_FPR.to_owned()));
        for sig in [TRUSTED_SIG, OTHER_SIG, SUBKEY_SIG] {
            let p = verify_simple_signing(sig, &ring).unwrap();
            assert_eq!(p.manifest_digest, DIGEST);
        }
        // Several blobs (keyPaths) combine the same way.
        let ring =
            GpgKeyring::from_blobs(&[("a".to_owned(), OTHER_GPG), ("b".to_owned(), TRUSTED_GPG)])
                .unwrap();
        assert!(verify_simple_signing(TRUSTED_SIG, &ring).is_ok());
    }

    #[test]
    fn signing_subkey_counts_for_its_primary_key() {
        let ring = keyring(SUBKEY_GPG);
        assert_eq!(ring.fingerprints(), [SUBKEY_PRIMARY_FPR]);
        let p = verify_simple_signing(SUBKEY_SIG, &ring).unwrap();
        assert_eq!(p.docker_reference, REFERENCE);
        // The primary key is certify-only: it is no signer itself.
        assert!(ring
            .signers
            .iter()
            .all(|s| s.fingerprint != SUBKEY_PRIMARY_FPR));
    }

    #[test]
    fn altered_payload_byte_fails_verification() {
        let at = find(UNCOMPRESSED_SIG, b"busybox");
        let mut altered = UNCOMPRESSED_SIG.to_vec();
        altered[at + 4] = b'f'; // busyfox
        let e = verify_simple_signing(&altered, &keyring(TRUSTED_GPG)).unwrap_err();
        assert!(matches!(e, SigError::Invalid(_)), "{e}");
        assert!(e.to_string().starts_with("signature is not valid"), "{e}");
        // Unaltered, the same file verifies.
        assert!(verify_simple_signing(UNCOMPRESSED_SIG, &keyring(TRUSTED_GPG)).is_ok());
    }

    #[test]
    fn altered_signature_bytes_are_refused() {
        // The last bytes are the RSA signature value.
        let mut altered = UNCOMPRESSED_SIG.to_vec();
        let last = altered.len() - 1;
        altered[last] ^= 0x01;
        let e = verify_simple_signing(&altered, &keyring(TRUSTED_GPG)).unwrap_err();
        assert!(matches!(e, SigError::Invalid(_)), "{e}");
        // In the compressed file any flipped byte is refused, however it is noticed.
        for at in [10, TRUSTED_SIG.len() / 2, TRUSTED_SIG.len() - 3] {
            let mut altered = TRUSTED_SIG.to_vec();
            altered[at] ^= 0x20;
            assert!(
                verify_simple_signing(&altered, &keyring(TRUSTED_GPG)).is_err(),
                "flipped byte {at} accepted"
            );
        }
    }

    #[test]
    fn no_single_byte_change_or_truncation_verifies_or_panics() {
        // RSA is slow unoptimised: the compressed case uses the ed25519 subkey's signature.
        let ring = keyring(SEVERAL_GPG);
        for original in [SUBKEY_SIG, UNCOMPRESSED_SIG] {
            for at in 0..original.len() {
                for flip in [0x01u8, 0x80] {
                    let mut altered = original.to_vec();
                    altered[at] ^= flip;
                    if let Ok(p) = verify_simple_signing(&altered, &ring) {
                        // A change in a field nothing hashes (e.g. the literal's file name
                        // or an unhashed subpacket) may keep the signature valid, but never
                        // changes what was signed.
                        assert_eq!(p.docker_reference, REFERENCE, "byte {at}^{flip:#x}");
                        assert_eq!(p.manifest_digest, DIGEST, "byte {at}^{flip:#x}");
                    }
                }
            }
            for len in 0..original.len() {
                assert!(
                    verify_simple_signing(&original[..len], &ring).is_err(),
                    "truncated to {len} verified"
                );
            }
        }
    }

    #[test]
    fn expired_signature_is_refused() {
        let e = verify_simple_signing(EXPIRED_SIG, &keyring(TRUSTED_GPG)).unwrap_err();
        assert!(matches!(e, SigError::Expired(_)), "{e}");
        assert!(e.to_string().contains("2026-12-02T04:57:00Z"), "{e}");
        // Before its expiry (10 s after 1796187410) it verifies.
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_187_415);
        assert!(verify_simple_signing_at(EXPIRED_SIG, &keyring(TRUSTED_GPG), then).is_ok());
    }

    #[test]
    fn signature_by_an_expired_key_is_refused() {
        let ring = keyring(EXPIRED_KEY_GPG);
        let e = verify_simple_signing(EXPIRED_KEY_SIG, &ring).unwrap_err();
        assert!(matches!(e, SigError::KeyUnusable(_)), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
        // While the key was valid (it was made at 1795930020, for one day), it verifies.
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_930_020 + 120);
        assert!(verify_simple_signing_at(EXPIRED_KEY_SIG, &ring, then).is_ok());
    }

    #[test]
    fn signature_by_a_revoked_key_is_refused() {
        let e = verify_simple_signing(REVOKED_KEY_SIG, &keyring(REVOKED_KEY_GPG)).unwrap_err();
        assert!(matches!(e, SigError::KeyUnusable(_)), "{e}");
        assert!(e.to_string().contains("is revoked"), "{e}");
    }

    #[test]
    fn md5_signature_is_refused_as_skopeo_refuses_it() {
        let e = verify_simple_signing(MD5_SIG, &keyring(TRUSTED_GPG)).unwrap_err();
        assert!(matches!(e, SigError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("MD5"), "{e}");
    }

    #[test]
    fn garbage_and_truncation_are_malformed() {
        let e = verify_simple_signing(b"not a signature", &keyring(TRUSTED_GPG)).unwrap_err();
        assert!(matches!(e, SigError::Malformed(_)), "{e}");
        let cut = &UNCOMPRESSED_SIG[..UNCOMPRESSED_SIG.len() - 40];
        assert!(verify_simple_signing(cut, &keyring(TRUSTED_GPG)).is_err());
        assert!(verify_simple_signing(&[], &keyring(TRUSTED_GPG)).is_err());
    }

    #[test]
    fn bad_keyrings_are_typed_errors() {
        let e = GpgKeyring::from_blobs(&[("keyData".to_owned(), b"junk".as_slice())]).unwrap_err();
        assert!(
            matches!(e, KeyErrorKind::Gpg { .. } | KeyErrorKind::NoGpgKeys(_)),
            "{e}"
        );
        let e = GpgKeyring::from_blobs::<&[u8]>(&[("keyData".to_owned(), &[])]).unwrap_err();
        assert!(e.to_string().starts_with("GPG keys from keyData: "), "{e}");
        let e = GpgKeyring::from_blobs::<&[u8]>(&[]).unwrap_err();
        assert!(matches!(e, KeyErrorKind::NoGpgKeys(_)), "{e}");
        let e = GpgKeyring::load(&crate::policy::signature::containers_policy::GpgKeys::Path(
            "/nonexistent/key.gpg".to_owned(),
        ))
        .unwrap_err();
        assert!(matches!(e, KeyErrorKind::Read { .. }), "{e}");
        // One good and one bad blob: the whole keyring is refused.
        let e = GpgKeyring::from_blobs(&[
            ("good".to_owned(), TRUSTED_GPG),
            (
                "bad".to_owned(),
                b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx\n".as_slice(),
            ),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("bad"), "{e}");
    }

    use super::super::keys::KeyError as KeyErrorKind;

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }
}

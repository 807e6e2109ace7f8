//! cosign signatures with a public key (containers/image `sigstoreSigned` with `keyPath` and
//! friends): an ECDSA P-256 / SHA-256 signature, ASN.1 DER and base64 in the layer's
//! `dev.cosignproject.cosign/signature` annotation, over the layer blob, which is the
//! payload. containers/image's `VerifySigstorePayload`: any one trusted key verifying is
//! enough; only then is the payload parsed.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::Signature;

use base64::Engine;

use super::keys::CosignKeys;
use super::payload::{self, Payload, PayloadKind};
use super::SigError;

/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Verifies `signature_b64` over `payload` (the signature layer's bytes) against `keys`.
pub fn verify_cosign(
    payload: &[u8],
    signature_b64: &str,
    keys: &CosignKeys,
) -> Result<Payload, SigError> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature_b64)
        .map_err(|e| SigError::Malformed(format!("signature annotation is not base64: {e}")))?;
    let signature = Signature::from_der(&der)
        .map_err(|_| SigError::Malformed("signature is not an ASN.1 DER ECDSA signature".into()))?;
    if !keys
        .keys
        .iter()
        .any(|key| key.verify(payload, &signature).is_ok())
    {
        // An ECDSA signature does not name its key: other key and altered bytes look alike.
        return Err(SigError::NoTrustedSignature(
            "the signature does not verify with any trusted public key".to_owned(),
        ));
    }
    payload::parse(payload, PayloadKind::Cosign).map_err(|e| SigError::Payload(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    const DIGEST: &str = "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";

    /// cosign's own payload format, as `cosign sign` writes it.
    fn cosign_payload() -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"registry.example/team/app"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    /// Fixed scalars: deterministic keys, no RNG needed in tests.
    fn signing_key(seed: u8) -> SigningKey {
        let mut bytes = [0u8; 32];
        bytes[31] = seed;
        bytes[0] = 0x11;
        SigningKey::from_bytes(&bytes.into()).unwrap()
    }

    fn keys_of(signers: &[&SigningKey]) -> CosignKeys {
        let pems: Vec<(String, String)> = signers
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let pem = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
                (format!("key {i}"), pem)
            })
            .collect();
        CosignKeys::from_pems(&pems).unwrap()
    }

    fn sign(key: &SigningKey, payload: &[u8]) -> String {
        let sig: Signature = key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn signature_by_trusted_key_gives_the_payload() {
        let key = signing_key(1);
        let payload = cosign_payload();
        let p = verify_cosign(&payload, &sign(&key, &payload), &keys_of(&[&key])).unwrap();
        assert_eq!(p.docker_reference, "registry.example/team/app");
        assert_eq!(p.manifest_digest, DIGEST);
    }

    #[test]
    fn signature_made_by_ring_verifies() {
        // An independent ECDSA implementation signs, so sign and verify cannot share a bug.
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pem = p256::PublicKey::from_sec1_bytes(pair.public_key().as_ref())
            .unwrap()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let keys = CosignKeys::from_pems(&[("keyPath cosign.pub".to_owned(), pem)]).unwrap();
        let payload = cosign_payload();
        let sig = pair.sign(&rng, &payload).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
        let p = verify_cosign(&payload, &b64, &keys).unwrap();
        assert_eq!(p.manifest_digest, DIGEST);
        let e = verify_cosign(b"{}", &b64, &keys).unwrap_err();
        assert!(matches!(e, SigError::NoTrustedSignature(_)), "{e}");
    }

    #[test]
    fn any_one_of_several_keys_suffices() {
        let (a, b) = (signing_key(1), signing_key(2));
        let payload = cosign_payload();
        let keys = keys_of(&[&a, &b]);
        assert!(verify_cosign(&payload, &sign(&b, &payload), &keys).is_ok());
        assert!(verify_cosign(&payload, &sign(&a, &payload), &keys).is_ok());
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let payload = cosign_payload();
        let e = verify_cosign(
            &payload,
            &sign(&signing_key(2), &payload),
            &keys_of(&[&signing_key(1)]),
        )
        .unwrap_err();
        assert!(matches!(e, SigError::NoTrustedSignature(_)), "{e}");
        assert!(
            e.to_string().starts_with("no signature by a trusted key"),
            "{e}"
        );
    }

    #[test]
    fn altered_payload_is_refused() {
        let key = signing_key(1);
        let payload = cosign_payload();
        let sig = sign(&key, &payload);
        let altered = String::from_utf8(payload)
            .unwrap()
            .replace("team/app", "team/apq")
            .into_bytes();
        let e = verify_cosign(&altered, &sig, &keys_of(&[&key])).unwrap_err();
        assert!(matches!(e, SigError::NoTrustedSignature(_)), "{e}");
    }

    #[test]
    fn altered_signature_is_refused() {
        let key = signing_key(1);
        let payload = cosign_payload();
        let sig: Signature = key.sign(&payload);
        let mut der = sig.to_der().as_bytes().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let e = verify_cosign(&payload, &b64, &keys_of(&[&key])).unwrap_err();
        assert!(matches!(e, SigError::NoTrustedSignature(_)), "{e}");
        // Not DER at all.
        let raw = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
        let e = verify_cosign(&payload, &raw, &keys_of(&[&key])).unwrap_err();
        assert!(matches!(e, SigError::Malformed(_)), "{e}");
    }

    #[test]
    fn bad_base64_is_refused() {
        let key = signing_key(1);
        let payload = cosign_payload();
        let e = verify_cosign(&payload, "not base64!", &keys_of(&[&key])).unwrap_err();
        assert!(matches!(e, SigError::Malformed(_)), "{e}");
        assert!(e.to_string().contains("not base64"), "{e}");
        // Unpadded base64 is refused as Go's StdEncoding refuses it.
        let padded = sign(&key, &payload);
        let unpadded = padded.trim_end_matches('=');
        if unpadded.len() != padded.len() {
            let e = verify_cosign(&payload, unpadded, &keys_of(&[&key])).unwrap_err();
            assert!(matches!(e, SigError::Malformed(_)), "{e}");
        }
        // Line breaks inside are refused too (Go would skip them; nothing writes them).
        let (head, tail) = padded.split_at(8);
        let e = verify_cosign(&payload, &format!("{head}\n{tail}"), &keys_of(&[&key])).unwrap_err();
        assert!(matches!(e, SigError::Malformed(_)), "{e}");
    }

    #[test]
    fn valid_signature_over_a_bad_payload_is_a_payload_error() {
        let key = signing_key(1);
        let payload = String::from_utf8(cosign_payload())
            .unwrap()
            .replace(
                "cosign container image signature",
                "atomic container signature",
            )
            .into_bytes();
        let e = verify_cosign(&payload, &sign(&key, &payload), &keys_of(&[&key])).unwrap_err();
        assert!(matches!(e, SigError::Payload(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("payload: unrecognized signature type"),
            "{e}"
        );
    }

    #[test]
    fn non_p256_keys_are_refused_when_loaded() {
        use super::super::keys::KeyError;
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let pem = pair.public_key_pem();
            let e = CosignKeys::from_pems(&[("keyData".to_owned(), pem)]).unwrap_err();
            assert!(matches!(e, KeyError::Sigstore { .. }), "{e}");
            assert!(
                e.to_string().contains("only ECDSA P-256 is supported"),
                "{e}"
            );
        }
        // A good key next to a bad one still fails the set, as in containers/image.
        let good = signing_key(1)
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let e = CosignKeys::from_pems(&[
            ("keyDatas[0]".to_owned(), good.as_bytes().to_vec()),
            ("keyDatas[1]".to_owned(), b"junk".to_vec()),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("keyDatas[1]"), "{e}");
        let e = CosignKeys::from_pems::<&[u8]>(&[]).unwrap_err();
        assert!(e.to_string().contains("no public keys"), "{e}");
        // A private key where a public one belongs.
        let private = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let e = CosignKeys::from_pems(&[("keyData".to_owned(), private)]).unwrap_err();
        assert!(e.to_string().contains("expected \"PUBLIC KEY\""), "{e}");
    }

    #[test]
    fn p256_key_made_elsewhere_loads() {
        // rcgen (ring) writes the SPKI PEM here, not p256: the parse is not circular.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let keys = CosignKeys::from_pems(&[("keyData".to_owned(), pair.public_key_pem())]).unwrap();
        assert_eq!(keys.keys.len(), 1);
    }
}

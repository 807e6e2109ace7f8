//! Cryptographic verification of image signatures, pure: the caller fetches the signature
//! bytes (see [`locate`] for where) and the policy names the trust roots ([`keys`]).
//! - [`gpg`]: `signedBy` GPG simple signing (lookaside `signature-N` files);
//! - [`cosign`]: `sigstoreSigned` with public keys (`sha256-<hex>.sig` attachments);
//! - [`payload`]: the signed JSON both carry, parsed only once its signature verified.
//!
//! Not done here: Fulcio and PKI certificates, Rekor SETs (a policy asking for them must be
//! refused by the caller, see [`keys::CosignKeys::load`]); matching the payload against the
//! pulled image (`signedIdentity`, manifest digest), which is the evaluator's.
//!
//! Inputs are taken whole: the caller bounds what it fetches (containers/image reads at most
//! 4 MiB per signature and 128 lookaside signatures per manifest). Verification is CPU work
//! (an RSA or ECDSA check per signature), so an async caller runs it off the reactor.

pub mod cosign;
pub mod gpg;
pub mod keys;
pub mod locate;
pub mod payload;

pub use cosign::verify_cosign;
pub use gpg::verify_simple_signing;
pub use keys::{CosignKeys, GpgKeyring, KeyError};
pub use locate::{cosign_tag, lookaside_url, LocateError};
pub use payload::{Payload, PayloadKind};

/// Why a signature was not accepted. Each message can stand as a refusal's explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// Not made by any trusted key (or, for cosign, not valid for any: ECDSA cannot tell).
    #[error("no signature by a trusted key: {0}")]
    NoTrustedSignature(String),
    /// Names a trusted key but does not verify with it: the content or signature was altered.
    #[error("signature is not valid: {0}")]
    Invalid(String),
    #[error("signature is not valid: {0}")]
    Malformed(String),
    #[error("signature is not valid: {0}")]
    Expired(String),
    #[error("signature is not valid: {0}")]
    KeyUnusable(String),
    /// The signature verified but what it signs is not a payload of its format.
    #[error("payload: {0}")]
    Payload(String),
}

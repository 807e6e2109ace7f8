//! The signature-policy decision for one image, containers/image's
//! `PolicyContext.IsRunningImageAllowed`: the most specific scope's requirements all must
//! accept, in order, the first refusal decides. Pure: the cryptography is the caller's
//! [`Verifier`], so this module depends on no key format or crypto library, and fetching is
//! the caller's too ([`needs`] says what to fetch).

use std::fmt;

use sha2::{Digest as _, Sha256, Sha512};

use super::containers_policy::{
    requirements_for, GpgKeys, KeyType, PolicyJson, Requirement, SigstoreSigned, GLOBAL_DEFAULT,
};
use super::identity::{self, IdentityMismatch};
use super::scope::ImageRef;
use crate::reference::Digest;

/// What a cryptographically verified signature claims: its payload's
/// `critical.identity.docker-reference` and `critical.image.docker-manifest-digest`. Still
/// untrusted text: [`evaluate`] parses and checks both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedClaims {
    pub docker_reference: String,
    pub manifest_digest: String,
}

/// Which requirement a [`Verifier`] is asked about, so it can cache the keys it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequirementId<'a> {
    pub scope: &'a str,
    pub index: usize,
}

/// The caller's cryptography. Each method checks one signature against one requirement's
/// keys and returns what it verifiably claims, or why it is not a signature by those keys
/// (unreadable keys included: that, too, must refuse).
pub trait Verifier {
    /// A simple-signing signature as fetched from a lookaside store or the registry.
    type SimpleSigning;
    /// A sigstore signature attachment (payload and its annotations).
    type Sigstore;

    /// `signedBy` with `keyType: GPGKeys`.
    fn simple_signing(
        &self,
        at: RequirementId<'_>,
        keys: &GpgKeys,
        signature: &Self::SimpleSigning,
    ) -> Result<SignedClaims, String>;

    /// `sigstoreSigned`: keys, Fulcio or PKI, and Rekor, as the requirement says.
    fn sigstore(
        &self,
        at: RequirementId<'_>,
        requirement: &SigstoreSigned,
        signature: &Self::Sigstore,
    ) -> Result<SignedClaims, String>;
}

/// The signatures found for the image, of both kinds.
pub struct Signatures<'s, V: Verifier + ?Sized> {
    pub simple_signing: &'s [V::SimpleSigning],
    pub sigstore: &'s [V::Sigstore],
}

/// What the proxy must fetch before [`evaluate`] can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Simple-signing signatures (lookaside or the registry's signature extension).
    pub simple_signing: bool,
    /// Sigstore attachments (the `sha256-<digest>.sig` tag).
    pub sigstore: bool,
}

/// The scope deciding for `image`, and what must be fetched for it. Nothing when the
/// scope's outcome does not depend on signatures: it accepts without them, or one of its
/// requirements refuses whatever is found.
pub fn needs<'p>(policy: &'p PolicyJson, image: &ImageRef) -> (&'p str, Needs) {
    let (scope, reqs) = requirements_for(policy, image);
    (scope, needs_for(reqs))
}

/// [`needs`] for one scope's requirements.
pub fn needs_for(reqs: &[Requirement]) -> Needs {
    let mut needs = Needs::default();
    if reqs.is_empty() {
        return needs;
    }
    for req in reqs {
        match req {
            Requirement::InsecureAcceptAnything => {}
            Requirement::SignedBy {
                key_type: KeyType::GpgKeys,
                ..
            } => needs.simple_signing = true,
            Requirement::SigstoreSigned(_) => needs.sigstore = true,
            Requirement::Reject
            | Requirement::SignedBy { .. }
            | Requirement::SignedBaseLayer { .. } => return Needs::default(),
        }
    }
    needs
}

/// containers-policy.json's name for a requirement's type.
pub fn kind(req: &Requirement) -> &'static str {
    match req {
        Requirement::InsecureAcceptAnything => "insecureAcceptAnything",
        Requirement::Reject => "reject",
        Requirement::SignedBy { .. } => "signedBy",
        Requirement::SignedBaseLayer { .. } => "signedBaseLayer",
        Requirement::SigstoreSigned(_) => "sigstoreSigned",
    }
}

/// The outcome for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every requirement of `scope` accepted; `by` has one entry per requirement.
    Accepted { scope: String, by: Vec<Acceptance> },
    /// Requirement `requirement` of `scope` refused; later ones were not evaluated.
    Rejected {
        scope: String,
        requirement: usize,
        kind: &'static str,
        reason: Reason,
    },
}

impl Decision {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Decision::Accepted { .. })
    }
}

/// One requirement's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub requirement: usize,
    pub kind: &'static str,
    /// For signature requirements, the index (in its kind's slice) of the signature that
    /// satisfied it.
    pub signature: Option<usize>,
}

/// Why a requirement refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The scope has no requirements (the parser refuses this; a hand-built policy may not).
    NoRequirements,
    /// `reject`.
    Reject,
    /// A requirement containers/image parses but does not implement either.
    Unimplemented(String),
    /// No signature of the kind the requirement verifies was found.
    NoSignatures,
    /// Signatures were found and none satisfied the requirement; one entry per signature.
    NoneAccepted(Vec<SignatureRejected>),
}

/// Why one signature did not satisfy a requirement, in the order they are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureRejected {
    /// Not a valid signature by any of the requirement's keys.
    Untrusted(String),
    /// Verified, but for other content than the manifest being pulled.
    OtherDigest { signed: String, manifest: String },
    /// Verified and for this manifest, but its identity is not accepted.
    Identity(IdentityMismatch),
}

impl SignatureRejected {
    /// How far the signature got: a closer miss explains a refusal better.
    fn rank(&self) -> u8 {
        match self {
            SignatureRejected::Untrusted(_) => 0,
            SignatureRejected::OtherDigest { .. } => 1,
            SignatureRejected::Identity(_) => 2,
        }
    }
}

impl fmt::Display for SignatureRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureRejected::Untrusted(why) => write!(f, "no signature by a trusted key ({why})"),
            SignatureRejected::OtherDigest { signed, manifest } => write!(
                f,
                "signature is for another manifest digest ({signed}; the manifest is {manifest})"
            ),
            SignatureRejected::Identity(mismatch) => mismatch.fmt(f),
        }
    }
}

/// The summary: the closest miss, and how many other signatures were refused.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoRequirements => f.write_str("the scope has no requirements"),
            Reason::Reject => f.write_str("rejected by policy"),
            Reason::Unimplemented(what) => f.write_str(what),
            Reason::NoSignatures => f.write_str("no signature by a trusted key (none found)"),
            Reason::NoneAccepted(all) => {
                let Some(best) = all.iter().max_by_key(|r| r.rank()) else {
                    return f.write_str("no signature by a trusted key (none found)");
                };
                best.fmt(f)?;
                match all.len() - 1 {
                    0 => Ok(()),
                    1 => f.write_str("; 1 other signature refused"),
                    n => write!(f, "; {n} other signatures refused"),
                }
            }
        }
    }
}

/// Decides whether `image`, whose manifest is `manifest` (the bytes as served), may be
/// pulled, given the signatures found for it.
pub fn evaluate<V: Verifier + ?Sized>(
    policy: &PolicyJson,
    image: &ImageRef,
    manifest: &[u8],
    signatures: &Signatures<'_, V>,
    verifier: &V,
) -> Decision {
    let (scope, reqs) = requirements_for(policy, image);
    if reqs.is_empty() {
        return Decision::Rejected {
            scope: scope.to_owned(),
            requirement: 0,
            kind: "",
            reason: Reason::NoRequirements,
        };
    }
    let mut by = Vec::with_capacity(reqs.len());
    for (index, req) in reqs.iter().enumerate() {
        let at = RequirementId { scope, index };
        let outcome = match req {
            Requirement::InsecureAcceptAnything => Ok(None),
            Requirement::Reject => Err(Reason::Reject),
            Requirement::SignedBaseLayer { .. } => Err(Reason::Unimplemented(
                "signedBaseLayer not implemented yet!".to_owned(),
            )),
            Requirement::SignedBy {
                key_type: KeyType::GpgKeys,
                keys,
                signed_identity,
            } => first_accepted(signatures.simple_signing, |sig| {
                let claims = verifier.simple_signing(at, keys, sig)?;
                Ok(check_claims(&claims, image, manifest, signed_identity))
            })
            .map(Some),
            Requirement::SignedBy { key_type, .. } => Err(Reason::Unimplemented(format!(
                "Unimplemented \"keyType\" value {:?}",
                key_type_name(*key_type)
            ))),
            Requirement::SigstoreSigned(req) => first_accepted(signatures.sigstore, |sig| {
                let claims = verifier.sigstore(at, req, sig)?;
                Ok(check_claims(&claims, image, manifest, &req.signed_identity))
            })
            .map(Some),
        };
        match outcome {
            Ok(signature) => by.push(Acceptance {
                requirement: index,
                kind: kind(req),
                signature,
            }),
            Err(reason) => {
                return Decision::Rejected {
                    scope: scope.to_owned(),
                    requirement: index,
                    kind: kind(req),
                    reason,
                }
            }
        }
    }
    Decision::Accepted {
        scope: scope.to_owned(),
        by,
    }
}

fn key_type_name(k: KeyType) -> &'static str {
    match k {
        KeyType::GpgKeys => "GPGKeys",
        KeyType::SignedByGpgKeys => "signedByGPGKeys",
        KeyType::X509Certificates => "X509Certificates",
        KeyType::SignedByX509Cas => "signedByX509CAs",
    }
}

/// The index of the first signature `check` accepts (one is enough), else every refusal.
/// `check`'s outer error is the verifier's, its inner result the claims' check.
fn first_accepted<S>(
    signatures: &[S],
    check: impl Fn(&S) -> Result<Result<(), SignatureRejected>, String>,
) -> Result<usize, Reason> {
    if signatures.is_empty() {
        return Err(Reason::NoSignatures);
    }
    let mut refused = Vec::new();
    for (i, sig) in signatures.iter().enumerate() {
        match check(sig) {
            Ok(Ok(())) => return Ok(i),
            Ok(Err(why)) => refused.push(why),
            Err(why) => refused.push(SignatureRejected::Untrusted(why)),
        }
    }
    Err(Reason::NoneAccepted(refused))
}

/// containers/image's order: the manifest digest first, then the identity.
fn check_claims(
    claims: &SignedClaims,
    image: &ImageRef,
    manifest: &[u8],
    signed_identity: &super::containers_policy::SignedIdentity,
) -> Result<(), SignatureRejected> {
    digest_matches(&claims.manifest_digest, manifest)?;
    identity::check(signed_identity, image, &claims.docker_reference)
        .map_err(SignatureRejected::Identity)
}

/// containers/image's `manifest.MatchesDigest`: the manifest hashed with the signed
/// digest's algorithm, so a sha512 signature can vouch for an image pulled by sha256.
/// Docker schema 1 signed manifests (whose digest excludes their JWS) are not special-cased:
/// such a signature simply does not match.
fn digest_matches(signed: &str, manifest: &[u8]) -> Result<(), SignatureRejected> {
    let sha256 = || format!("sha256:{}", hex::encode(Sha256::digest(manifest)));
    let parsed = match signed.parse::<Digest>() {
        Ok(d) => d,
        Err(e) => {
            return Err(SignatureRejected::OtherDigest {
                signed: e.to_string(),
                manifest: sha256(),
            })
        }
    };
    let actual = match parsed.algorithm() {
        "sha512" => format!("sha512:{}", hex::encode(Sha512::digest(manifest))),
        _ => sha256(),
    };
    if actual == parsed.as_str() {
        Ok(())
    } else {
        Err(SignatureRejected::OtherDigest {
            signed: parsed.to_string(),
            manifest: actual,
        })
    }
}

fn scope_name(scope: &str) -> String {
    match scope {
        GLOBAL_DEFAULT => "the global default".to_owned(),
        "" => "the docker transport default \"\"".to_owned(),
        s => format!("scope {s:?}"),
    }
}

/// The explanation: which scope decided, which requirement decided and why; for a refused
/// signature requirement, every signature's refusal.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Accepted { scope, by } => {
                write!(f, "accepted by {}: ", scope_name(scope))?;
                for (n, a) in by.iter().enumerate() {
                    if n > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "requirement {} ({})", a.requirement, a.kind)?;
                    if let Some(sig) = a.signature {
                        write!(f, " by signature {sig}")?;
                    }
                }
                Ok(())
            }
            Decision::Rejected {
                scope,
                requirement,
                kind,
                reason,
            } => {
                write!(f, "rejected by {}", scope_name(scope))?;
                if !kind.is_empty() {
                    write!(f, ", requirement {requirement} ({kind})")?;
                }
                match reason {
                    Reason::NoneAccepted(all) if all.len() > 1 => {
                        f.write_str(": none of the signatures was accepted: ")?;
                        for (n, r) in all.iter().enumerate() {
                            if n > 0 {
                                f.write_str("; ")?;
                            }
                            write!(f, "signature {n}: {r}")?;
                        }
                        Ok(())
                    }
                    reason => write!(f, ": {reason}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! `signedIdentity`: whether the `docker-reference` a signature claims is acceptable for the
//! image being pulled. A port of containers/image's `signature/policy_reference_match.go`;
//! every kind compares references after distribution/reference's `ParseNormalizedNamed`,
//! so `busybox` in a signature means `docker.io/library/busybox`.
//!
//! Where our reference grammar is narrower than distribution's (digests only sha256/sha512;
//! a registry host must be written lowercase and unaliased except `index.docker.io`), the
//! signature's reference is refused, never matched: a narrower grammar can only reject.

use std::fmt;

use super::containers_policy::SignedIdentity;
use super::scope::ImageRef;
use crate::reference::{Digest, ImageReference, Name, Reference, DOCKER_HUB};

/// A docker reference as distribution/reference's `reference.Named` holds it after
/// `ParseNormalizedNamed`: the full name, and a tag, a digest, both, or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    name: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// How much of a signed reference is shown: it is untrusted input.
const SHOWN: usize = 256;

impl DockerRef {
    /// distribution/reference's `ParseNormalizedNamed`.
    pub fn parse_normalized(s: &str) -> Result<DockerRef, String> {
        // distribution refuses a bare image ID as a name, so it cannot pass for docker.io/library/<id>.
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("a 64-character hexadecimal string is an image ID, not a name".into());
        }
        let parsed = ImageReference::parse(s).map_err(|e| e.to_string())?;
        let name = match &parsed.name {
            Name::Qualified {
                registry,
                repository,
            } => {
                // Our parser lowercases hosts and folds every Docker Hub alias; distribution
                // keeps hosts as written and folds only index.docker.io. Refusing anything
                // the two would read differently keeps a match here a match there.
                let written = s.split('/').next().unwrap_or_default();
                if written != registry && !(written == "index.docker.io" && registry == DOCKER_HUB)
                {
                    return Err(format!(
                        "registry host {:?} is not written as distribution/reference keeps it",
                        truncated(written)
                    ));
                }
                format!("{registry}/{repository}")
            }
            Name::Short(_) => {
                let (registry, repository) = parsed.name.qualify(DOCKER_HUB);
                format!("{registry}/{repository}")
            }
        };
        Ok(DockerRef {
            name,
            tag: parsed.tag,
            digest: parsed.digest,
        })
    }

    /// distribution/reference's `ParseNamed`: `ParseNormalizedNamed` of a string that must
    /// already be in its full form.
    fn parse_canonical(s: &str) -> Result<DockerRef, String> {
        let r = DockerRef::parse_normalized(s)?;
        if r.to_string() != s {
            return Err(format!(
                "{:?} is not a fully expanded reference",
                truncated(s)
            ));
        }
        Ok(r)
    }

    /// The image as the proxy pulls it: a tag, a digest, or (containers/image's "unknown
    /// digest" case) neither.
    pub fn from_image(image: &ImageRef) -> DockerRef {
        let (tag, digest) = match &image.reference {
            None => (None, None),
            Some(Reference::Tag(tag)) => (Some(tag.clone()), None),
            Some(Reference::Digest(digest)) => (None, Some(digest.clone())),
        };
        DockerRef {
            name: image.name(),
            tag,
            digest,
        }
    }

    /// `reference.Named.Name()`: `registry/repository`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }
}

/// `reference.Named.String()`: `name[:tag][@digest]`.
impl fmt::Display for DockerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(SHOWN) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// Why a signature's claimed identity was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMismatch {
    /// The signed reference, fully expanded; Debug-quoted (and cut) when it did not parse.
    pub signed: String,
    /// What it had to match: a reference, or a repository when only names are compared.
    pub expected: String,
    /// Which rule failed, when "does not match" alone would not say.
    pub detail: Option<String>,
}

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "signed identity {} does not match {}",
            self.signed, self.expected
        )?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for IdentityMismatch {}

/// Whether a signature claiming `signed_reference` may stand for `image` under `identity`.
/// containers/image's `PolicyReferenceMatch.matchesDockerReference`.
pub fn check(
    identity: &SignedIdentity,
    image: &ImageRef,
    signed_reference: &str,
) -> Result<(), IdentityMismatch> {
    matches(identity, &DockerRef::from_image(image), signed_reference)
}

/// [`check`] for an intended reference that may carry both a tag and a digest, as
/// containers/image's may (its tests rely on it); the proxy never pulls such a reference.
pub(crate) fn matches(
    identity: &SignedIdentity,
    intended: &DockerRef,
    signed_reference: &str,
) -> Result<(), IdentityMismatch> {
    let mismatch = |signed: &DockerRef, expected: String, detail: Option<String>| {
        Err(IdentityMismatch {
            signed: signed.to_string(),
            expected,
            detail,
        })
    };
    let signed = match DockerRef::parse_normalized(signed_reference) {
        Ok(signed) => signed,
        Err(e) => {
            let expected = match identity {
                SignedIdentity::ExactReference { docker_reference } => docker_reference.clone(),
                SignedIdentity::ExactRepository { docker_repository } => docker_repository.clone(),
                _ => intended.to_string(),
            };
            return Err(IdentityMismatch {
                signed: format!("{:?}", truncated(signed_reference)),
                expected,
                detail: Some(format!("not a valid docker reference: {e}")),
            });
        }
    };
    match identity {
        SignedIdentity::MatchExact => exact(intended, &signed, "matchExact"),
        SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(intended, &signed),
        SignedIdentity::MatchRepository => {
            if signed.name == intended.name {
                Ok(())
            } else {
                mismatch(&signed, intended.name.clone(), None)
            }
        }
        SignedIdentity::ExactReference { docker_reference } => {
            match DockerRef::parse_normalized(docker_reference) {
                Ok(required) => exact(&required, &signed, "exactReference"),
                Err(e) => mismatch(
                    &signed,
                    docker_reference.clone(),
                    Some(format!("the policy's dockerReference is invalid: {e}")),
                ),
            }
        }
        SignedIdentity::ExactRepository { docker_repository } => {
            match DockerRef::parse_normalized(docker_repository) {
                Ok(required) if required.name == signed.name => Ok(()),
                Ok(required) => mismatch(&signed, required.name, None),
                Err(e) => mismatch(
                    &signed,
                    docker_repository.clone(),
                    Some(format!("the policy's dockerRepository is invalid: {e}")),
                ),
            }
        }
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => match remap(prefix, signed_prefix, intended) {
            Ok(remapped) => repo_digest_or_exact(&remapped, &signed).map_err(|mut e| {
                if remapped != *intended {
                    let by = format!("{intended} remapped from {prefix} to {signed_prefix}");
                    e.detail = Some(match e.detail {
                        Some(d) => format!("{d}; {by}"),
                        None => by,
                    });
                }
                e
            }),
            Err(e) => mismatch(&signed, intended.to_string(), Some(e)),
        },
    }
}

/// `prmMatchExact` / `prmExactReference`: the same full reference, and neither side may be
/// name-only (no default tag is assumed).
fn exact(intended: &DockerRef, signed: &DockerRef, kind: &str) -> Result<(), IdentityMismatch> {
    let detail = if intended.is_name_only() {
        Some(format!("{kind} needs the image to have a tag or digest"))
    } else if signed.is_name_only() {
        Some(format!(
            "{kind} needs the signature to name a tag or digest"
        ))
    } else if signed == intended {
        return Ok(());
    } else {
        None
    };
    Err(IdentityMismatch {
        signed: signed.to_string(),
        expected: intended.to_string(),
        detail,
    })
}

/// `matchRepoDigestOrExactReferenceValues`: an image pulled by tag needs a signature for that
/// tag; one pulled by digest only needs the repository to match (the digest itself is
/// checked against the signature's manifest digest elsewhere).
fn repo_digest_or_exact(intended: &DockerRef, signed: &DockerRef) -> Result<(), IdentityMismatch> {
    let fail = |expected: String, detail: Option<&str>| {
        Err(IdentityMismatch {
            signed: signed.to_string(),
            expected,
            detail: detail.map(str::to_owned),
        })
    };
    if signed.is_name_only() {
        return fail(
            intended.to_string(),
            Some("matchRepoDigestOrExact needs the signature to name a tag or digest"),
        );
    }
    if intended.tag.is_some() {
        // Includes an intended reference with both a tag and a digest.
        if signed == intended {
            Ok(())
        } else {
            fail(intended.to_string(), None)
        }
    } else if intended.digest.is_some() {
        if signed.name == intended.name {
            Ok(())
        } else {
            fail(intended.name.clone(), None)
        }
    } else {
        fail(
            intended.to_string(),
            Some("matchRepoDigestOrExact needs the image to have a tag or digest"),
        )
    }
}

/// `prmRemapIdentity.refMatchesPrefix`: the name equals the prefix or continues it at a '/'.
/// A `host:port` prefix must match the whole host; a ':' is never a separator here.
fn ref_matches_prefix(name: &str, prefix: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// `prmRemapIdentity.remapReferencePrefix`: the intended reference with `prefix` replaced by
/// `signed_prefix`, which must give a fully expanded reference; unchanged if it does not
/// match.
fn remap(prefix: &str, signed_prefix: &str, intended: &DockerRef) -> Result<DockerRef, String> {
    if !ref_matches_prefix(&intended.name, prefix) {
        return Ok(intended.clone());
    }
    let original = intended.to_string();
    let rewritten = original.replacen(prefix, signed_prefix, 1);
    DockerRef::parse_canonical(&rewritten).map_err(|e| {
        format!(
            "remapping {original} from {prefix} to {signed_prefix} gives {:?}, which is not a valid reference: {e}",
            truncated(&rewritten)
        )
    })
}

#[cfg(test)]
mod tests;

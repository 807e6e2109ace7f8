//! The signature policy in force: one containers-policy.json and the registries.d files
//! beside it, loaded from `[policy] paths` with the TOML policy and reloaded with it (a bad
//! file keeps the last good set, as for any policy file).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::containers_policy::{GpgKeys, KeyType, PolicyJson, Requirement, SigstoreSigned};
use super::evaluate::{RequirementId, SignedClaims, Verifier};
use super::registries_d::RegistriesD;
use super::verify::{self, CosignKeys, GpgKeyring};
use crate::toml_check::Problem;

/// Tells one loaded set from the next, so verdicts cached under one are never read under
/// another (an edited policy or a rotated key decides afresh).
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// What one file of the set contributed.
#[derive(Debug)]
pub enum Part {
    /// A containers-policy.json(5) file.
    Policy(PolicyJson),
    /// A containers-registries.d(5) YAML file.
    Registries(RegistriesD),
}

/// The signature policy and where to find signatures.
pub struct Trust {
    pub policy: PolicyJson,
    /// The containers-policy.json it came from.
    pub policy_file: String,
    pub registries: RegistriesD,
    /// Unique per load.
    pub generation: u64,
    /// Every requirement's keys, read when the policy is loaded: a key file that is missing
    /// or unreadable rejects the set (and a running server keeps the last good one), rather
    /// than refusing every pull at the wire later.
    gpg: HashMap<(String, usize), GpgKeyring>,
    cosign: HashMap<(String, usize), CosignKeys>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("policy_file", &self.policy_file)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A sigstore signature attachment: the layer's bytes (the payload) and its signature
/// annotation.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub payload: Bytes,
    pub signature: String,
}

impl Verifier for Trust {
    type SimpleSigning = Bytes;
    type Sigstore = Attachment;

    fn simple_signing(
        &self,
        at: RequirementId<'_>,
        _keys: &GpgKeys,
        signature: &Bytes,
    ) -> Result<SignedClaims, String> {
        let ring = self
            .gpg
            .get(&(at.scope.to_owned(), at.index))
            .ok_or_else(|| "no keys were loaded for this requirement".to_owned())?;
        let payload = verify::verify_simple_signing(signature, ring).map_err(|e| e.to_string())?;
        Ok(SignedClaims {
            docker_reference: payload.docker_reference,
            manifest_digest: payload.manifest_digest,
        })
    }

    fn sigstore(
        &self,
        at: RequirementId<'_>,
        _requirement: &SigstoreSigned,
        signature: &Attachment,
    ) -> Result<SignedClaims, String> {
        let keys = self
            .cosign
            .get(&(at.scope.to_owned(), at.index))
            .ok_or_else(|| "no keys were loaded for this requirement".to_owned())?;
        let payload = verify::verify_cosign(&signature.payload, &signature.signature, keys)
            .map_err(|e| e.to_string())?;
        Ok(SignedClaims {
            docker_reference: payload.docker_reference,
            manifest_digest: payload.manifest_digest,
        })
    }
}

type Keys = (
    HashMap<(String, usize), GpgKeyring>,
    HashMap<(String, usize), CosignKeys>,
);

/// Reads every requirement's keys; each failure is a problem of the policy file.
fn load_keys(policy: &PolicyJson, file: &str) -> Result<Keys, Vec<Problem>> {
    let mut gpg = HashMap::new();
    let mut cosign = HashMap::new();
    let mut problems = Vec::new();
    let scopes = std::iter::once((super::containers_policy::GLOBAL_DEFAULT, &policy.default))
        .chain(policy.docker.iter().map(|(s, r)| (s.as_str(), r)));
    for (scope, reqs) in scopes {
        for (index, req) in reqs.iter().enumerate() {
            let problem = |message: String| Problem {
                file: file.to_owned(),
                line: None,
                key: String::new(),
                message: format!("scope {scope:?}, requirement {}: {message}", index + 1),
            };
            match req {
                Requirement::SignedBy {
                    key_type: KeyType::GpgKeys,
                    keys,
                    ..
                } => match GpgKeyring::load(keys) {
                    Ok(ring) => {
                        gpg.insert((scope.to_owned(), index), ring);
                    }
                    Err(e) => problems.push(problem(e.to_string())),
                },
                // Transparency-log checks are not implemented: a policy that asks for them
                // is refused rather than enforced without them.
                Requirement::SigstoreSigned(req) if req.rekor.is_some() => problems.push(problem(
                    "rekorPublicKey* is not supported by portcullis (it does not verify \
                     transparency-log entries); the policy is refused rather than enforced \
                     without it"
                        .to_owned(),
                )),
                Requirement::SigstoreSigned(req) => match CosignKeys::load(&req.keys) {
                    Ok(keys) => {
                        cosign.insert((scope.to_owned(), index), keys);
                    }
                    Err(e) => problems.push(problem(e.to_string())),
                },
                _ => {}
            }
        }
    }
    if problems.is_empty() {
        Ok((gpg, cosign))
    } else {
        Err(problems)
    }
}

/// Collects the parts of every file, in load order.
#[derive(Default)]
pub struct Collect {
    policy: Option<(PolicyJson, String)>,
    registries: RegistriesD,
    registries_files: Vec<String>,
}

impl Collect {
    pub fn add(&mut self, file: &str, part: Part) -> Result<(), Problem> {
        match part {
            Part::Policy(policy) => {
                if let Some((_, first)) = &self.policy {
                    return Err(Problem {
                        file: file.to_owned(),
                        line: None,
                        key: String::new(),
                        message: format!(
                            "a second containers-policy.json; {first} is one already, and \
                             containers/image reads exactly one"
                        ),
                    });
                }
                self.policy = Some((policy, file.to_owned()));
            }
            Part::Registries(registries) => {
                self.registries.merge(registries)?;
                self.registries_files.push(file.to_owned());
            }
        }
        Ok(())
    }

    /// The set, if a containers-policy.json is in it, with every key read; registries.d
    /// files alone require nothing (they only say where signatures are), which is worth a
    /// warning.
    pub fn finish(self) -> Result<(Option<Trust>, Option<Problem>), Vec<Problem>> {
        match self.policy {
            Some((policy, policy_file)) => {
                let (gpg, cosign) = load_keys(&policy, &policy_file)?;
                Ok((
                    Some(Trust {
                        policy,
                        policy_file,
                        registries: self.registries,
                        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
                        gpg,
                        cosign,
                    }),
                    None,
                ))
            }
            None => {
                let warning = self.registries_files.first().map(|file| Problem {
                    file: file.clone(),
                    line: None,
                    key: String::new(),
                    message: "registries.d file without a containers-policy.json in the \
                              policy paths: no signature is required"
                        .to_owned(),
                });
                Ok((None, warning))
            }
        }
    }
}

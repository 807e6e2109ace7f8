//! The signature policy in force: one containers-policy.json and the registries.d files
//! beside it, loaded from `[policy] paths` with the TOML policy and reloaded with it (a bad
//! file keeps the last good set, as for any policy file).

use super::containers_policy::PolicyJson;
use super::registries_d::RegistriesD;
use crate::toml_check::Problem;

/// What one file of the set contributed.
#[derive(Debug)]
pub enum Part {
    /// A containers-policy.json(5) file.
    Policy(PolicyJson),
    /// A containers-registries.d(5) YAML file.
    Registries(RegistriesD),
}

/// The signature policy and where to find signatures.
#[derive(Debug)]
pub struct Trust {
    pub policy: PolicyJson,
    /// The containers-policy.json it came from.
    pub policy_file: String,
    pub registries: RegistriesD,
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

    /// The set, if a containers-policy.json is in it; registries.d files alone require
    /// nothing (they only say where signatures are), which is worth a warning.
    pub fn finish(self) -> (Option<Trust>, Option<Problem>) {
        match self.policy {
            Some((policy, policy_file)) => (
                Some(Trust {
                    policy,
                    policy_file,
                    registries: self.registries,
                }),
                None,
            ),
            None => {
                let warning = self.registries_files.first().map(|file| Problem {
                    file: file.clone(),
                    line: None,
                    key: String::new(),
                    message: "registries.d file without a containers-policy.json in the \
                              policy paths: no signature is required"
                        .to_owned(),
                });
                (None, warning)
            }
        }
    }
}

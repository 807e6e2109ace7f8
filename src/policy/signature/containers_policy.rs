//! containers-policy.json(5), read as strictly as containers/image's
//! `signature/policy_config.go` and `policy_config_sigstore.go`: unknown and duplicate
//! keys, missing or empty requirement lists, conflicting key sources and invalid values
//! reject the whole file, each with its file and line. Only the `docker` transport's
//! scopes are kept; the other transports containers/image knows are checked and dropped.

use std::collections::BTreeMap;

use base64::Engine;

use super::identity::DockerRef;
use super::json::{self, Node, Value};
use super::scope::{is_domain, validate_docker_scope, ImageRef};
use crate::reference::Repository;
use crate::toml_check::Problem;

/// The scope name [`requirements_for`] reports when the global `default` decided. No valid
/// docker scope can be spelled this way (it has no '.', ':' or '/').
pub const GLOBAL_DEFAULT: &str = "default";

/// Transports of containers/image's `transports/alltransports` (and the removed `atomic`,
/// still accepted by its parser). A name outside this list is refused, unlike
/// containers/image, which accepts it unchecked: a misspelt `"dokcer"` would otherwise turn
/// a docker policy into dead text and leave every image to `default`.
const OTHER_TRANSPORTS: &[&str] = &[
    "atomic",
    "containers-storage",
    "dir",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
    "ostree",
    "sif",
    "tarball",
];

/// Docker scope key to its requirements.
pub type Scopes = BTreeMap<String, Vec<Requirement>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyJson {
    pub default: Vec<Requirement>,
    pub docker: Scopes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    InsecureAcceptAnything,
    Reject,
    SignedBy {
        key_type: KeyType,
        keys: GpgKeys,
        signed_identity: SignedIdentity,
    },
    /// Accepted because containers/image parses it; it never verifies anything there either.
    SignedBaseLayer {
        base_layer_identity: SignedIdentity,
    },
    SigstoreSigned(Box<SigstoreSigned>),
}

/// All four values containers/image parses; only `GPGKeys` is implemented there, and an
/// evaluator must refuse the others as containers/image does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    GpgKeys,
    SignedByGpgKeys,
    X509Certificates,
    SignedByX509Cas,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpgKeys {
    Path(String),
    Paths(Vec<String>),
    Data(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigstoreSigned {
    pub keys: SigstoreKeys,
    pub rekor: Option<PublicKeys>,
    pub signed_identity: SignedIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeys {
    Path(String),
    Paths(Vec<String>),
    Data(Vec<u8>),
    Datas(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigstoreKeys {
    Keys(PublicKeys),
    Fulcio {
        ca: PathOrData,
        oidc_issuer: String,
        subject_email: String,
    },
    Pki {
        ca_roots: PathOrData,
        ca_intermediates: Option<PathOrData>,
        subject_email: Option<String>,
        subject_hostname: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOrData {
    Path(String),
    Data(Vec<u8>),
}

/// `signedIdentity`. References are kept fully expanded (`docker.io/library/busybox:1`),
/// as containers/image compares them after `ParseNormalizedNamed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIdentity {
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactReference {
        docker_reference: String,
    },
    ExactRepository {
        docker_repository: String,
    },
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

/// Which requirements apply to `image`, and the scope that decided: the most specific
/// docker scope ([`ImageRef::scope_candidates`]), else the transport default `""`, else
/// [`GLOBAL_DEFAULT`]. containers/image's `requirementsForImageRef`.
pub fn requirements_for<'a>(
    policy: &'a PolicyJson,
    image: &ImageRef,
) -> (&'a str, &'a [Requirement]) {
    for candidate in image.scope_candidates() {
        if let Some((scope, reqs)) = policy.docker.get_key_value(&candidate) {
            return (scope, reqs);
        }
    }
    if let Some((scope, reqs)) = policy.docker.get_key_value("") {
        return (scope, reqs);
    }
    (GLOBAL_DEFAULT, &policy.default)
}

/// Parses a policy file's text; `file` only names it in problems.
pub fn parse(file: &str, text: &str) -> Result<PolicyJson, Problem> {
    let root = json::parse(text).map_err(|e| Problem {
        file: file.to_owned(),
        line: Some(e.line),
        key: String::new(),
        message: e.message,
    })?;
    Reader { file }.policy(&root)
}

/// Reads and parses a policy file.
pub fn load(path: &std::path::Path) -> Result<PolicyJson, Problem> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Problem {
        file: file.clone(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &text)
}

struct Reader<'f> {
    file: &'f str,
}

/// An object's members by key, each used at most once; the rest are unknown keys.
struct Fields<'n> {
    members: &'n [(String, usize, Node)],
    line: usize,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.members
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v)
    }
}

type R<T> = Result<T, Problem>;

impl Reader<'_> {
    fn problem(&self, line: usize, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.to_owned(),
            line: Some(line),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// `node` as an object whose keys are all in `known`.
    fn object<'n>(&self, node: &'n Node, path: &str, known: &[&str]) -> R<Fields<'n>> {
        let Value::Object(members) = &node.value else {
            return Err(self.problem(
                node.line,
                path,
                format!("JSON object expected, got {}", node.value.describe()),
            ));
        };
        if let Some((key, line, _)) = members
            .iter()
            .find(|(k, _, _)| !known.contains(&k.as_str()))
        {
            return Err(self.problem(*line, path, format!("Unknown key {key:?}")));
        }
        Ok(Fields {
            members,
            line: node.line,
        })
    }

    fn string<'n>(&self, node: &'n Node, path: &str) -> R<&'n str> {
        match &node.value {
            Value::String(s) => Ok(s),
            other => Err(self.problem(
                node.line,
                path,
                format!("expected a string, got {}", other.describe()),
            )),
        }
    }

    fn strings(&self, node: &Node, path: &str) -> R<Vec<String>> {
        let Value::Array(items) = &node.value else {
            return Err(self.problem(
                node.line,
                path,
                format!(
                    "expected an array of strings, got {}",
                    node.value.describe()
                ),
            ));
        };
        items
            .iter()
            .map(|item| self.string(item, path).map(str::to_owned))
            .collect()
    }

    /// Go's encoding/json reads a `[]byte` field as standard base64.
    fn bytes(&self, node: &Node, path: &str) -> R<Vec<u8>> {
        let s = self.string(node, path)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| self.problem(node.line, path, format!("invalid base64: {e}")))
    }

    fn bytes_list(&self, node: &Node, path: &str) -> R<Vec<Vec<u8>>> {
        let Value::Array(items) = &node.value else {
            return Err(self.problem(
                node.line,
                path,
                format!(
                    "expected an array of base64 strings, got {}",
                    node.value.describe()
                ),
            ));
        };
        items.iter().map(|item| self.bytes(item, path)).collect()
    }

    /// A string field where, as in containers/image, `""` counts as not given.
    fn opt_string(&self, f: &Fields<'_>, key: &str, path: &str) -> R<Option<String>> {
        match f.get(key) {
            None => Ok(None),
            Some(node) => {
                let s = self.string(node, &format!("{path}.{key}"))?;
                Ok((!s.is_empty()).then(|| s.to_owned()))
            }
        }
    }

    fn policy(&self, root: &Node) -> R<PolicyJson> {
        let f = self.object(root, "", &["default", "transports"])?;
        let default = match f.get("default") {
            Some(node) => self.requirements(node, "default")?,
            None => return Err(self.problem(f.line, "", "Default policy is missing")),
        };
        let mut docker = Scopes::new();
        if let Some(node) = f.get("transports") {
            let Value::Object(transports) = &node.value else {
                return Err(self.problem(node.line, "transports", "JSON object expected"));
            };
            for (name, line, scopes) in transports {
                let path = format!("transports.{name}");
                let is_docker = name == "docker";
                if !is_docker && !OTHER_TRANSPORTS.contains(&name.as_str()) {
                    return Err(self.problem(
                        *line,
                        "transports",
                        format!("Unknown transport {name:?}"),
                    ));
                }
                let Value::Object(members) = &scopes.value else {
                    return Err(self.problem(scopes.line, &path, "JSON object expected"));
                };
                for (scope, line, reqs) in members {
                    let scope_path = format!("{path}.{scope:?}");
                    if is_docker {
                        validate_docker_scope(scope).map_err(|m| self.problem(*line, &path, m))?;
                    }
                    let reqs = self.requirements(reqs, &scope_path)?;
                    if is_docker {
                        docker.insert(scope.clone(), reqs);
                    }
                }
            }
        }
        Ok(PolicyJson { default, docker })
    }

    fn requirements(&self, node: &Node, path: &str) -> R<Vec<Requirement>> {
        let Value::Array(items) = &node.value else {
            return Err(self.problem(
                node.line,
                path,
                format!(
                    "expected an array of requirements, got {}",
                    node.value.describe()
                ),
            ));
        };
        if items.is_empty() {
            return Err(self.problem(
                node.line,
                path,
                "List of verification policy requirements must not be empty",
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.requirement(item, &format!("{path}[{i}]")))
            .collect()
    }

    fn type_of<'n>(&self, node: &'n Node, path: &str) -> R<&'n str> {
        let Value::Object(members) = &node.value else {
            return Err(self.problem(
                node.line,
                path,
                format!("JSON object expected, got {}", node.value.describe()),
            ));
        };
        match members.iter().find(|(k, _, _)| k == "type") {
            Some((_, _, t)) => self.string(t, &format!("{path}.type")),
            None => Ok(""),
        }
    }

    fn requirement(&self, node: &Node, path: &str) -> R<Requirement> {
        let kind = self.type_of(node, path)?;
        match kind {
            "insecureAcceptAnything" => {
                self.object(node, path, &["type"])?;
                Ok(Requirement::InsecureAcceptAnything)
            }
            "reject" => {
                self.object(node, path, &["type"])?;
                Ok(Requirement::Reject)
            }
            "signedBy" => self.signed_by(node, path),
            "signedBaseLayer" => {
                let f = self.object(node, path, &["type", "baseLayerIdentity"])?;
                let Some(identity) = f.get("baseLayerIdentity") else {
                    return Err(self.problem(
                        f.line,
                        path,
                        "Key \"baseLayerIdentity\" missing in a JSON object",
                    ));
                };
                Ok(Requirement::SignedBaseLayer {
                    base_layer_identity: self
                        .identity(identity, &format!("{path}.baseLayerIdentity"))?,
                })
            }
            "sigstoreSigned" => self.sigstore(node, path),
            other => Err(self.problem(
                node.line,
                path,
                format!("Unknown policy requirement type {other:?}"),
            )),
        }
    }

    fn signed_identity(&self, f: &Fields<'_>, path: &str) -> R<SignedIdentity> {
        match f.get("signedIdentity") {
            None => Ok(SignedIdentity::MatchRepoDigestOrExact),
            Some(node) => self.identity(node, &format!("{path}.signedIdentity")),
        }
    }

    fn signed_by(&self, node: &Node, path: &str) -> R<Requirement> {
        let f = self.object(
            node,
            path,
            &[
                "type",
                "keyType",
                "keyPath",
                "keyPaths",
                "keyData",
                "signedIdentity",
            ],
        )?;
        let key_type = match f.get("keyType") {
            // containers/image: an absent keyType is "" and fails `IsValid`.
            None => return Err(self.problem(f.line, path, "invalid keyType \"\"")),
            Some(node) => match self.string(node, &format!("{path}.keyType"))? {
                "GPGKeys" => KeyType::GpgKeys,
                "signedByGPGKeys" => KeyType::SignedByGpgKeys,
                "X509Certificates" => KeyType::X509Certificates,
                "signedByX509CAs" => KeyType::SignedByX509Cas,
                other => {
                    return Err(self.problem(
                        node.line,
                        &format!("{path}.keyType"),
                        format!("Unrecognized keyType value {other:?}"),
                    ))
                }
            },
        };
        let signed_identity = self.signed_identity(&f, path)?;
        let given: Vec<&str> = ["keyPath", "keyPaths", "keyData"]
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        let keys = match given.as_slice() {
            [] => {
                return Err(self.problem(
                    f.line,
                    path,
                    "Exactly one of keyPath, keyPaths and keyData must be specified, none of them present",
                ))
            }
            [one] => {
                let node = f.get(one).ok_or_else(|| self.problem(f.line, path, "internal"))?;
                let key_path = format!("{path}.{one}");
                match *one {
                    "keyPath" => match self.string(node, &key_path)? {
                        "" => None,
                        p => Some(GpgKeys::Path(p.to_owned())),
                    },
                    "keyPaths" => match &node.value {
                        Value::Null => None,
                        _ => Some(GpgKeys::Paths(self.strings(node, &key_path)?)),
                    },
                    _ => Some(GpgKeys::Data(self.bytes(node, &key_path)?)),
                }
                .ok_or_else(|| {
                    self.problem(
                        node.line,
                        &key_path,
                        "exactly one of keyPath, keyPaths and keyData must be specified",
                    )
                })?
            }
            _ => {
                return Err(self.problem(
                    f.line,
                    path,
                    "Exactly one of keyPath, keyPaths and keyData must be specified, more than one present",
                ))
            }
        };
        Ok(Requirement::SignedBy {
            key_type,
            keys,
            signed_identity,
        })
    }

    /// One of `X`, `Xs`, and (for keys) `XData`/`XDatas` public-key sources, or None.
    fn public_keys(
        &self,
        f: &Fields<'_>,
        path: &str,
        names: [&str; 4],
    ) -> R<Vec<(usize, PublicKeys)>> {
        let mut found = Vec::new();
        let [path_key, paths_key, data_key, datas_key] = names;
        if let Some(n) = f.get(path_key) {
            let s = self.string(n, &format!("{path}.{path_key}"))?;
            if !s.is_empty() {
                found.push((n.line, PublicKeys::Path(s.to_owned())));
            }
        }
        if let Some(n) = f.get(paths_key) {
            let p = format!("{path}.{paths_key}");
            // containers/image reads null as an empty list here.
            let list = match n.value {
                Value::Null => Vec::new(),
                _ => self.strings(n, &p)?,
            };
            if list.is_empty() {
                return Err(self.problem(n.line, &p, format!("{paths_key:?} contains no entries")));
            }
            found.push((n.line, PublicKeys::Paths(list)));
        }
        if let Some(n) = f.get(data_key) {
            found.push((
                n.line,
                PublicKeys::Data(self.bytes(n, &format!("{path}.{data_key}"))?),
            ));
        }
        if let Some(n) = f.get(datas_key) {
            let p = format!("{path}.{datas_key}");
            // containers/image reads null as an empty list here.
            let list = match n.value {
                Value::Null => Vec::new(),
                _ => self.bytes_list(n, &p)?,
            };
            if list.is_empty() {
                return Err(self.problem(n.line, &p, format!("{datas_key:?} contains no entries")));
            }
            found.push((n.line, PublicKeys::Datas(list)));
        }
        Ok(found)
    }

    fn path_or_data(&self, f: &Fields<'_>, path: &str, p: &str, d: &str) -> R<Option<PathOrData>> {
        let path_value = self.opt_string(f, p, path)?;
        let data_value = f
            .get(d)
            .map(|n| self.bytes(n, &format!("{path}.{d}")))
            .transpose()?;
        match (path_value, data_value) {
            (Some(_), Some(_)) => Err(self.problem(
                f.line,
                path,
                format!("{p} and {d} cannot be used simultaneously"),
            )),
            (Some(v), None) => Ok(Some(PathOrData::Path(v))),
            (None, Some(v)) => Ok(Some(PathOrData::Data(v))),
            (None, None) => Ok(None),
        }
    }

    fn sigstore(&self, node: &Node, path: &str) -> R<Requirement> {
        let f = self.object(
            node,
            path,
            &[
                "type",
                "keyPath",
                "keyPaths",
                "keyData",
                "keyDatas",
                "fulcio",
                "rekorPublicKeyPath",
                "rekorPublicKeyPaths",
                "rekorPublicKeyData",
                "rekorPublicKeyDatas",
                "pki",
                "signedIdentity",
            ],
        )?;
        let signed_identity = self.signed_identity(&f, path)?;
        let mut sources: Vec<SigstoreKeys> = self
            .public_keys(&f, path, ["keyPath", "keyPaths", "keyData", "keyDatas"])?
            .into_iter()
            .map(|(_, k)| SigstoreKeys::Keys(k))
            .collect();
        if let Some(n) = f.get("fulcio") {
            let p = format!("{path}.fulcio");
            let ff = self.object(n, &p, &["caPath", "caData", "oidcIssuer", "subjectEmail"])?;
            let ca = self
                .path_or_data(&ff, &p, "caPath", "caData")?
                .ok_or_else(|| {
                    self.problem(
                        n.line,
                        &p,
                        "At least one of caPath and caData must be specified",
                    )
                })?;
            let oidc_issuer = self
                .opt_string(&ff, "oidcIssuer", &p)?
                .ok_or_else(|| self.problem(n.line, &p, "oidcIssuer not specified"))?;
            let subject_email = self
                .opt_string(&ff, "subjectEmail", &p)?
                .ok_or_else(|| self.problem(n.line, &p, "subjectEmail not specified"))?;
            sources.push(SigstoreKeys::Fulcio {
                ca,
                oidc_issuer,
                subject_email,
            });
        }
        let has_pki = f.get("pki").is_some();
        if let Some(n) = f.get("pki") {
            let p = format!("{path}.pki");
            let pf = self.object(
                n,
                &p,
                &[
                    "caRootsPath",
                    "caRootsData",
                    "caIntermediatesPath",
                    "caIntermediatesData",
                    "subjectEmail",
                    "subjectHostname",
                ],
            )?;
            let ca_roots = self
                .path_or_data(&pf, &p, "caRootsPath", "caRootsData")?
                .ok_or_else(|| {
                    self.problem(
                        n.line,
                        &p,
                        "At least one of caRootsPath and caRootsData must be specified",
                    )
                })?;
            let ca_intermediates =
                self.path_or_data(&pf, &p, "caIntermediatesPath", "caIntermediatesData")?;
            let subject_email = self.opt_string(&pf, "subjectEmail", &p)?;
            let subject_hostname = self.opt_string(&pf, "subjectHostname", &p)?;
            if subject_email.is_none() && subject_hostname.is_none() {
                return Err(self.problem(
                    n.line,
                    &p,
                    "At least one of subjectEmail, subjectHostname must be specified",
                ));
            }
            sources.push(SigstoreKeys::Pki {
                ca_roots,
                ca_intermediates,
                subject_email,
                subject_hostname,
            });
        }
        if sources.len() != 1 {
            return Err(self.problem(
                f.line,
                path,
                "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified",
            ));
        }
        let keys = sources.remove(0);
        let mut rekor = self.public_keys(
            &f,
            path,
            [
                "rekorPublicKeyPath",
                "rekorPublicKeyPaths",
                "rekorPublicKeyData",
                "rekorPublicKeyDatas",
            ],
        )?;
        if rekor.len() > 1 {
            return Err(self.problem(f.line, path, "at most one of rekorPublickeyPath, rekorPublicKeyPaths, rekorPublickeyData and rekorPublicKeyDatas can be used simultaneously"));
        }
        let rekor = rekor.pop().map(|(_, k)| k);
        if matches!(keys, SigstoreKeys::Fulcio { .. }) && rekor.is_none() {
            return Err(self.problem(f.line, path, "At least one of rekorPublickeyPath, rekorPublicKeyPaths, rekorPublickeyData and rekorPublicKeyDatas must be specified if fulcio is used"));
        }
        if has_pki && rekor.is_some() {
            return Err(self.problem(f.line, path, "rekorPublickeyPath, rekorPublicKeyPaths, rekorPublickeyData and rekorPublicKeyDatas are not supported for pki"));
        }
        Ok(Requirement::SigstoreSigned(Box::new(SigstoreSigned {
            keys,
            rekor,
            signed_identity,
        })))
    }

    /// A string field that containers/image's ExactFields requires.
    fn required<'n>(&self, f: &Fields<'n>, key: &str, path: &str) -> R<&'n str> {
        match f.get(key) {
            Some(n) => self.string(n, &format!("{path}.{key}")),
            None => Err(self.problem(
                f.line,
                path,
                format!("Key {key:?} missing in a JSON object"),
            )),
        }
    }

    fn identity(&self, node: &Node, path: &str) -> R<SignedIdentity> {
        let kind = self.type_of(node, path)?;
        let simple = |id| -> R<SignedIdentity> {
            let f = self.object(node, path, &["type"])?;
            self.required(&f, "type", path)?;
            Ok(id)
        };
        match kind {
            "matchExact" => simple(SignedIdentity::MatchExact),
            "matchRepoDigestOrExact" => simple(SignedIdentity::MatchRepoDigestOrExact),
            "matchRepository" => simple(SignedIdentity::MatchRepository),
            "exactReference" => {
                let f = self.object(node, path, &["type", "dockerReference"])?;
                let raw = self.required(&f, "dockerReference", path)?;
                let line = f.get("dockerReference").map_or(f.line, |n| n.line);
                let key = format!("{path}.dockerReference");
                let parsed = DockerRef::parse_normalized(raw).map_err(|e| {
                    self.problem(
                        line,
                        &key,
                        format!("Invalid format of dockerReference {raw:?}: {e}"),
                    )
                })?;
                if parsed.is_name_only() {
                    return Err(self.problem(
                        line,
                        &key,
                        format!("dockerReference {raw:?} contains neither a tag nor digest"),
                    ));
                }
                let docker_reference = parsed.to_string();
                Ok(SignedIdentity::ExactReference { docker_reference })
            }
            "exactRepository" => {
                let f = self.object(node, path, &["type", "dockerRepository"])?;
                let raw = self.required(&f, "dockerRepository", path)?;
                let line = f.get("dockerRepository").map_or(f.line, |n| n.line);
                // containers/image parses it as a reference and compares only the name, so
                // a tag or digest here is accepted and ignored.
                let parsed = DockerRef::parse_normalized(raw).map_err(|e| {
                    self.problem(
                        line,
                        &format!("{path}.dockerRepository"),
                        format!("Invalid format of dockerRepository {raw:?}: {e}"),
                    )
                })?;
                Ok(SignedIdentity::ExactRepository {
                    docker_repository: parsed.name().to_owned(),
                })
            }
            "remapIdentity" => {
                let f = self.object(node, path, &["type", "prefix", "signedPrefix"])?;
                let prefix = self.required(&f, "prefix", path)?;
                let signed_prefix = self.required(&f, "signedPrefix", path)?;
                for key in ["prefix", "signedPrefix"] {
                    let value = self.required(&f, key, path)?;
                    if !valid_remap_prefix(value) {
                        let line = f.get(key).map_or(f.line, |n| n.line);
                        return Err(self.problem(
                            line,
                            &format!("{path}.{key}"),
                            format!("prefix {value:?} is not valid"),
                        ));
                    }
                }
                Ok(SignedIdentity::RemapIdentity {
                    prefix: prefix.to_owned(),
                    signed_prefix: signed_prefix.to_owned(),
                })
            }
            other => Err(self.problem(
                node.line,
                path,
                format!("Unknown policy reference match type {other:?}"),
            )),
        }
    }
}

/// containers/image's `validateIdentityRemappingPrefix`: a `host[:port]`, or a name whose
/// first component is a host. Like there, `ns/shortname` is not caught (`ns` passes as a
/// domain); such a prefix simply never matches an expanded name.
fn valid_remap_prefix(s: &str) -> bool {
    if is_domain(s) {
        return true;
    }
    match s.split_once('/') {
        Some((host, path)) => is_domain(host) && Repository::parse(path).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests;

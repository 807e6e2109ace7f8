//! The OCI 1.1 referrers list kept with the spec's referrers tag schema, for registries
//! without the referrers API: an image index tagged `<alg>-<hex>` in the subject's
//! repository, listing the descriptors of the manifests whose `subject` is that digest.
//! Keeping it on the upstream (not in portcullis) makes it survive restarts, shared by
//! every replica, and what older clients (cosign, oras) already read and write.
//!
//! Pure functions over JSON; the requests that read and write the index are in
//! [`crate::pipeline`]. The index is kept as JSON values so that whatever another client put
//! in it (fields portcullis does not know) is written back unchanged.

use serde_json::{Map, Value};

use crate::reference::Digest;

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The spec limits the digest part of a referrers tag to 64 characters (tags are 128).
const TAG_REF_MAX: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an image index: {0}")]
    NotAnIndex(&'static str),
    #[error("its subject is not a valid descriptor: {0}")]
    BadSubject(&'static str),
}

/// The tag the referrers of `subject` are kept under: `sha256-<hex>` for `sha256:<hex>`.
pub fn tag(subject: &Digest) -> String {
    let hex = subject.hex();
    let hex = hex.get(..TAG_REF_MAX).unwrap_or(hex);
    format!("{}-{hex}", subject.algorithm())
}

/// A manifest that names a subject, as the referrers list describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrer {
    pub subject: Digest,
    pub descriptor: Value,
}

/// The referrer entry of a manifest (`digest` is the manifest's own), or `None` when it has
/// no `subject`. `content_type` is what the client sent it as: an image manifest need not
/// repeat its media type in its body.
pub fn referrer(
    manifest: &[u8],
    digest: &str,
    content_type: Option<&str>,
) -> Result<Option<Referrer>, IndexError> {
    let value: Value =
        serde_json::from_slice(manifest).map_err(|e| IndexError::NotJson(e.to_string()))?;
    let Some(subject) = value.get("subject") else {
        return Ok(None);
    };
    let subject = subject
        .get("digest")
        .and_then(Value::as_str)
        .ok_or(IndexError::BadSubject("no digest"))?
        .parse::<Digest>()
        .map_err(|_| IndexError::BadSubject("malformed digest"))?;
    let media_type = value
        .get("mediaType")
        .and_then(Value::as_str)
        .or(content_type)
        .unwrap_or("application/vnd.oci.image.manifest.v1+json");
    let mut descriptor = Map::new();
    descriptor.insert("mediaType".into(), media_type.into());
    descriptor.insert("digest".into(), digest.into());
    descriptor.insert("size".into(), manifest.len().into());
    if let Some(artifact_type) = artifact_type(&value) {
        descriptor.insert("artifactType".into(), artifact_type.into());
    }
    if let Some(annotations) = value.get("annotations").filter(|a| a.is_object()) {
        descriptor.insert("annotations".into(), annotations.clone());
    }
    Ok(Some(Referrer {
        subject,
        descriptor: Value::Object(descriptor),
    }))
}

/// The subject digest of a manifest, if it names one.
pub fn subject_of(manifest: &[u8]) -> Option<Digest> {
    let value: Value = serde_json::from_slice(manifest).ok()?;
    value.get("subject")?.get("digest")?.as_str()?.parse().ok()
}

/// The spec's choice: the manifest's `artifactType`, else its config's media type (an
/// index has no config, and then none).
fn artifact_type(manifest: &Value) -> Option<&str> {
    fn non_empty(v: &Value) -> Option<&str> {
        v.as_str().filter(|s| !s.is_empty())
    }
    manifest
        .get("artifactType")
        .and_then(non_empty)
        .or_else(|| manifest.get("config")?.get("mediaType").and_then(non_empty))
}

/// A referrers index: its descriptors, and whatever else the document holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    rest: Map<String, Value>,
    manifests: Vec<Value>,
}

impl Index {
    pub fn empty() -> Index {
        let mut rest = Map::new();
        rest.insert("schemaVersion".into(), 2.into());
        rest.insert("mediaType".into(), INDEX_MEDIA_TYPE.into());
        Index {
            rest,
            manifests: Vec::new(),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Index, IndexError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| IndexError::NotJson(e.to_string()))?;
        let Value::Object(mut rest) = value else {
            return Err(IndexError::NotAnIndex("not a JSON object"));
        };
        if rest.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err(IndexError::NotAnIndex("schemaVersion is not 2"));
        }
        match rest.get("mediaType").and_then(Value::as_str) {
            None | Some(INDEX_MEDIA_TYPE) => {}
            Some(_) => return Err(IndexError::NotAnIndex("another mediaType")),
        }
        let manifests = match rest.remove("manifests") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(entries)) if entries.iter().all(Value::is_object) => entries,
            Some(_) => return Err(IndexError::NotAnIndex("manifests is not a list")),
        };
        rest.insert("mediaType".into(), INDEX_MEDIA_TYPE.into());
        Ok(Index { rest, manifests })
    }

    pub fn digests(&self) -> Vec<&str> {
        self.manifests.iter().filter_map(digest_of).collect()
    }

    /// Add (or replace) a referrer's descriptor. Returns whether the index changed.
    pub fn add(&mut self, descriptor: Value) -> bool {
        if self.manifests.contains(&descriptor) {
            return false;
        }
        let digest = digest_of(&descriptor).map(str::to_owned);
        self.manifests.retain(|d| digest_of(d) != digest.as_deref());
        self.manifests.push(descriptor);
        true
    }

    /// Remove a referrer by its digest. Returns whether the index changed.
    pub fn remove(&mut self, digest: &str) -> bool {
        let before = self.manifests.len();
        self.manifests.retain(|d| digest_of(d) != Some(digest));
        self.manifests.len() != before
    }

    /// Only the referrers of one artifact type (the `artifactType` query filter).
    pub fn filtered(&self, artifact_type: &str) -> Index {
        let mut out = self.clone();
        out.manifests
            .retain(|d| d.get("artifactType").and_then(Value::as_str) == Some(artifact_type));
        out
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut doc = self.rest.clone();
        doc.insert("manifests".into(), Value::Array(self.manifests.clone()));
        // Serializing a map of JSON values cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

fn digest_of(descriptor: &Value) -> Option<&str> {
    descriptor.get("digest").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUBJECT: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn manifest(extra: Value) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.example.config+json", "digest": SUBJECT, "size": 2},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": SUBJECT, "size": 10},
        });
        if let (Value::Object(m), Value::Object(extra)) = (&mut m, extra) {
            m.extend(extra);
        }
        serde_json::to_vec(&m).expect("json")
    }

    #[test]
    fn the_tag_is_the_algorithm_and_the_hex() {
        let d: Digest = SUBJECT.parse().expect("digest");
        assert_eq!(tag(&d), format!("sha256-{}", &SUBJECT[7..]));
        let long: Digest = format!("sha512:{}", "a".repeat(128))
            .parse()
            .expect("digest");
        assert_eq!(tag(&long), format!("sha512-{}", "a".repeat(64)));
    }

    #[test]
    fn artifact_type_is_the_manifests_else_the_config_media_type() {
        let own = manifest(json!({"artifactType": "application/vnd.example.sbom"}));
        let r = referrer(&own, "sha256:x", None)
            .expect("ok")
            .expect("subject");
        assert_eq!(r.descriptor["artifactType"], "application/vnd.example.sbom");
        assert_eq!(r.subject.as_str(), SUBJECT);
        assert_eq!(r.descriptor["size"], own.len());
        assert_eq!(r.descriptor["digest"], "sha256:x");
        let from_config = manifest(json!({"annotations": {"a": "b"}}));
        let r = referrer(&from_config, "sha256:y", None)
            .expect("ok")
            .expect("subject");
        assert_eq!(
            r.descriptor["artifactType"],
            "application/vnd.example.config+json"
        );
        assert_eq!(r.descriptor["annotations"], json!({"a": "b"}));
        assert_eq!(
            r.descriptor["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let empty_type = manifest(json!({"artifactType": ""}));
        let r = referrer(&empty_type, "sha256:z", None)
            .expect("ok")
            .expect("s");
        assert_eq!(
            r.descriptor["artifactType"],
            "application/vnd.example.config+json"
        );
    }

    #[test]
    fn manifests_without_a_subject_are_not_referrers() {
        let plain = br#"{"schemaVersion":2,"config":{"mediaType":"x"},"layers":[]}"#;
        assert_eq!(referrer(plain, "sha256:x", None), Ok(None));
        assert_eq!(subject_of(plain), None);
        assert!(referrer(b"not json", "sha256:x", None).is_err());
        let bad = br#"{"subject":{"digest":"latest"}}"#;
        assert!(matches!(
            referrer(bad, "sha256:x", None),
            Err(IndexError::BadSubject(_))
        ));
        let ok = manifest(json!({}));
        assert_eq!(subject_of(&ok).map(|d| d.to_string()), Some(SUBJECT.into()));
    }

    #[test]
    fn the_media_type_falls_back_to_the_content_type() {
        let mut m: Value = serde_json::from_slice(&manifest(json!({}))).expect("json");
        m.as_object_mut().expect("object").remove("mediaType");
        let bytes = serde_json::to_vec(&m).expect("json");
        let r = referrer(&bytes, "sha256:x", Some("application/vnd.example.manifest"))
            .expect("ok")
            .expect("subject");
        assert_eq!(
            r.descriptor["mediaType"],
            "application/vnd.example.manifest"
        );
    }

    #[test]
    fn add_replaces_by_digest_and_remove_takes_it_out() {
        let mut index = Index::empty();
        let a = json!({"digest": "sha256:a", "artifactType": "t1", "size": 1});
        let b = json!({"digest": "sha256:b", "artifactType": "t2", "size": 2});
        assert!(index.add(a.clone()));
        assert!(!index.add(a.clone()), "adding it again changes nothing");
        assert!(index.add(b));
        let a2 = json!({"digest": "sha256:a", "artifactType": "t1", "size": 3});
        assert!(index.add(a2));
        assert_eq!(index.digests(), ["sha256:b", "sha256:a"]);
        assert!(index.remove("sha256:a"));
        assert!(!index.remove("sha256:a"));
        assert_eq!(index.digests(), ["sha256:b"]);
    }

    #[test]
    fn filtering_keeps_one_artifact_type() {
        let mut index = Index::empty();
        index.add(json!({"digest": "sha256:a", "artifactType": "t1"}));
        index.add(json!({"digest": "sha256:b", "artifactType": "t2"}));
        index.add(json!({"digest": "sha256:c"}));
        assert_eq!(index.filtered("t2").digests(), ["sha256:b"]);
        assert!(index.filtered("none").digests().is_empty());
        assert_eq!(index.digests().len(), 3, "the original is unchanged");
    }

    #[test]
    fn parsing_keeps_unknown_fields_and_refuses_what_is_not_an_index() {
        let other = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:a","x-extra":1}],"annotations":{"k":"v"}}"#;
        let index = Index::parse(other).expect("index");
        let round: Value = serde_json::from_slice(&index.to_bytes()).expect("json");
        assert_eq!(round["manifests"][0]["x-extra"], 1);
        assert_eq!(round["annotations"]["k"], "v");
        assert_eq!(round["mediaType"], INDEX_MEDIA_TYPE);
        let empty = Index::parse(br#"{"schemaVersion":2}"#).expect("index");
        assert!(empty.digests().is_empty());
        for bad in [
            &b"[]"[..],
            br#"{"schemaVersion":1,"manifests":[]}"#,
            br#"{"schemaVersion":2,"manifests":{}}"#,
            br#"{"schemaVersion":2,"manifests":[1]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            b"nope",
        ] {
            assert!(
                Index::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let empty: Value = serde_json::from_slice(&Index::empty().to_bytes()).expect("json");
        assert_eq!(
            empty,
            json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []})
        );
    }
}

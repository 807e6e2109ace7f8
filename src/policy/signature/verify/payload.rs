//! The signed payload both formats share ("simple signing", docs/atomic-signature.md of
//! containers/image), read as strictly as containers/image's `untrustedSignature` and
//! `UntrustedSigstorePayload` read it: exactly the keys `critical` and `optional`; in
//! `critical` exactly `type`, `image` and `identity`, each holding exactly its one key;
//! duplicate keys anywhere refused. It is parsed only after the signature over it verified.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::reference::Digest;

/// `critical.type` of a GPG simple-signing payload.
pub const SIMPLE_SIGNING_TYPE: &str = "atomic container signature";
/// `critical.type` of a cosign payload.
pub const COSIGN_TYPE: &str = "cosign container image signature";

/// Which format the payload came in; each has its own `critical.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    SimpleSigning,
    Cosign,
}

impl PayloadKind {
    fn signature_type(self) -> &'static str {
        match self {
            PayloadKind::SimpleSigning => SIMPLE_SIGNING_TYPE,
            PayloadKind::Cosign => COSIGN_TYPE,
        }
    }
}

/// What a verified signature claims: the image it names and the manifest it signs. Nothing
/// here is checked against the pulled image; the policy's `signedIdentity` and the manifest
/// digest comparison are the evaluator's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// `critical.identity.docker-reference`, as signed (not normalised).
    pub docker_reference: String,
    /// `critical.image.docker-manifest-digest`, a valid `sha256:`/`sha512:` digest.
    pub manifest_digest: String,
}

/// Why a payload was refused; the text goes after "payload: " in a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

fn err(message: impl Into<String>) -> PayloadError {
    PayloadError(message.into())
}

/// Parses `bytes` as a payload of `kind`.
pub fn parse(bytes: &[u8], kind: PayloadKind) -> Result<Payload, PayloadError> {
    let root: Json = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    let [critical, optional] = exact_fields(&root, "", ["critical", "optional"])?;

    // cosign writes `"optional": null` when the signer gave no annotations; containers/image
    // accepts that for sigstore payloads only.
    if !(kind == PayloadKind::Cosign && matches!(optional, Json::Null)) {
        check_optional(optional)?;
    }

    let [typ, image, identity] = exact_fields(critical, "critical", ["type", "image", "identity"])?;
    let typ = string(typ, "critical.type")?;
    if typ != kind.signature_type() {
        return Err(err(format!(
            "unrecognized signature type {typ:?} (expected {:?})",
            kind.signature_type()
        )));
    }

    let [digest] = exact_fields(image, "critical.image", ["docker-manifest-digest"])?;
    let digest = string(digest, "critical.image.docker-manifest-digest")?;
    let digest: Digest = digest
        .parse()
        .map_err(|e| err(format!("invalid docker-manifest-digest: {e}")))?;

    let [reference] = exact_fields(identity, "critical.identity", ["docker-reference"])?;
    let reference = string(reference, "critical.identity.docker-reference")?;
    // containers/image lets an empty reference through to the identity match, which then
    // fails; refusing it here says why.
    if reference.is_empty() {
        return Err(err("critical.identity.docker-reference is empty"));
    }

    Ok(Payload {
        docker_reference: reference.to_owned(),
        manifest_digest: digest.as_str().to_owned(),
    })
}

/// `optional` is an object whose `creator` must be a string and `timestamp` an integer;
/// other keys are free. Go decodes a JSON `null` into either as "unchanged", so null passes.
fn check_optional(optional: &Json) -> Result<(), PayloadError> {
    let Json::Object(members) = optional else {
        return Err(err(format!(
            "optional: JSON object expected, got {}",
            optional.describe()
        )));
    };
    for (key, value) in members {
        match (key.as_str(), value) {
            (_, Json::Null) => {}
            ("creator", Json::String(_)) => {}
            ("creator", other) => {
                return Err(err(format!(
                    "optional.creator: expected a string, got {}",
                    other.describe()
                )))
            }
            // Go reads it as a float64 and refuses one that is not an exact int64.
            ("timestamp", Json::Number(n))
                if n.fract() != 0.0
                    || !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(n) =>
            {
                return Err(err("optional.timestamp is not an integer"));
            }
            ("timestamp", Json::Number(_)) => {}
            ("timestamp", other) => {
                return Err(err(format!(
                    "optional.timestamp: expected a number, got {}",
                    other.describe()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `node`'s values for exactly the keys `names`, in that order.
fn exact_fields<'j, const N: usize>(
    node: &'j Json,
    path: &str,
    names: [&str; N],
) -> Result<[&'j Json; N], PayloadError> {
    let at = |path: &str| {
        if path.is_empty() {
            String::new()
        } else {
            format!("{path}: ")
        }
    };
    let Json::Object(members) = node else {
        return Err(err(format!(
            "{}JSON object expected, got {}",
            at(path),
            node.describe()
        )));
    };
    if let Some((key, _)) = members.iter().find(|(k, _)| !names.contains(&k.as_str())) {
        return Err(err(format!("{}unknown key {key:?}", at(path))));
    }
    let mut out = [&Json::Null; N];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| err(format!("{}key {name:?} missing", at(path))))?;
    }
    Ok(out)
}

fn string<'j>(node: &'j Json, path: &str) -> Result<&'j str, PayloadError> {
    match node {
        Json::String(s) => Ok(s),
        other => Err(err(format!(
            "{path}: expected a string, got {}",
            other.describe()
        ))),
    }
}

/// A JSON tree that refuses duplicate object keys (serde_json's own `Value` keeps the last).
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    Number(f64),
    String(String),
    Array,
    Object(Vec<(String, Json)>),
}

impl Json {
    fn describe(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        // Elements are checked (duplicate keys inside them too) but never needed.
        while seq.next_element::<Json>()?.is_some() {}
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members: Vec<(String, Json)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value::<Json>()?;
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";

    fn simple(critical: &str, optional: &str) -> String {
        format!(r#"{{"critical":{critical},"optional":{optional}}}"#)
    }

    fn critical(typ: &str) -> String {
        format!(
            r#"{{"identity":{{"docker-reference":"docker.io/library/busybox:latest"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"{typ}"}}"#
        )
    }

    fn refused(text: &str, kind: PayloadKind) -> String {
        match parse(text.as_bytes(), kind) {
            Ok(p) => panic!("accepted {text}: {p:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn skopeo_simple_signing_payload_gives_reference_and_digest() {
        // Byte for byte what skopeo 1.9.3 signed in testdata/trusted.sig.
        let text = r#"{"critical":{"identity":{"docker-reference":"docker.io/library/busybox:latest"},"image":{"docker-manifest-digest":"sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268"},"type":"atomic container signature"},"optional":{"creator":"atomic 5.23.1","timestamp":1796187412}}"#;
        let p = parse(text.as_bytes(), PayloadKind::SimpleSigning).unwrap();
        assert_eq!(p.docker_reference, "docker.io/library/busybox:latest");
        assert_eq!(p.manifest_digest, DIGEST);
    }

    #[test]
    fn cosign_payload_with_null_optional_is_accepted_only_as_cosign() {
        let text = simple(&critical(COSIGN_TYPE), "null");
        let p = parse(text.as_bytes(), PayloadKind::Cosign).unwrap();
        assert_eq!(p.manifest_digest, DIGEST);
        let why = refused(
            &simple(&critical(SIMPLE_SIGNING_TYPE), "null"),
            PayloadKind::SimpleSigning,
        );
        assert!(
            why.contains("optional: JSON object expected, got null"),
            "{why}"
        );
    }

    #[test]
    fn type_must_be_the_formats_own() {
        let why = refused(
            &simple(&critical(COSIGN_TYPE), "{}"),
            PayloadKind::SimpleSigning,
        );
        assert!(why.contains("unrecognized signature type"), "{why}");
        let why = refused(
            &simple(&critical(SIMPLE_SIGNING_TYPE), "{}"),
            PayloadKind::Cosign,
        );
        assert!(why.contains("unrecognized signature type"), "{why}");
        let why = refused(
            &simple(
                &critical(SIMPLE_SIGNING_TYPE)
                    .replace(r#""type":"atomic container signature""#, r#""type":null"#),
                "{}",
            ),
            PayloadKind::SimpleSigning,
        );
        assert!(
            why.contains("critical.type: expected a string, got null"),
            "{why}"
        );
    }

    #[test]
    fn unknown_keys_in_critical_and_its_objects_are_refused() {
        let extra = critical(SIMPLE_SIGNING_TYPE).replacen('{', r#"{"extra":1,"#, 1);
        let why = refused(&simple(&extra, "{}"), PayloadKind::SimpleSigning);
        assert!(why.contains(r#"critical: unknown key "extra""#), "{why}");

        let extra = critical(SIMPLE_SIGNING_TYPE).replace(
            r#"{"docker-manifest-digest""#,
            r#"{"other":"x","docker-manifest-digest""#,
        );
        let why = refused(&simple(&extra, "{}"), PayloadKind::SimpleSigning);
        assert!(
            why.contains(r#"critical.image: unknown key "other""#),
            "{why}"
        );

        let top = format!(
            r#"{{"critical":{},"optional":{{}},"more":1}}"#,
            critical(SIMPLE_SIGNING_TYPE)
        );
        let why = refused(&top, PayloadKind::SimpleSigning);
        assert!(why.contains(r#"unknown key "more""#), "{why}");
    }

    #[test]
    fn unknown_optional_keys_are_ignored_but_known_ones_are_typed() {
        let ok = simple(
            &critical(SIMPLE_SIGNING_TYPE),
            r#"{"mine":[1,{"a":2}],"creator":null}"#,
        );
        assert!(parse(ok.as_bytes(), PayloadKind::SimpleSigning).is_ok());
        let why = refused(
            &simple(&critical(SIMPLE_SIGNING_TYPE), r#"{"creator":5}"#),
            PayloadKind::SimpleSigning,
        );
        assert!(why.contains("optional.creator: expected a string"), "{why}");
        let why = refused(
            &simple(&critical(SIMPLE_SIGNING_TYPE), r#"{"timestamp":1.5}"#),
            PayloadKind::SimpleSigning,
        );
        assert!(
            why.contains("optional.timestamp is not an integer"),
            "{why}"
        );
        let why = refused(
            &simple(&critical(SIMPLE_SIGNING_TYPE), r#"{"timestamp":"1"}"#),
            PayloadKind::SimpleSigning,
        );
        assert!(
            why.contains("optional.timestamp: expected a number"),
            "{why}"
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let no_identity = format!(
            r#"{{"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"{SIMPLE_SIGNING_TYPE}"}}"#
        );
        let why = refused(&simple(&no_identity, "{}"), PayloadKind::SimpleSigning);
        assert!(why.contains(r#"critical: key "identity" missing"#), "{why}");

        let why = refused(
            &format!(r#"{{"critical":{}}}"#, critical(SIMPLE_SIGNING_TYPE)),
            PayloadKind::SimpleSigning,
        );
        assert!(why.contains(r#"key "optional" missing"#), "{why}");

        let empty_image = critical(SIMPLE_SIGNING_TYPE)
            .replace(&format!(r#"{{"docker-manifest-digest":"{DIGEST}"}}"#), "{}");
        let why = refused(&simple(&empty_image, "{}"), PayloadKind::SimpleSigning);
        assert!(
            why.contains(r#"critical.image: key "docker-manifest-digest" missing"#),
            "{why}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_level() {
        let dup_top = format!(
            r#"{{"critical":{c},"optional":{{}},"critical":{c}}}"#,
            c = critical(SIMPLE_SIGNING_TYPE)
        );
        let why = refused(&dup_top, PayloadKind::SimpleSigning);
        assert!(why.contains(r#"duplicate key "critical""#), "{why}");

        // A second docker-reference would let two readers disagree on what was signed.
        let dup_ref = critical(SIMPLE_SIGNING_TYPE).replace(
            r#"{"docker-reference":"docker.io/library/busybox:latest"}"#,
            r#"{"docker-reference":"docker.io/library/busybox:latest","docker-reference":"evil.example/x:1"}"#,
        );
        let why = refused(&simple(&dup_ref, "{}"), PayloadKind::SimpleSigning);
        assert!(why.contains(r#"duplicate key "docker-reference""#), "{why}");
    }

    #[test]
    fn digest_and_reference_values_are_checked() {
        let bad = critical(SIMPLE_SIGNING_TYPE).replace(DIGEST, "sha256:ABC");
        let why = refused(&simple(&bad, "{}"), PayloadKind::SimpleSigning);
        assert!(why.contains("invalid docker-manifest-digest"), "{why}");

        let empty = critical(SIMPLE_SIGNING_TYPE).replace("docker.io/library/busybox:latest", "");
        let why = refused(&simple(&empty, "{}"), PayloadKind::SimpleSigning);
        assert!(why.contains("docker-reference is empty"), "{why}");

        let number =
            critical(SIMPLE_SIGNING_TYPE).replace(r#""docker.io/library/busybox:latest""#, "7");
        let why = refused(&simple(&number, "{}"), PayloadKind::SimpleSigning);
        assert!(
            why.contains("docker-reference: expected a string, got a number"),
            "{why}"
        );
    }

    #[test]
    fn not_json_or_trailing_data_is_refused() {
        let why = refused("not json", PayloadKind::SimpleSigning);
        assert!(!why.is_empty());
        let text = simple(&critical(SIMPLE_SIGNING_TYPE), "{}") + "{}";
        let why = refused(&text, PayloadKind::SimpleSigning);
        assert!(why.contains("trailing"), "{why}");
        let why = refused("[]", PayloadKind::SimpleSigning);
        assert!(why.contains("JSON object expected, got an array"), "{why}");
    }
}

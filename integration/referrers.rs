//! The OCI 1.1 referrers API through portcullis in front of distribution 2.8.2, which has
//! none: artifacts pushed with a `subject` are listed from the referrers tag schema that
//! portcullis keeps on the registry itself, filtered by `artifactType`, and removed on
//! delete; the list is a pull of the subject's repository for the policy.

use serde_json::{json, Value};

use crate::harness::http::Response;
use crate::harness::image::{sha256_digest, MANIFEST_MEDIA_TYPE};
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIGNATURE_CONFIG: &str = "application/vnd.example.signature.config.v1+json";
const REPO: &str = "/v2/corp.example.com/team/app";

const DENY_SECRET: &str = r#"
[[rule]]
id = "no-secret"
message = "team/secret is not for this site"
action = "deny"
operations = ["pull"]
registry = "corp.example.com"
repository = "team/secret"
"#;

struct Client {
    base: String,
    ca: std::path::PathBuf,
}

impl Client {
    fn of_proxy(proxy: &Portcullis) -> Client {
        Client {
            base: proxy.url(),
            ca: proxy.ca_file(),
        }
    }

    fn of_registry(registry: &Registry) -> Client {
        Client {
            base: registry.url(),
            ca: registry.ca_file(),
        }
    }

    fn call(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        };
        let mut client = https(&self.ca);
        for (k, v) in headers {
            client = client.header(k, v);
        }
        client
            .request(method, &url, body)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    fn upload(&self, repo: &str, blob: &[u8]) -> String {
        let digest = sha256_digest(blob);
        let started = self.call("POST", &format!("{repo}/blobs/uploads/"), &[], vec![]);
        assert_eq!(started.status, 202, "{}", started.text());
        let location = started.header("Location").expect("Location").to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self.call(
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            blob.to_vec(),
        );
        assert_eq!(put.status, 201, "{}", put.text());
        digest
    }

    fn put_manifest(&self, repo: &str, reference: &str, manifest: &[u8]) -> Response {
        self.call(
            "PUT",
            &format!("{repo}/manifests/{reference}"),
            &[("Content-Type", MANIFEST_MEDIA_TYPE)],
            manifest.to_vec(),
        )
    }

    fn referrers(&self, repo: &str, digest: &str, query: &str) -> (Response, Value) {
        let resp = self.call(
            "GET",
            &format!("{repo}/referrers/{digest}{query}"),
            &[],
            vec![],
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("Content-Type"),
            Some(INDEX),
            "{:?}",
            resp.headers
        );
        let index: Value = serde_json::from_slice(&resp.body).expect("an index");
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], INDEX);
        (resp, index)
    }
}

fn digests(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| d["digest"].as_str().expect("digest").to_owned())
        .collect()
}

fn entry<'a>(index: &'a Value, digest: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["digest"] == digest))
        .unwrap_or_else(|| panic!("{digest} not in {index}"))
}

#[test]
fn artifacts_with_a_subject_are_listed_filtered_and_deleted_through_the_tag_schema_on_the_upstream()
{
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[4 * 1024]);
    corp.seed(&image, "team/app:1");
    corp.seed(&image, "team/secret:1");
    let dir = TestDir::new("referrers");
    let policies = dir.subdir("policies");
    std::fs::write(policies.join("deny.toml"), DENY_SECRET).expect("policy");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", &corp))
            .policy_path(policies)
            .toml(),
    );
    let client = Client::of_proxy(&proxy);
    let registry = Client::of_registry(&corp);
    let subject = image.manifest_digest.clone();

    // The upstream has no referrers API: passing the request through would answer 404.
    let direct = registry.call(
        "GET",
        &format!("/v2/team/app/referrers/{subject}"),
        &[],
        vec![],
    );
    assert_eq!(direct.status, 404, "{}", direct.text());

    // Nothing refers to it yet: the spec's empty index, 200.
    let (_, empty) = client.referrers(REPO, &subject, "");
    assert_eq!(empty["manifests"], json!([]));

    let config = client.upload(REPO, b"{}");
    let payload = client.upload(REPO, b"an sbom of the image");
    let subject_descriptor = json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": subject,
        "size": image.manifest_bytes().len(),
    });
    let layers = json!([{
        "mediaType": "application/octet-stream",
        "digest": payload,
        "size": 20,
    }]);
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": SBOM,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": layers,
        "subject": subject_descriptor,
        "annotations": {"org.example.kind": "sbom"},
    }))
    .expect("json");
    let signature = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": SIGNATURE_CONFIG, "digest": config, "size": 2},
        "layers": layers,
        "subject": subject_descriptor,
    }))
    .expect("json");
    let sbom_digest = sha256_digest(&sbom);
    let signature_digest = sha256_digest(&signature);

    // By digest and by tag: both answer OCI-Subject once the index holds them.
    let pushed = client.put_manifest(REPO, &sbom_digest, &sbom);
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    assert_eq!(pushed.header("OCI-Subject"), Some(subject.as_str()));
    let pushed = client.put_manifest(REPO, "signature", &signature);
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    assert_eq!(pushed.header("OCI-Subject"), Some(subject.as_str()));

    let (resp, index) = client.referrers(REPO, &subject, "");
    assert_eq!(resp.header("OCI-Filters-Applied"), None);
    let mut listed = digests(&index);
    listed.sort();
    let mut both = vec![sbom_digest.clone(), signature_digest.clone()];
    both.sort();
    assert_eq!(listed, both);
    let a = entry(&index, &sbom_digest);
    assert_eq!(a["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(a["size"], sbom.len());
    assert_eq!(a["artifactType"], SBOM);
    assert_eq!(a["annotations"], json!({"org.example.kind": "sbom"}));
    let b = entry(&index, &signature_digest);
    assert_eq!(
        b["artifactType"], SIGNATURE_CONFIG,
        "the config's media type"
    );
    assert_eq!(b["size"], signature.len());

    // The filter, said so in OCI-Filters-Applied.
    let (resp, filtered) = client.referrers(REPO, &subject, &format!("?artifactType={SBOM}"));
    assert_eq!(resp.header("OCI-Filters-Applied"), Some("artifactType"));
    assert_eq!(digests(&filtered), [sbom_digest.as_str()]);
    let (_, none) = client.referrers(REPO, &subject, "?artifactType=application/x-none");
    assert_eq!(none["manifests"], json!([]));

    // A short name resolved by the search list finds the same list.
    let (_, short) = client.referrers("/v2/team/app", &subject, "");
    assert_eq!(short["manifests"].as_array().map(Vec::len), Some(2));

    // The index is the registry's own sha256-<hex> tag, what older clients read.
    let tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let kept = registry.call(
        "GET",
        &format!("/v2/team/app/manifests/{tag}"),
        &[("Accept", INDEX)],
        vec![],
    );
    assert_eq!(kept.status, 200, "{}", kept.text());
    let kept: Value = serde_json::from_slice(&kept.body).expect("index");
    let mut on_upstream = digests(&kept);
    on_upstream.sort();
    assert_eq!(on_upstream, both);

    // An unknown subject: an empty index, 200.
    let unknown = sha256_digest(b"no such manifest");
    let (_, empty) = client.referrers(REPO, &unknown, "");
    assert_eq!(empty["manifests"], json!([]));

    // Deleting a referrer takes it out of the list, here and on the upstream.
    let deleted = client.call(
        "DELETE",
        &format!("{REPO}/manifests/{sbom_digest}"),
        &[],
        vec![],
    );
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    let (_, after) = client.referrers(REPO, &subject, "");
    assert_eq!(digests(&after), [signature_digest.as_str()]);
    let kept = registry.call(
        "GET",
        &format!("/v2/team/app/manifests/{tag}"),
        &[("Accept", INDEX)],
        vec![],
    );
    let kept: Value = serde_json::from_slice(&kept.body).expect("index");
    assert_eq!(digests(&kept), [signature_digest.as_str()]);

    // The last one out leaves an empty index, which distribution accepts.
    let deleted = client.call(
        "DELETE",
        &format!("{REPO}/manifests/{signature_digest}"),
        &[],
        vec![],
    );
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    let (_, after) = client.referrers(REPO, &subject, "");
    assert_eq!(after["manifests"], json!([]));
    assert!(
        !proxy.log().contains("referrers index was not updated"),
        "{}",
        proxy.log()
    );

    // A referrers list is a pull of the subject's repository: refused where pulls are.
    let denied = client.call(
        "GET",
        &format!("/v2/corp.example.com/team/secret/referrers/{subject}"),
        &[],
        vec![],
    );
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(
        denied.oci_codes().contains(&"DENIED".to_owned()),
        "{}",
        denied.text()
    );
}

fn metrics(proxy: &Portcullis) -> String {
    let admin = proxy.admin_addr().expect("admin listener");
    let out = std::process::Command::new("curl")
        .args(["-s", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_index_the_registry_refuses_leaves_the_push_in_place_answered_without_oci_subject_and_counted()
{
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[4 * 1024]);
    corp.seed(&image, "team/app:1");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp))
            .toml(),
    );
    let client = Client::of_proxy(&proxy);
    let registry = Client::of_registry(&corp);
    let subject = image.manifest_digest.clone();
    let config = client.upload(REPO, b"{}");
    let artifact = |kind: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": kind,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
            "layers": [],
            "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": subject, "size": 1},
        }))
        .expect("json")
    };
    let first = artifact("application/vnd.example.first");
    let first_digest = sha256_digest(&first);
    let pushed = client.put_manifest(REPO, &first_digest, &first);
    assert_eq!(pushed.header("OCI-Subject"), Some(subject.as_str()));
    // Deleted behind portcullis's back: the index still names it, and distribution refuses
    // an index naming a manifest it does not have.
    let gone = registry.call(
        "DELETE",
        &format!("/v2/team/app/manifests/{first_digest}"),
        &[],
        vec![],
    );
    assert_eq!(gone.status, 202, "{}", gone.text());

    let second = artifact("application/vnd.example.second");
    let pushed = client.put_manifest(REPO, &sha256_digest(&second), &second);
    assert_eq!(
        pushed.status,
        201,
        "the manifest itself is pushed: {}",
        pushed.text()
    );
    assert_eq!(
        pushed.header("OCI-Subject"),
        None,
        "without OCI-Subject the client maintains the tag schema itself"
    );
    let stored = registry.call(
        "GET",
        &format!("/v2/team/app/manifests/{}", sha256_digest(&second)),
        &[("Accept", MANIFEST_MEDIA_TYPE)],
        vec![],
    );
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert!(
        metrics(&proxy).contains(
            r#"portcullis_referrers_index_failures_total{registry="corp.example.com"} 1"#
        ),
        "{}",
        metrics(&proxy)
    );
    assert!(
        proxy.log().contains("referrers index was not updated"),
        "{}",
        proxy.log()
    );
}

#[test]
fn a_staged_push_with_a_subject_updates_the_index_once_its_content_is_judged() {
    let hub = Registry::start(Auth::None);
    let image = OciImage::random(&[4 * 1024]);
    hub.seed(&image, "team/app:1");
    let dir = TestDir::new("referrers-staged");
    let policies = dir.subdir("policies");
    std::fs::write(policies.join("private.toml"), STAGE_DOCKER_IO_PUSHES).expect("policy");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["docker.io"])
            .registry(Upstream::new("docker.io", &hub))
            .policy_path(policies)
            .toml(),
    );
    let client = Client::of_proxy(&proxy);
    let repo = "/v2/docker.io/team/app";
    let subject = image.manifest_digest.clone();
    // Staged: the blob waits in portcullis until the manifest is judged.
    let config = client.upload(repo, b"{}");
    assert!(!hub.has_blob(&config), "the push was not staged");
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": SBOM,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": subject, "size": 1},
    }))
    .expect("json");
    let digest = sha256_digest(&artifact);
    let pushed = client.put_manifest(repo, &digest, &artifact);
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    assert_eq!(pushed.header("OCI-Subject"), Some(subject.as_str()));
    assert!(hub.has_blob(&config), "the staged blob was published");
    let (_, index) = client.referrers(repo, &subject, "");
    assert_eq!(digests(&index), [digest.as_str()]);
    assert_eq!(entry(&index, &digest)["artifactType"], SBOM);
}

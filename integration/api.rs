//! The distribution API through portcullis, request by request, against a real registry:
//! ranges, pagination, every upload flavour, mounts, deletes, catalog, blob redirects and
//! the client's own credentials.

use crate::harness::http::Response;
use crate::harness::image::sha256_digest;
use crate::harness::process::describe;
use crate::harness::*;

struct Api {
    base: String,
    client_ca: std::path::PathBuf,
}

impl Api {
    fn new(proxy: &Portcullis) -> Api {
        Api {
            base: proxy.url(),
            client_ca: proxy.ca_file(),
        }
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut client = https(&self.client_ca);
        for (k, v) in headers {
            client = client.header(k, v);
        }
        client
            .request(method, &url, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn location(resp: &Response) -> String {
        resp.header("Location")
            .unwrap_or_else(|| panic!("no Location in {:?}", resp.headers))
            .to_owned()
    }
}

fn with_query(location: &str, pair: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{pair}")
}

#[test]
fn uploads_ranges_pagination_mounts_deletes_and_catalog_pass_through() {
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[64 * 1024]);
    for tag in ["1", "2", "3"] {
        corp.seed(&image, &format!("team/app:{tag}"));
    }
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", &corp))
            .toml(),
    );
    let api = Api::new(&proxy);
    let layer = &image.layers[0];
    let repo = "/v2/corp.example.com/team/app";

    // Range requests pass through as partial content.
    let part = api.call(
        "GET",
        &format!("{repo}/blobs/{}", layer.digest),
        &[("Range", "bytes=0-9")],
        vec![],
    );
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(part.body.len(), 10);
    assert!(
        part.header("Content-Range")
            .is_some_and(|r| r.starts_with("bytes 0-9/")),
        "{:?}",
        part.headers
    );

    // Tag pagination: the Link header points back at portcullis's name for the repository.
    let page = api.call("GET", &format!("{repo}/tags/list?n=2"), &[], vec![]);
    assert_eq!(page.status, 200, "{}", page.text());
    let tags: serde_json::Value = serde_json::from_slice(&page.body).expect("JSON");
    assert_eq!(tags["tags"], serde_json::json!(["1", "2"]));
    let link = page.header("Link").expect("a next link").to_owned();
    assert!(link.starts_with(&format!("<{repo}/tags/list?")), "{link}");
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned();
    let rest: serde_json::Value =
        serde_json::from_slice(&api.call("GET", &next, &[], vec![]).body).expect("JSON");
    assert_eq!(rest["tags"], serde_json::json!(["3"]));

    // Monolithic upload: POST, then PUT the whole body to the rewritten Location.
    let blob = b"monolithic blob".to_vec();
    let digest = sha256_digest(&blob);
    let new = "/v2/corp.example.com/team/new";
    let started = api.call("POST", &format!("{new}/blobs/uploads/"), &[], vec![]);
    assert_eq!(started.status, 202, "{}", started.text());
    let location = Api::location(&started);
    assert!(
        location.starts_with(&format!("{new}/blobs/uploads/")),
        "Location not rewritten: {location}"
    );
    let put = api.call(
        "PUT",
        &with_query(&location, &format!("digest={digest}")),
        &[("Content-Type", "application/octet-stream")],
        blob.clone(),
    );
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(put.header("Docker-Content-Digest"), Some(digest.as_str()));
    assert!(corp.has_blob(&digest));

    // Chunked upload with a status check between chunks.
    let chunks: [&[u8]; 2] = [b"first chunk, ", b"second chunk"];
    let whole: Vec<u8> = chunks.concat();
    let digest = sha256_digest(&whole);
    let mut location =
        Api::location(&api.call("POST", &format!("{new}/blobs/uploads/"), &[], vec![]));
    let mut offset = 0;
    for chunk in chunks {
        let range = format!("{}-{}", offset, offset + chunk.len() - 1);
        let patched = api.call(
            "PATCH",
            &location,
            &[
                ("Content-Range", &range),
                ("Content-Type", "application/octet-stream"),
            ],
            chunk.to_vec(),
        );
        assert_eq!(patched.status, 202, "{}", patched.text());
        location = Api::location(&patched);
        offset += chunk.len();
        let status = api.call("GET", &location, &[], vec![]);
        assert_eq!(status.status, 204, "{}", status.text());
        assert_eq!(
            status.header("Range"),
            Some(format!("0-{}", offset - 1).as_str())
        );
    }
    let done = api.call(
        "PUT",
        &with_query(&location, &format!("digest={digest}")),
        &[],
        vec![],
    );
    assert_eq!(done.status, 201, "{}", done.text());
    assert!(corp.has_blob(&digest));

    // A cancelled upload is gone.
    let location = Api::location(&api.call("POST", &format!("{new}/blobs/uploads/"), &[], vec![]));
    assert_eq!(api.call("DELETE", &location, &[], vec![]).status, 204);
    assert_eq!(api.call("GET", &location, &[], vec![]).status, 404);

    // A mount from the same registry, named as the client names it, mounts.
    let mount = format!(
        "/v2/corp.example.com/team/other/blobs/uploads/?mount={}&from=corp.example.com/team/app",
        layer.digest
    );
    let mounted = api.call("POST", &mount, &[], vec![]);
    assert_eq!(mounted.status, 201, "{}", mounted.text());
    assert_eq!(
        Api::location(&mounted),
        format!("/v2/corp.example.com/team/other/blobs/{}", layer.digest)
    );
    // A source on another registry cannot be mounted: the client is told to upload.
    let foreign = format!(
        "/v2/corp.example.com/team/other/blobs/uploads/?mount={}&from=docker.io/library/x",
        layer.digest
    );
    assert_eq!(api.call("POST", &foreign, &[], vec![]).status, 202);

    // The catalog is the search registries' catalogs, fully qualified and paginated.
    let first = api.call("GET", "/v2/_catalog?n=1", &[], vec![]);
    let names: serde_json::Value = serde_json::from_slice(&first.body).expect("JSON");
    assert_eq!(
        names["repositories"],
        serde_json::json!(["corp.example.com/team/app"])
    );
    let next = first
        .header("Link")
        .expect("next page")
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned();
    let names: serde_json::Value =
        serde_json::from_slice(&api.call("GET", &next, &[], vec![]).body).expect("JSON");
    assert_eq!(
        names["repositories"],
        serde_json::json!(["corp.example.com/team/new"])
    );

    // Delete a manifest by digest; it is gone afterwards.
    let by_digest = format!("{repo}/manifests/{}", image.manifest_digest);
    assert_eq!(api.call("DELETE", &by_digest, &[], vec![]).status, 202);
    let gone = api.call(
        "GET",
        &format!("{repo}/manifests/1"),
        &[("Accept", crate::harness::image::MANIFEST_MEDIA_TYPE)],
        vec![],
    );
    assert_eq!(gone.status, 404, "{}", gone.text());
}

#[test]
fn blob_redirects_are_followed_by_portcullis_only_to_allowed_hosts_and_without_credentials() {
    let upstream = RedirectingUpstream::start(256 * 1024);
    let config = |allowed: &[&str]| {
        let hosts = toml::Value::Array(allowed.iter().map(|h| toml::Value::from(*h)).collect());
        ProxyConfig::new()
            .search(&["cdn.example.com"])
            .registry(
                Upstream::at("cdn.example.com", &upstream.url(), upstream.ca_file())
                    .with("redirect_hosts", hosts),
            )
            .toml()
    };
    let path = format!(
        "/v2/cdn.example.com/team/app/blobs/{}",
        upstream.blob_digest()
    );

    let allowed = Portcullis::start(&config(&[&upstream.cdn_host()]));
    let blob = https(&allowed.ca_file())
        .get(&format!("{}{path}", allowed.url()))
        .expect("blob through a redirect");
    assert_eq!(blob.status, 200, "{}", blob.text());
    assert_eq!(blob.body, upstream.blob(), "the redirected blob differs");
    assert!(upstream.cdn_requests() > 0);
    assert!(
        !upstream.cdn_saw_authorization(),
        "credentials leaked to the redirect target"
    );

    let refused = Portcullis::start(&config(&[]));
    let answer = https(&refused.ca_file())
        .get(&format!("{}{path}", refused.url()))
        .expect("an answer");
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(
        answer.text().contains("not an allowed host"),
        "{}",
        answer.text()
    );
    assert!(
        !refused.log().contains("X-Signature=secret"),
        "a presigned query reached the log"
    );
}

#[test]
fn clients_own_credentials_pass_through_only_where_configured() {
    let corp = Registry::start(Auth::Htpasswd {
        user: "alice",
        password: "wonderland",
    });
    let image = OciImage::random(&[8 * 1024]);
    corp.seed(&image, "team/app:1");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp).pass_client_credentials())
            .toml(),
    );

    let ping = https(&proxy.ca_file())
        .get(&format!("{}/v2/", proxy.url()))
        .expect("GET /v2/");
    assert_eq!(
        ping.status, 401,
        "docker only sends credentials after a challenge"
    );
    assert!(
        ping.header("WWW-Authenticate")
            .is_some_and(|c| c.starts_with("Basic")),
        "{:?}",
        ping.headers
    );

    let cert_dir = proxy.cert_dir().display().to_string();
    let reference = format!("docker://{}/corp.example.com/team/app:1", proxy.addr());
    let skopeo = Skopeo::new();
    let anonymous = skopeo.run(&["inspect", "--raw", "--cert-dir", &cert_dir, &reference]);
    assert!(
        !anonymous.status.success(),
        "an anonymous client read a private image"
    );
    let with_creds = skopeo.run(&[
        "inspect",
        "--raw",
        "--cert-dir",
        &cert_dir,
        "--creds",
        "alice:wonderland",
        &reference,
    ]);
    assert!(with_creds.status.success(), "{}", describe(&with_creds));
    assert_eq!(with_creds.stdout, image.manifest_bytes());
    assert!(
        !proxy.log().contains("wonderland"),
        "the client's password reached the log"
    );
}

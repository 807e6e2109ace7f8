//! The blob cache in front of a real registry: concurrent cold pulls of one blob cost the
//! registry one `GET` (counted in its own access log), every client gets the verified
//! bytes, and what is cached still pulls with skopeo once the registry is stopped.

use std::process::Command;
use std::time::Duration;

use crate::harness::image::{assert_same_image, file_digest};
use crate::harness::process::{describe, run};
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const HOST: &str = "registry.example.com";

#[test]
fn concurrent_cold_pulls_of_one_blob_cost_the_registry_one_get_and_the_cache_serves_with_it_stopped(
) {
    let mut registry = Registry::start(Auth::None);
    let image = OciImage::random(&[48 << 20, 4096]);
    registry.seed(&image, "team/app:1");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .registry(Upstream::new(HOST, &registry))
            .set("cache", "blobs_max_bytes", 1i64 << 30)
            .toml(),
    );
    let layer = image.layers[0].digest.clone();
    let url = format!("https://{}/v2/{HOST}/team/app/blobs/{layer}", proxy.addr());
    let dir = TestDir::new("blob-cache");
    let ca = proxy.ca_file();
    let pulls: Vec<_> = (0..64)
        .map(|i| {
            let (url, ca) = (url.clone(), ca.clone());
            let to = dir.path().join(format!("pull-{i}"));
            std::thread::spawn(move || {
                let mut curl = Command::new("curl");
                curl.args(["-sS", "--fail", "--cacert"])
                    .arg(&ca)
                    // Half over HTTP/1.1, half over HTTP/2.
                    .arg(if i % 2 == 0 { "--http1.1" } else { "--http2" })
                    .arg("-o")
                    .arg(&to)
                    .arg(&url);
                let out = run(curl, None, Duration::from_secs(120));
                (out, to)
            })
        })
        .collect();
    for pull in pulls {
        let (out, to) = pull.join().expect("curl thread");
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(file_digest(&to), layer, "a client got other bytes");
    }
    let upstream_gets: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&layer))
        .collect();
    assert_eq!(upstream_gets.len(), 1, "{upstream_gets:?}");

    // The whole image once through portcullis (its manifest by digest is kept too), then
    // again with the registry gone.
    let by_digest = format!(
        "docker://{}/{HOST}/team/app@{}",
        proxy.addr(),
        image.manifest_digest
    );
    let certs = proxy.cert_dir().display().to_string();
    let skopeo = Skopeo::new();
    let first = TestDir::new("pulled");
    let out = skopeo.copy(
        &by_digest,
        &format!("dir:{}", first.path().display()),
        &["--src-cert-dir", &certs],
    );
    assert!(out.status.success(), "{}", describe(&out));
    registry.stop();
    let again = TestDir::new("pulled");
    let out = skopeo.copy(
        &by_digest,
        &format!("dir:{}", again.path().display()),
        &["--src-cert-dir", &certs],
    );
    assert!(
        out.status.success(),
        "with the registry stopped: {}",
        describe(&out)
    );
    assert_same_image(&image, again.path());

    // What the cache holds, and a purge, from the command line beside the running server.
    let cli = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command.args(args).arg("--config").arg(proxy.config_file());
        let out = run(command, None, Duration::from_secs(30));
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = cli(&["cache", "status"]);
    // Both layers and the config.
    assert!(status.contains("blobs: 3"), "{status}");
    assert!(status.contains(&layer), "{status}");
    let purged = cli(&["cache", "purge", "--digest", &layer]);
    assert!(purged.contains("purged 1 blobs"), "{purged}");
    assert!(cli(&["cache", "status"]).contains("blobs: 2"));
}

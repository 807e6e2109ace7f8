//! Staged upload sessions are bounded in number, not only in bytes: a client that opens
//! sessions and sends nothing is refused with `429 TOOMANYREQUESTS` past its share, other
//! clients still push, empty sessions cost no file and expire after a short idle time.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::net::wait_for;
use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const PER_CLIENT: usize = 4;
const IDLE_SECS: u64 = 2;

struct Staged {
    hub: Registry,
    proxy: Portcullis,
    _dir: TestDir,
}

impl Staged {
    fn start() -> Staged {
        let hub = Registry::start(Auth::None);
        let dir = TestDir::new("sessions");
        let policy = dir.write("private.toml", STAGE_DOCKER_IO_PUSHES);
        let config = ProxyConfig::new()
            .registry(Upstream::new("docker.io", &hub))
            .policy_path(policy)
            .set(
                "policy",
                "staging_max_sessions_per_client",
                PER_CLIENT as i64,
            )
            .set("policy", "staging_idle_session_secs", IDLE_SECS as i64);
        Staged {
            hub,
            proxy: Portcullis::start(&config.toml()),
            _dir: dir,
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.proxy.staging_dir()
    }

    fn staging_files(&self) -> usize {
        std::fs::read_dir(self.staging_dir())
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// `count` upload starts with no body from `source` (a loopback address of its own),
    /// in one curl: the status of each, and the body of the last.
    fn open_sessions(&self, source: &str, count: usize) -> (Vec<u16>, String) {
        let url = format!("{}/v2/docker.io/team/app/blobs/uploads/", self.proxy.url());
        let body = TestDir::new("curl");
        let mut args = vec![
            "-s".to_owned(),
            "--interface".to_owned(),
            source.to_owned(),
            "--cacert".to_owned(),
            self.proxy.ca_file().display().to_string(),
            "-X".to_owned(),
            "POST".to_owned(),
            "-H".to_owned(),
            "Content-Length: 0".to_owned(),
            "-w".to_owned(),
            "%{http_code}\\n".to_owned(),
        ];
        for i in 0..count {
            args.push("-o".to_owned());
            args.push(body.path().join(i.to_string()).display().to_string());
            args.push(url.clone());
        }
        let out = Command::new("curl").args(&args).output().expect("curl");
        let codes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let last =
            std::fs::read_to_string(body.path().join((count - 1).to_string())).unwrap_or_default();
        (codes, last)
    }

    fn metric(&self, line_start: &str) -> Option<f64> {
        let admin = self.proxy.admin_addr().expect("admin listener");
        let out = Command::new("curl")
            .args(["-s", &format!("http://{admin}/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
    }
}

#[test]
fn a_client_past_its_upload_session_limit_gets_429_and_another_client_still_pushes() {
    let s = Staged::start();
    let (codes, _) = s.open_sessions("127.0.0.2", PER_CLIENT);
    assert_eq!(
        codes,
        vec![202; PER_CLIENT],
        "the first sessions are accepted"
    );
    assert_eq!(
        s.staging_files(),
        0,
        "an upload session with no byte must not cost a file in {}",
        s.staging_dir().display()
    );
    assert_eq!(
        s.metric("portcullis_staging_sessions "),
        Some(PER_CLIENT as f64)
    );

    let (codes, refusal) = s.open_sessions("127.0.0.2", 1);
    assert_eq!(codes, vec![429], "one session past the per-client limit");
    let json: serde_json::Value = serde_json::from_str(&refusal).expect("an OCI error body");
    assert_eq!(json["errors"][0]["code"], "TOOMANYREQUESTS", "{refusal}");
    let message = json["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("127.0.0.2") && message.contains(&PER_CLIENT.to_string()),
        "the refusal should name the client and its limit: {message}"
    );
    assert_eq!(
        s.metric(r#"portcullis_staging_sessions_refused_total{scope="client"} "#),
        Some(1.0)
    );

    // Another client (127.0.0.1) pushes a real image through the same staging.
    let image = OciImage::random(&[64 * 1024]);
    let push = Skopeo::new().copy(
        &image.reference(),
        &format!("docker://{}/docker.io/team/app:1", s.proxy.addr()),
        &["--dest-cert-dir", &s.proxy.cert_dir().display().to_string()],
    );
    assert!(push.status.success(), "{}", describe(&push));
    for blob in image.blobs() {
        assert!(s.hub.has_blob(&blob.digest), "{} not pushed", blob.digest);
    }
}

#[test]
fn empty_upload_sessions_expire_after_the_idle_timeout_and_free_their_client_share() {
    let s = Staged::start();
    let opened = Instant::now();
    let (codes, _) = s.open_sessions("127.0.0.3", PER_CLIENT);
    assert_eq!(codes, vec![202; PER_CLIENT]);
    assert_eq!(s.open_sessions("127.0.0.3", 1).0, vec![429]);
    assert_eq!(s.staging_files(), 0, "empty sessions hold no file");

    let expired = wait_for(Duration::from_secs(IDLE_SECS * 4), || {
        (s.metric("portcullis_staging_sessions ") == Some(0.0)).then(|| opened.elapsed())
    });
    let took = expired.unwrap_or_else(|| {
        panic!(
            "empty sessions did not expire within {} s: gauge {:?}",
            IDLE_SECS * 4,
            s.metric("portcullis_staging_sessions ")
        )
    });
    assert!(
        took >= Duration::from_secs(IDLE_SECS),
        "sessions expired before their idle time: {took:?}"
    );
    println!("{PER_CLIENT} empty sessions expired after {took:?} (idle timeout {IDLE_SECS} s)");
    assert!(
        s.metric("portcullis_staging_sessions_expired_total ")
            .unwrap_or(0.0)
            >= PER_CLIENT as f64
    );
    assert_eq!(s.staging_files(), 0);
    // The client's share is free again.
    assert_eq!(s.open_sessions("127.0.0.3", 1).0, vec![202]);
}

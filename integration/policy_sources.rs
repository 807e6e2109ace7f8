//! Policy sources that vanish: a policy file truncated, deleted or renamed, a policy
//! directory emptied. Each keeps the last good policy in force (a blocked pull stays
//! blocked), is reported on `/policy` and in the reload-error metric with the file named,
//! and a later good edit is still picked up. At startup the same conditions stop the server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::image::MANIFEST_MEDIA_TYPE;
use crate::harness::net::{free_port, wait_for};
use crate::harness::portcullis::complete;
use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const BLOCK_BAD: &str = r#"
[[rule]]
id = "no-bad-images"
message = "team/bad is known to be compromised"
action = "deny"
operations = ["pull"]
registry = "corp.example.com"
repository = "team/bad"
"#;

const BLOCK_BAD_AND_APP: &str = r#"
[[rule]]
id = "no-bad-images"
message = "team/bad is known to be compromised"
action = "deny"
operations = ["pull"]
registry = "corp.example.com"
repository = "team/bad"

[[rule]]
id = "app-frozen"
message = "team/app is frozen"
action = "deny"
operations = ["pull"]
registry = "corp.example.com"
repository = "team/app"
"#;

const BLOCK_EVIL: &str = r#"
[[rule]]
id = "no-evil"
message = "team/evil is not allowed"
action = "deny"
operations = ["pull"]
repository = "team/evil"
"#;

/// A portcullis whose `[policy] paths` is one entry (a file or a directory) under `dir`.
struct World {
    _corp: Registry,
    proxy: Portcullis,
    dir: TestDir,
}

impl World {
    fn start(files: &[(&str, &str)], path: &str) -> World {
        let corp = Registry::start(Auth::None);
        let image = OciImage::random(&[4096]);
        corp.seed(&image, "team/bad:1");
        corp.seed(&image, "team/app:1");
        let dir = TestDir::new("policy-sources");
        let policies = dir.subdir("policies");
        for (name, text) in files {
            std::fs::write(policies.join(name), text).expect("write policy");
        }
        let config = ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp))
            .policy_path(policies.join(path))
            .set("policy", "reload_interval_ms", 100);
        World {
            _corp: corp,
            proxy: Portcullis::start(&config.toml()),
            dir,
        }
    }

    fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Write then rename, as editors and ConfigMaps do.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.policies().join(name)).expect("rename policy");
    }

    fn pull_status(&self, repository: &str) -> (u16, Vec<String>) {
        let r = https(&self.proxy.ca_file())
            .header("Accept", MANIFEST_MEDIA_TYPE)
            .get(&format!(
                "{}/v2/corp.example.com/{repository}/manifests/1",
                self.proxy.url()
            ))
            .expect("answer");
        (r.status, r.oci_codes())
    }

    fn assert_blocked(&self, repository: &str, when: &str) {
        assert_eq!(
            self.pull_status(repository),
            (403, vec!["DENIED".to_owned()]),
            "{when}: a pull of {repository} got through: the last good policy must stay in force"
        );
    }

    fn admin_get(&self, path: &str) -> String {
        let admin = self.proxy.admin_addr().expect("admin listener");
        let out = Command::new("curl")
            .args(["-s", &format!("http://{admin}{path}")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn reload_errors(&self) -> u64 {
        self.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(r#"portcullis_policy_reloads_total{result="error"} "#))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `portcullis policy status`, the way an operator sees it.
    fn status(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "policy",
                "status",
                "--admin",
                &self.proxy.admin_addr().expect("admin").to_string(),
            ])
            .output()
            .expect("policy status");
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Waits for the `n`th refused reload, then checks it is reported with `named` and
    /// `why` in a problem, and that the block still holds.
    fn assert_refused(&self, n: u64, named: &str, why: &str, when: &str) {
        let seen = wait_for(Duration::from_secs(5), || {
            (self.reload_errors() >= n).then_some(())
        });
        assert!(
            seen.is_some(),
            "{when}: no refused reload counted (portcullis_policy_reloads_total{{result=\"error\"}} = {}, want {n}); status: {}",
            self.reload_errors(),
            self.status()
        );
        let status = self.status();
        assert_eq!(status["last_result"], "error", "{when}: {status}");
        let problems: Vec<String> = status["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            problems
                .iter()
                .any(|p| p.contains(named) && p.contains(why)),
            "{when}: /policy does not name {named} with {why:?}: {problems:?}"
        );
        assert!(
            self.proxy.log().contains("policy reload refused"),
            "{when}: not logged:\n{}",
            self.proxy.log()
        );
        self.assert_blocked("team/bad", when);
    }

    /// Waits until a good edit is in force (the status says ok at `generation`).
    fn assert_reloaded(&self, generation: u64, when: &str) {
        let start = Instant::now();
        loop {
            let status = self.status();
            if status["last_result"] == "ok" && status["generation"] == generation {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{when}: the good edit was not picked up: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_truncated_deleted_or_renamed_policy_file_keeps_the_last_good_policy_and_names_the_file() {
    let w = World::start(&[("site.toml", BLOCK_BAD)], "site.toml");
    let site = w.policies().join("site.toml");
    w.assert_blocked("team/bad", "at start");
    assert_eq!(w.pull_status("team/app").0, 200);

    // `: > site.toml`
    std::fs::File::create(&site).expect("truncate");
    w.assert_refused(1, "site.toml", "empty", "truncated");
    // A real client sees the same refusal.
    let to = TestDir::new("pulled");
    let pull = Skopeo::new().copy(
        &format!("docker://{}/corp.example.com/team/bad:1", w.proxy.addr()),
        &format!("dir:{}", to.path().display()),
        &["--src-cert-dir", &w.proxy.cert_dir().display().to_string()],
    );
    assert!(
        !pull.status.success() && describe(&pull).contains("no-bad-images"),
        "skopeo pulled a blocked image after the policy file was truncated: {}",
        describe(&pull)
    );

    // Only comments and whitespace is empty too.
    w.write(
        "site.toml",
        "# the policy is being rewritten\n\n   \n# more soon\n",
    );
    w.assert_refused(2, "site.toml", "empty", "comments only");

    // A good edit is picked up.
    w.write("site.toml", BLOCK_BAD_AND_APP);
    w.assert_reloaded(2, "after truncation");
    w.assert_blocked("team/app", "after the good edit");

    // `rm site.toml`
    std::fs::remove_file(&site).expect("rm");
    w.assert_refused(3, "site.toml", "cannot read", "deleted");
    w.assert_blocked("team/app", "deleted");

    w.write("site.toml", BLOCK_BAD_AND_APP);
    w.assert_reloaded(3, "after deletion");

    // `mv site.toml site.toml.bak`
    std::fs::rename(&site, w.policies().join("site.toml.bak")).expect("mv");
    w.assert_refused(4, "site.toml", "cannot read", "renamed");
    w.assert_blocked("team/app", "renamed");

    // An explicitly permissive file is a valid edit: it says so.
    w.write("site.toml", "mode = \"blocklist\"\n");
    w.assert_reloaded(4, "an explicit allow-all");
    assert_eq!(
        w.pull_status("team/bad").0,
        200,
        "mode = \"blocklist\" alone allows everything"
    );
}

#[test]
fn a_policy_directory_that_loses_its_files_keeps_the_last_good_policy_and_names_it() {
    let w = World::start(&[("block.toml", BLOCK_BAD)], "");
    let dir = w.policies();
    let block = dir.join("block.toml");
    let dir_name = dir.display().to_string();
    w.assert_blocked("team/bad", "at start");

    // Renamed away: the directory holds no policy file any more.
    std::fs::rename(&block, dir.join("block.toml.bak")).expect("mv");
    w.assert_refused(
        1,
        dir_name.trim_end_matches('/'),
        "no policy file",
        "renamed away",
    );

    std::fs::rename(dir.join("block.toml.bak"), &block).expect("mv back");
    w.assert_reloaded(2, "renamed back");

    // Deleted.
    std::fs::remove_file(&block).expect("rm");
    w.assert_refused(
        2,
        dir_name.trim_end_matches('/'),
        "no policy file",
        "deleted",
    );

    // Replaced by an empty file.
    std::fs::write(dir.join("other.toml"), "").expect("write");
    w.assert_refused(3, "other.toml", "empty", "replaced by an empty file");

    // Replaced by a good file: picked up.
    w.write("other.toml", BLOCK_BAD_AND_APP);
    w.assert_reloaded(3, "replaced by a good file");
    w.assert_blocked("team/app", "replaced by a good file");

    // One of two files emptied: the whole edit is refused.
    w.write("block.toml", BLOCK_EVIL);
    std::fs::write(dir.join("block.toml"), "").expect("truncate");
    w.assert_refused(4, "block.toml", "empty", "one of two emptied");
}

/// Runs `portcullis serve` on `policy_path`; it must exit on its own, failing.
fn serve_must_refuse(dir: &TestDir, policy_path: &Path) -> String {
    let state = dir.subdir("state");
    let addr = ([127, 0, 0, 1], free_port()).into();
    let config = complete(
        &ProxyConfig::new()
            .policy_path(policy_path)
            .set("listen", "admin", "off")
            .set("listen", "proxy", "off")
            .toml(),
        &state,
        addr,
        addr,
        addr,
    );
    let config_file = dir.write("portcullis.toml", config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let exited = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "portcullis started serving on the policy {}",
            policy_path.display()
        );
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn portcullis_refuses_to_start_on_an_empty_or_missing_policy_and_policy_check_agrees() {
    let dir = TestDir::new("policy-startup");
    let cases = [
        ("empty.toml", Some(""), "empty"),
        ("comments.toml", Some("# nothing yet\n\n"), "empty"),
        ("missing.toml", None, "cannot read"),
    ];
    for (name, text, why) in cases {
        let path = dir.path().join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).expect("write");
        }
        let stderr = serve_must_refuse(&dir, &path);
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(why),
            "{name}: the refusal does not name the file with {why:?}:\n{stderr}"
        );
        let check = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["policy", "check"])
            .arg(&path)
            .output()
            .expect("policy check");
        assert!(
            !check.status.success() && describe(&check).contains(name),
            "policy check accepted {name}: {}",
            describe(&check)
        );
    }
    let empty_dir = dir.subdir("empty-dir");
    std::fs::write(empty_dir.join("README.txt"), "not a policy").expect("write");
    let stderr = serve_must_refuse(&dir, &empty_dir);
    assert!(
        stderr.contains("empty-dir") && stderr.contains("no policy file"),
        "an empty policy directory: {stderr}"
    );
}

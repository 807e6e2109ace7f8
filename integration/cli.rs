//! The command line as an operator meets it: configuration errors, certificates.

use std::process::Command;

use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

#[test]
fn a_broken_configuration_is_refused_with_every_problem_by_line_and_key() {
    let dir = TestDir::new("cli");
    let file = dir.write(
        "bad.toml",
        "[listen]\nregistry = \"nowhere\"\n[resolve]\nsearch = [\"unknown.example.com\"]\n[[registry]]\nhost = \"docker.io\"\nendpoint = \"ftp://x\"\nbogus = 1\n",
    );
    let file = file.display().to_string();

    let out = portcullis(&["config", "check", &file]);
    assert!(
        !out.status.success(),
        "a broken configuration passed: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}:8")) && err.contains("bogus"),
        "unknown key not reported by line:\n{err}"
    );

    let fixed = dir.write(
        "semantic.toml",
        "[listen]\nregistry = \"nowhere\"\n[resolve]\nsearch = [\"unknown.example.com\"]\n[[registry]]\nhost = \"docker.io\"\nendpoint = \"ftp://x\"\n",
    );
    let fixed = fixed.display().to_string();
    let out = portcullis(&["serve", "--config", &fixed]);
    assert!(
        !out.status.success(),
        "serve started on a broken configuration"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{fixed}:2: listen.registry"),
        format!("{fixed}:4: resolve.search"),
        format!("{fixed}:7: registry[docker.io].endpoint"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn certs_init_creates_a_private_ca_once_and_certs_ca_prints_it() {
    let dir = TestDir::new("cli");
    let state = dir.subdir("state");
    let config = dir.write(
        "c.toml",
        format!("state_dir = {:?}\n", state.display().to_string()),
    );
    let config = config.display().to_string();

    let first = portcullis(&["certs", "init", "--config", &config]);
    assert!(first.status.success(), "{}", describe(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("created"),
        "{}",
        describe(&first)
    );
    let again = portcullis(&["certs", "init", "--config", &config]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("exists"),
        "{}",
        describe(&again)
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("ca.key"))
        .expect("ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is readable by others");

    let ca = portcullis(&["certs", "ca", "--config", &config]);
    let text = String::from_utf8_lossy(&ca.stdout);
    assert!(
        text.starts_with(&state.join("ca.crt").display().to_string()),
        "{text}"
    );
    assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "the CA key was printed");
}

#[test]
fn policy_check_reports_every_problem_by_file_and_line_and_explain_names_the_rule() {
    let dir = TestDir::new("cli");
    let broken = dir.write(
        "broken.toml",
        "[[rule]]\nid = \"a\"\naction = \"deny\"\nrepository = \"regex:([\"\n\n[[rule]]\nid = \"a\"\naction = \"explode\"\n",
    );
    let broken = broken.display().to_string();
    let out = portcullis(&["policy", "check", &broken]);
    assert!(!out.status.success(), "a broken policy passed the check");
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [1, 4, 6, 8] {
        assert!(
            err.contains(&format!("{broken}:{line}:")),
            "no problem reported at line {line}:\n{err}"
        );
    }

    let good = dir.write(
        "good.toml",
        "[[rule]]\nid = \"no-latest\"\nmessage = \"pin a version\"\naction = \"deny\"\ntag = \"^latest$\"\n",
    );
    let good = good.display().to_string();
    let out = portcullis(&["policy", "check", &good]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = portcullis(&[
        "policy",
        "explain",
        "--op",
        "pull",
        "--policy",
        &good,
        "docker.io/alpine:latest",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text.contains("docker.io/library/alpine")
            && text.contains("no-latest")
            && text.contains("deny"),
        "{text}"
    );
}

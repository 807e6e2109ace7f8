//! containers-registries.conf(5) texts, compiled and asked about a name: prefixes,
//! `location` rewrites and mirrors are where the string surgery is. Input: the conf text, a
//! NUL byte, an image name `registry/repository`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::{self, Fragment, Operation, Subject};
use portcullis::reference::Name;

fuzz_target!(|data: &[u8]| {
    let (text, name) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"docker.io/library/alpine"[..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let lines = text.split('\n').count();
    let fragment = match Fragment::from_registries_conf("registries.conf", text) {
        Ok(fragment) => fragment,
        Err(problems) => {
            for p in &problems {
                if let Some(line) = p.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "{p} but the text has {lines} lines"
                    );
                }
            }
            return;
        }
    };
    let Ok(policy) = policy::compile(vec![fragment]) else {
        return;
    };
    let Some(name) = std::str::from_utf8(name)
        .ok()
        .and_then(|n| Name::parse(n).ok())
    else {
        return;
    };
    let (registry, repository) = name.qualify("docker.io");
    let repository = repository.as_str();
    if let Name::Short(short) = &name {
        let _ = policy.resolve_short(short, &[]);
    }
    let _ = policy.rewrite(&registry, repository);
    for by_digest in [false, true] {
        let _ = policy.pull_sources(&registry, repository, by_digest);
    }
    let subject = Subject {
        op: Operation::Pull,
        registry: &registry,
        repository,
        tag: Some("latest"),
        digest: None,
    };
    assert_eq!(policy.explain(&subject).decision, policy.evaluate(&subject));
});

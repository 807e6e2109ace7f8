//! Policy files (`policy::parse`), then the compiled policy asked about a name, so that the
//! patterns the file defines are matched against something. Input: policy text, a NUL byte,
//! an image reference `registry/repository[:tag]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::{self, Operation, Policy, Problem, PushContent, Subject};
use portcullis::reference::{Name, Reference};

fuzz_target!(|data: &[u8]| {
    let (text, name) = split(data);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match policy::parse("fuzz.toml", text) {
        Ok(policy) => ask(&policy, name),
        Err(problems) => check_lines(text, &problems),
    }
});

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, b"docker.io/library/alpine:latest"),
    }
}

/// Problems are reported as `file:line`: a line the file has.
fn check_lines(text: &str, problems: &[Problem]) {
    let lines = text.split('\n').count();
    for p in problems {
        if let Some(line) = p.line {
            assert!(
                (1..=lines).contains(&line),
                "{p} but the text has {lines} lines"
            );
        }
    }
}

fn ask(policy: &Policy, name: &[u8]) {
    let _ = policy.stats();
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (name, None),
    };
    let tag = tag.and_then(|t| Reference::parse(t).ok());
    let Ok(name) = Name::parse(name) else {
        return;
    };
    let (registry, repository) = name.qualify("docker.io");
    let (tag, digest) = match &tag {
        Some(Reference::Tag(t)) => (Some(t.as_str()), None),
        Some(Reference::Digest(d)) => (None, Some(d.as_str())),
        None => (None, None),
    };
    for op in Operation::ALL {
        let subject = Subject {
            op,
            registry: &registry,
            repository: repository.as_str(),
            tag,
            digest,
        };
        // `policy explain` must show the decision the proxy makes.
        let decision = policy.evaluate(&subject);
        assert_eq!(policy.explain(&subject).decision, decision);
        let _ = policy.permits_name(op, &registry, repository.as_str());
    }
    let _ = policy.private_push(&PushContent {
        registry: &registry,
        repository: repository.as_str(),
        ..PushContent::default()
    });
    let _ = policy.private_push_by_name(&registry, repository.as_str());
    if let Name::Short(short) = &name {
        let _ = policy.resolve_short(short, &["docker.io".to_owned()]);
    }
    let _ = policy.rewrite(&registry, repository.as_str());
    let _ = policy.pull_sources(&registry, repository.as_str(), digest.is_some());
}

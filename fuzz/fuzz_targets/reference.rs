//! The image reference grammar: names, repositories, tags, digests and registry hosts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::reference::{self, Digest, Name, Reference, Repository};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // A parsed value is stored as written, so writing it out gives something that parses to it.
    if let Ok(digest) = s.parse::<Digest>() {
        assert_eq!(digest.as_str(), s);
        assert_eq!(format!("{}:{}", digest.algorithm(), digest.hex()), s);
    }
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.to_string(), s);
        assert_eq!(Reference::parse(&r.to_string()), Ok(r));
    }
    if let Ok(repo) = Repository::parse(s) {
        assert_eq!(repo.as_str(), s);
        assert_eq!(repo.components(), s.split('/').count());
    }
    if let Ok(name) = Name::parse(s) {
        // Normalisation (host lowercased, docker.io family folded, "library/" added) is
        // idempotent. "library/" can push the written form past 255 characters, which the
        // length check then refuses; that is docker's limit on what the user wrote.
        let shown = name.to_string();
        if shown.len() <= 255 {
            assert_eq!(
                Name::parse(&shown).as_ref(),
                Ok(&name),
                "{s:?} -> {shown:?}"
            );
        }
        if let Name::Qualified { registry, .. } = &name {
            assert!(reference::is_valid_registry_host(registry), "{registry:?}");
            assert_eq!(&reference::normalize_registry(registry), registry);
        }
        let (registry, repository) = name.qualify(reference::DOCKER_HUB);
        let _ = reference::fully_qualified(&registry, &repository);
    }
    if reference::is_valid_registry_host(s) {
        assert!(reference::is_valid_registry_host(
            &reference::normalize_registry(s)
        ));
    }
});

//! Upload `Location` and pagination `Link` headers from an upstream, checked against the
//! upstream's origin and repository and rewritten to the client's name
//! (`upstream::location::rewrite`). Input: a selector byte (odd: `Link`), the header value,
//! NUL, the upstream repository, NUL, the client name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::upstream::location::{rewrite, Header};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let kind = if selector & 1 == 1 {
        Header::Link
    } else {
        Header::Location
    };
    let mut fields = data.splitn(3, |&b| b == 0);
    let value = fields.next().unwrap_or_default();
    let upstream_repo = std::str::from_utf8(fields.next().unwrap_or(b"library/alpine"));
    let client_name = std::str::from_utf8(fields.next().unwrap_or(b"alpine"));
    let (Ok(upstream_repo), Ok(client_name)) = (upstream_repo, client_name) else {
        return;
    };
    let Ok(endpoint) = url::Url::parse("https://registry.example.com:5000/") else {
        return;
    };
    if let Ok(out) = rewrite(kind, value, &endpoint, upstream_repo, client_name) {
        // Whatever the upstream sent, what reaches the client is a path under the client's
        // name on portcullis itself: never another origin (a Link keeps its `<`).
        let rest = out.strip_prefix('<').unwrap_or(&out);
        assert!(
            rest.starts_with(&format!("/v2/{client_name}/")),
            "{value:?} -> {out:?}"
        );
        assert!(!rest.starts_with("//"), "{value:?} -> {out:?}");
    }
});

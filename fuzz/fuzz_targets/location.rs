//! Upload `Location` and pagination `Link` headers from the upstream, rewritten to the
//! client's name. Input: the header value, NUL, the upstream repository, NUL, the client name.
//!
//! Points at `proxy::rewrite_location` (src/proxy/respond.rs) as it is today.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use portcullis::proxy::rewrite_location;

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(3, |&b| b == 0);
    let value = fields.next().unwrap_or_default();
    let upstream_repo = std::str::from_utf8(fields.next().unwrap_or(b"library/alpine"));
    let client_name = std::str::from_utf8(fields.next().unwrap_or(b"alpine"));
    let (Ok(value), Ok(upstream_repo), Ok(client_name)) =
        (HeaderValue::from_bytes(value), upstream_repo, client_name)
    else {
        return;
    };
    let out = rewrite_location(&value, upstream_repo, client_name);
    if out != value {
        // A rewritten header is a path under the client's name, origin dropped, with a Link
        // header's `<` kept.
        // Bytes, not `to_str`: a header value may hold non-ASCII, and the client name here is
        // not validated as the proxy's is.
        let out = out.as_bytes();
        let rest = out.strip_prefix(b"<").unwrap_or(out);
        assert!(
            rest.starts_with(format!("/v2/{client_name}/").as_bytes()),
            "{value:?} -> {out:?}"
        );
    }
});

//! What an upstream or a client sends about authentication: `WWW-Authenticate` challenges,
//! token service responses, and a client's `Authorization: Basic`.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use portcullis::upstream::auth::{host_allowed, Challenge, Identity, Token};

fuzz_target!(|data: &[u8]| {
    let _ = Token::from_response(data);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        if let Some(identity) = Identity::from_client_basic(&value) {
            // Passed-through credentials reach the upstream as the client sent them.
            let header = identity.basic_header().expect("a Basic header");
            assert_eq!(Identity::from_client_basic(&header), Some(identity));
        }
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Challenge::Bearer { realm, .. }) = Challenge::parse(s) {
        let entries = [realm.clone(), "*.example.com".to_owned()];
        let _ = host_allowed(&entries, &realm, Some(443));
    }
});

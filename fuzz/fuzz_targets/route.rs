//! `route::parse` on request paths, then `Name::parse` on the name, as every request does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::reference::Name;
use portcullis::route::{self, Route};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(route) = route::parse(path) else {
        return;
    };
    // The module's claim: everything before the last two (three) segments is the name, raw and
    // non-empty, so the route written back out is the path it came from.
    let rendered = match &route {
        Route::Base => "/v2/".to_owned(),
        Route::Catalog => "/v2/_catalog".to_owned(),
        Route::V1Ping => "/v1/_ping".to_owned(),
        Route::V1Search => "/v1/search".to_owned(),
        Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
        Route::UploadStart { name } => format!("/v2/{name}/blobs/uploads/"),
        Route::Upload { name, session } => format!("/v2/{name}/blobs/uploads/{session}"),
        Route::Tags { name } => format!("/v2/{name}/tags/list"),
        Route::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
    };
    assert!(
        rendered == path || rendered == format!("{path}/"),
        "{path:?} parsed to {route:?}, which renders as {rendered:?}"
    );
    assert_eq!(route::parse(&rendered).as_ref(), Ok(&route));
    if let Some(name) = route.name() {
        assert!(!name.is_empty(), "{path:?}: empty name");
        let _ = Name::parse(name);
    }
    let _ = route.kind();
});

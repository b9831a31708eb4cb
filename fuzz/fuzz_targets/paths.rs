//! Static paths: whatever is accepted has only plain components.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if let Some(relative) = herve::testing::static_relative_path(path) {
        assert!(relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))));
    }
    let _ = herve::testing::service_uuid(path);
});

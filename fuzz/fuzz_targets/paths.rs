//! Static paths: whatever is accepted has only plain components.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if let Some(relative) = herve::types::static_files::relative_path(path) {
        assert!(relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))));
    }
    let _ = herve::dispatch::service_uuid(path);
});

//! Registration and model bodies: form and JSON parsing never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fields = herve::testing::parse_form(data);
    for (key, _) in fields.iter() {
        let _ = fields.get(key);
    }
    let _ = herve::testing::parse_json(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herve::testing::valid_service_name(text);
    }
});

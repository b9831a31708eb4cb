//! Basic credentials and upstream URLs: parsed or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = herve::testing::basic_credentials(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herve::testing::parse_upstream(text);
    }
});

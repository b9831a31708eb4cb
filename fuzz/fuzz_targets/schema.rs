//! Model schemas: parsed or refused, never a panic; accepted ones have unique names.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: &str| {
    if let Ok(names) = herve::testing::parse_schema(spec) {
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
});

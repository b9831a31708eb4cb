//! Model schemas: parsed or refused, never a panic; accepted ones have unique names.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: &str| {
    if let Ok(fields) = herve::types::models::parse_schema(spec) {
        let mut names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), fields.len());
    }
});

//! Property tests of the parsers Herve owns: whatever the input, they answer (never
//! panic) and what they accept keeps their promises.

use proptest::prelude::*;

use herve::testing::{
    basic_credentials as parse_basic, parse_form, parse_json, parse_schema, parse_upstream,
    static_relative_path as relative_path, valid_service_name,
};

fn name_is_valid(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn form_bodies_round_trip(pairs in proptest::collection::vec((".{0,12}", ".{0,24}"), 0..8)) {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let fields = parse_form(encoded.as_bytes());
        let parsed: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(&parsed, &pairs);
        // The last value of a key wins.
        for (key, _) in &pairs {
            let last = pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            prop_assert_eq!(fields.get(key), last);
        }
    }

    #[test]
    fn any_form_or_json_body_parses_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_form(&body);
        let _ = parse_json(&body);
    }

    #[test]
    fn names_are_accepted_exactly_when_they_match_the_rule(name in "[A-Za-z0-9._\\- é/]{0,70}") {
        prop_assert_eq!(valid_service_name(&name), name_is_valid(&name));
    }

    #[test]
    fn schemas_parse_or_are_refused_and_accepted_ones_are_sound(spec in "[a-z_:0-9,]{0,60}|([a-z]{1,6}:(string|int|float|bool)(:[0-9]{1,4})?(:required)?,){1,5}") {
        if let Ok(fields) = parse_schema(&spec) {
            prop_assert!(!fields.is_empty());
            let mut names: Vec<&str> = fields.iter().map(String::as_str).collect();
            names.sort_unstable();
            names.dedup();
            prop_assert_eq!(names.len(), fields.len(), "duplicate field names accepted");
            for field in &fields {
                prop_assert!(!["id", "created_at", "updated_at"].contains(&field.as_str()));
            }
        }
    }

    #[test]
    fn static_paths_never_climb_out(path in "(/|%2[eEfF]|\\.|\\.\\.|%5[cC]|%00|[a-z]{1,3}|%[0-9A-Fa-f]{2}){0,12}") {
        if let Some(relative) = relative_path(&path) {
            for component in relative.components() {
                prop_assert!(matches!(component, std::path::Component::Normal(_)), "{:?} from {}", relative, path);
            }
            prop_assert!(!relative.to_string_lossy().contains('\0'));
        }
    }

    #[test]
    fn basic_credentials_parse_or_are_refused(header in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = parse_basic(&header);
    }

    #[test]
    fn basic_credentials_round_trip(id in "[^:]{0,20}", secret in ".{0,30}") {
        use base64::Engine;
        let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
        let parsed = parse_basic(header.as_bytes());
        prop_assert_eq!(parsed, Some((id.into_bytes(), secret.into_bytes())));
    }

    #[test]
    fn upstream_urls_parse_or_are_refused(url in "(http|https|ftp)?(://)?[a-z0-9.:@\\[\\]/?#%]{0,40}") {
        if let Ok(kept) = parse_upstream(&url) {
            prop_assert!(kept.starts_with("http://") || kept.starts_with("https://"));
        }
    }
}

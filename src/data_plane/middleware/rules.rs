//! `request_headers` and `response_headers`: one rule a line (or a repeated field),
//! `Name: value` sets a header, `-Name` removes it.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::FieldError;
use crate::contract::Fields;

/// Most rules per field.
const MAX_RULES: usize = 32;

/// Headers no rule may touch: they frame the message or belong to the connection (or
/// to Herve: routing and `protect`).
const MANAGED: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
    "x-herve-user",
    "content-encoding",
    "via",
];

/// One header rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderRule {
    Set(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl HeaderRule {
    /// Reads the rules of `field`.
    pub fn read_all(fields: &Fields, field: &'static str) -> Result<Vec<HeaderRule>, FieldError> {
        let mut rules = Vec::new();
        for line in fields.get_all(field).flat_map(str::lines) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            rules.push(HeaderRule::parse(line).map_err(|why| {
                FieldError::new(
                    field,
                    format!("The field '{field}' has an invalid rule '{line}': {why}."),
                )
            })?);
        }
        if rules.len() > MAX_RULES {
            return Err(FieldError::new(
                field,
                format!("The field '{field}' may hold at most {MAX_RULES} rules."),
            ));
        }
        Ok(rules)
    }

    fn parse(line: &str) -> Result<HeaderRule, String> {
        let name_of = |text: &str| {
            let name = HeaderName::from_bytes(text.trim().as_bytes())
                .map_err(|_| format!("'{}' is not a header name", text.trim()))?;
            if MANAGED.contains(&name.as_str()) {
                return Err(format!("'{name}' is managed by Herve"));
            }
            Ok(name)
        };
        if let Some(name) = line.strip_prefix('-') {
            return Ok(HeaderRule::Remove(name_of(name)?));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err("write 'Name: value' to set a header, '-Name' to remove one".to_owned());
        };
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| "the value has characters a header cannot carry".to_owned())?;
        Ok(HeaderRule::Set(name_of(name)?, value))
    }

    /// Applies `rules` in order.
    pub fn apply(rules: &[HeaderRule], headers: &mut HeaderMap) {
        for rule in rules {
            match rule {
                HeaderRule::Set(name, value) => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderRule::Remove(name) => {
                    headers.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_apply() {
        let fields = Fields::from_pairs([
            ("response_headers", "X-Frame-Options: DENY\n-Server"),
            ("response_headers", "Cache-Control: no-cache, no-store"),
        ]);
        let rules = HeaderRule::read_all(&fields, "response_headers").expect("valid");
        assert_eq!(rules.len(), 3);
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("x"));
        HeaderRule::apply(&rules, &mut headers);
        assert!(headers.get("server").is_none());
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["cache-control"], "no-cache, no-store");
        for bad in [
            "NoColon",
            "Bad Name: x",
            "Content-Length: 5",
            "-Host",
            "X: a\u{7f}",
        ] {
            let fields = Fields::from_pairs([("request_headers", bad)]);
            let error = HeaderRule::read_all(&fields, "request_headers").err();
            assert!(error.is_some(), "{bad:?} accepted");
        }
    }
}

//! Reading the type-specific registration fields the built-in types share.

use std::ops::RangeInclusive;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::contract::{Fields, ServiceError};

/// A whole number field in `range`, or `default` when absent or empty.
pub fn number(
    fields: &Fields,
    key: &str,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<u64, ServiceError> {
    match fields.get(key).map(str::trim) {
        None | Some("") => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ServiceError::invalid_field(
                    key,
                    format!(
                        "The field '{key}' must be a whole number from {} to {}.",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    }
}

/// One of `choices`, or the first choice when absent or empty.
pub fn choice<'a>(
    fields: &Fields,
    key: &str,
    choices: &[&'a str],
) -> Result<&'a str, ServiceError> {
    let value = fields.get(key).map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok(choices[0]);
    }
    choices
        .iter()
        .find(|&&c| c == value)
        .copied()
        .ok_or_else(|| {
            ServiceError::invalid_field(
                key,
                format!("The field '{key}' must be one of: {}.", choices.join(", ")),
            )
        })
}

/// An optional URL path (`/health`): absolute, printable, at most 1024 bytes.
pub fn url_path(fields: &Fields, key: &str) -> Result<Option<String>, ServiceError> {
    let value = fields.get(key).map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok(None);
    }
    let valid = value.starts_with('/')
        && value.len() <= 1024
        && value.bytes().all(|b| b.is_ascii_graphic())
        && value.parse::<http::uri::PathAndQuery>().is_ok();
    if !valid {
        return Err(ServiceError::invalid_field(
            key,
            format!("The field '{key}' must be a URL path starting with '/'."),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// Every value of a repeatable field, also split at commas, trimmed, without empties.
pub fn list<'a>(fields: &'a Fields, key: &'a str) -> Vec<&'a str> {
    fields
        .get_all(key)
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

/// A type's configuration as the JSON Herve persists.
pub fn to_config(config: &impl Serialize) -> Result<Value, ServiceError> {
    serde_json::to_value(config).map_err(|e| ServiceError::failed(e.to_string()))
}

/// A type's configuration back from what Herve persisted.
pub fn from_config<T: DeserializeOwned>(config: &Value) -> Result<T, ServiceError> {
    T::deserialize(config)
        .map_err(|e| ServiceError::failed(format!("The stored configuration is invalid: {e}")))
}

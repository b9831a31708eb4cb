//! The fields of a registration (or of any form or JSON body), and typed readers for
//! them that answer a 400 naming the field when a value does not fit.

use std::ops::RangeInclusive;

use super::ServiceError;

/// The fields of a registration request, in the order the client sent them.
///
/// A key may appear several times (`upstream=a&upstream=b`): [`Fields::get`] returns
/// the last value, as the contract requires, and [`Fields::get_all`] every value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    /// Fields from `(key, value)` pairs, in order.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Fields {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every `(key, value)` pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The last value given for `key`, or a 400 naming the missing field.
    pub fn require(&self, key: &str) -> Result<&str, ServiceError> {
        match self.get(key) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(ServiceError::invalid_field(
                key,
                format!("The field '{key}' is required."),
            )),
        }
    }

    /// The value of `key`, trimmed; `None` when absent or empty.
    pub fn optional(&self, key: &str) -> Option<&str> {
        self.get(key)
            .map(str::trim)
            .filter(|value| !value.is_empty())
    }

    /// A whole number in `range`, or `default` when absent or empty.
    pub fn number(
        &self,
        key: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<u64, ServiceError> {
        match self.optional(key) {
            None => Ok(default),
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

    /// The value among `choices` (by their names) that `key` names, or the first
    /// choice when absent or empty.
    pub fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Result<T, ServiceError> {
        let Some(value) = self.optional(key) else {
            return choices
                .first()
                .map(|(_, choice)| *choice)
                .ok_or_else(|| ServiceError::failed("a choice without options"));
        };
        choices
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                ServiceError::invalid_field(
                    key,
                    format!("The field '{key}' must be one of: {}.", names.join(", ")),
                )
            })
    }

    /// `true` or `false` (the default when absent or empty).
    pub fn flag(&self, key: &str) -> Result<bool, ServiceError> {
        self.choice(key, &[("false", false), ("true", true)])
    }

    /// An optional URL path (`/health`): absolute, printable, at most 1024 bytes.
    pub fn url_path(&self, key: &str) -> Result<Option<String>, ServiceError> {
        let Some(value) = self.optional(key) else {
            return Ok(None);
        };
        let valid = value.starts_with('/')
            && value.len() <= 1024
            && value.bytes().all(|b| b.is_ascii_graphic())
            && value.parse::<::http::uri::PathAndQuery>().is_ok();
        if !valid {
            return Err(ServiceError::invalid_field(
                key,
                format!("The field '{key}' must be a URL path starting with '/'."),
            ));
        }
        Ok(Some(value.to_owned()))
    }

    /// Every value of a repeatable field, also split at commas, trimmed, without empties.
    pub fn list<'a>(&'a self, key: &'a str) -> Vec<&'a str> {
        self.get_all(key)
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_readers_name_the_field() {
        let fields = Fields::from_pairs([
            ("n", "7"),
            ("bad", "x"),
            ("mode", "fast"),
            ("path", "/ok"),
            ("list", "a, b"),
            ("list", "c"),
        ]);
        assert_eq!(fields.number("n", 1, 1..=10).ok(), Some(7));
        assert_eq!(fields.number("absent", 3, 1..=10).ok(), Some(3));
        let error = fields.number("bad", 1, 1..=10).expect_err("refused");
        assert!(error.to_string().contains("'bad'"));
        assert_eq!(
            fields.choice("mode", &[("slow", 1), ("fast", 2)]).ok(),
            Some(2)
        );
        assert_eq!(
            fields.choice("absent", &[("slow", 1), ("fast", 2)]).ok(),
            Some(1)
        );
        assert!(fields.choice("bad", &[("slow", 1)]).is_err());
        assert_eq!(fields.url_path("path").ok(), Some(Some("/ok".to_owned())));
        assert!(fields.url_path("bad").is_err());
        assert_eq!(fields.list("list"), ["a", "b", "c"]);
    }
}

//! A model's schema: its parsing from `name:type[:max][:required],...`, and the
//! checks every written instance passes, whether it came as a form or as JSON.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::contract::Fields;

/// Most fields in one schema.
const MAX_FIELDS: usize = 64;
/// Longest string a field may be declared to hold.
const MAX_STRING: u32 = 1_000_000;
/// Names the instances' own keys take.
const RESERVED: [&str; 3] = ["id", "created_at", "updated_at"];

/// The type of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    String,
    Int,
    Float,
    Bool,
}

/// One field of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FieldSpec {
    pub name: String,
    pub kind: Kind,
    /// For strings: the most characters.
    pub max_len: Option<u32>,
    pub required: bool,
}

/// What a models service keeps from its registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelsConfig {
    pub model: String,
    pub fields: Vec<FieldSpec>,
}

pub(super) fn identifier_ok(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    name.len() <= max
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `name:type[:max][:required],...`.
pub(crate) fn parse_schema(spec: &str) -> Result<Vec<FieldSpec>, String> {
    let mut fields: Vec<FieldSpec> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split(':').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if !identifier_ok(name, 64) {
            return Err(format!(
                "'{name}' is not a valid field name (letters, digits and '_')"
            ));
        }
        if RESERVED.contains(&name) {
            return Err(format!("'{name}' is set by Herve and cannot be a field"));
        }
        if fields.iter().any(|f| f.name == name) {
            return Err(format!("'{name}' is declared twice"));
        }
        let kind = match parts.next() {
            Some("string") => Kind::String,
            Some("int") => Kind::Int,
            Some("float") => Kind::Float,
            Some("bool") => Kind::Bool,
            Some(other) => {
                return Err(format!(
                    "'{name}' has the unknown type '{other}' (string, int, float, bool)"
                ))
            }
            None => return Err(format!("'{name}' has no type")),
        };
        let (mut max_len, mut required) = (None, false);
        for option in parts {
            if option == "required" && !required {
                required = true;
            } else if kind == Kind::String && max_len.is_none() && option.parse::<u32>().is_ok() {
                let max: u32 = option.parse().unwrap_or(0);
                if max == 0 || max > MAX_STRING {
                    return Err(format!(
                        "'{name}' must have a length from 1 to {MAX_STRING}"
                    ));
                }
                max_len = Some(max);
            } else {
                return Err(format!("'{name}' has the unknown option '{option}'"));
            }
        }
        if kind == Kind::String && max_len.is_none() {
            max_len = Some(255);
        }
        fields.push(FieldSpec {
            name: name.to_owned(),
            kind,
            max_len,
            required,
        });
    }
    if fields.is_empty() {
        return Err("it declares no field".to_owned());
    }
    if fields.len() > MAX_FIELDS {
        return Err(format!("it declares more than {MAX_FIELDS} fields"));
    }
    Ok(fields)
}

/// How a write treats the fields it is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// All required fields must be given; the others become null.
    Whole,
    /// Only the given fields change.
    Partial,
}

/// Why a body does not make an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Unknown fields, a missing required one, a body that is not an object:
    /// `<model> model: unable to process this content`.
    Unprocessable,
    /// A value of the wrong type or too long: the field and what it must be.
    Invalid { field: String, must: String },
}

impl ModelsConfig {
    /// The instance values a form body gives: each value converted to its field's
    /// type first, so that forms and JSON pass the same checks.
    pub fn form_values(
        &self,
        fields: &Fields,
        write: Write,
    ) -> Result<Map<String, Value>, Rejection> {
        let mut given = Map::new();
        for (key, raw) in fields.iter() {
            let spec = self.spec(key).ok_or(Rejection::Unprocessable)?;
            given.insert(key.to_owned(), spec.value_of_form(raw)?);
        }
        self.checked(given, write)
    }

    /// The instance values a JSON body gives: values must already have their field's
    /// JSON type (`"36"` is not an int).
    pub fn json_values(&self, body: &[u8], write: Write) -> Result<Map<String, Value>, Rejection> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(given)) => self.checked(given, write),
            _ => Err(Rejection::Unprocessable),
        }
    }

    fn spec(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|spec| spec.name == name)
    }

    /// The one check of given values against the schema.
    fn checked(
        &self,
        mut given: Map<String, Value>,
        write: Write,
    ) -> Result<Map<String, Value>, Rejection> {
        if given.keys().any(|key| self.spec(key).is_none()) {
            return Err(Rejection::Unprocessable);
        }
        let mut values = Map::new();
        for spec in &self.fields {
            let value = match given.remove(&spec.name) {
                None if write == Write::Partial => continue,
                None => Value::Null,
                Some(value) => value,
            };
            spec.check(&value)?;
            values.insert(spec.name.clone(), value);
        }
        Ok(values)
    }
}

impl FieldSpec {
    /// A form value as the JSON value of this field's type; empty is null for
    /// everything but strings.
    fn value_of_form(&self, raw: &str) -> Result<Value, Rejection> {
        if raw.is_empty() && self.kind != Kind::String {
            return Ok(Value::Null);
        }
        let text = raw.trim();
        let value = match self.kind {
            Kind::String => Some(Value::String(raw.to_owned())),
            Kind::Int => text.parse::<i64>().ok().map(Value::from),
            Kind::Float => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            Kind::Bool => match text {
                "1" => Some(Value::Bool(true)),
                "0" => Some(Value::Bool(false)),
                _ if text.eq_ignore_ascii_case("true") => Some(Value::Bool(true)),
                _ if text.eq_ignore_ascii_case("false") => Some(Value::Bool(false)),
                _ => None,
            },
        };
        value.ok_or_else(|| self.invalid())
    }

    /// Whether `value` fits: its type, its length, and present when required (an
    /// empty string does not fill a required field).
    fn check(&self, value: &Value) -> Result<(), Rejection> {
        let fits = match (self.kind, value) {
            (_, Value::Null) => {
                return if self.required {
                    Err(Rejection::Unprocessable)
                } else {
                    Ok(())
                }
            }
            (Kind::String, Value::String(_)) => true,
            (Kind::Int, Value::Number(n)) => n.is_i64(),
            (Kind::Float, Value::Number(_)) | (Kind::Bool, Value::Bool(_)) => true,
            _ => false,
        };
        if !fits {
            return Err(self.invalid());
        }
        if let Value::String(text) = value {
            let max = self.max_len.unwrap_or(MAX_STRING);
            if text.chars().count() > max as usize {
                return Err(Rejection::Invalid {
                    field: self.name.clone(),
                    must: format!("must be at most {max} characters"),
                });
            }
            if text.is_empty() && self.required {
                return Err(Rejection::Unprocessable);
            }
        }
        Ok(())
    }

    fn invalid(&self) -> Rejection {
        let must = match self.kind {
            Kind::String => "must be a string",
            Kind::Int => "must be a whole number",
            Kind::Float => "must be a number",
            Kind::Bool => "must be true or false",
        };
        Rejection::Invalid {
            field: self.name.clone(),
            must: must.to_owned(),
        }
    }
}

/// An instance as clients see it: `id`, `created_at`, `updated_at`, then the fields
/// in schema order.
pub(crate) struct Instance<'a> {
    pub id: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub values: Map<String, Value>,
    pub schema: &'a [FieldSpec],
}

impl Serialize for Instance<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3 + self.schema.len()))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("created_at", &self.created_at)?;
        map.serialize_entry("updated_at", &self.updated_at)?;
        for field in self.schema {
            map.serialize_entry(
                &field.name,
                self.values.get(&field.name).unwrap_or(&Value::Null),
            )?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas() {
        let schema = parse_schema(
            "username:string:32:required,password:string:128:required,age:int,active:bool",
        )
        .expect("valid");
        assert_eq!(schema.len(), 4);
        assert_eq!(schema[0].max_len, Some(32));
        assert!(schema[0].required);
        assert_eq!(schema[2].kind, Kind::Int);
        assert!(!schema[3].required);
        assert_eq!(
            parse_schema("note:string").expect("valid")[0].max_len,
            Some(255)
        );
        for bad in [
            "",
            "a",
            "a:text",
            "id:int",
            "a:int,a:bool",
            "a:int:32",
            "a:string:0",
            "a:string:required:required",
            "1a:int",
            "a b:int",
        ] {
            assert!(parse_schema(bad).is_err(), "{bad:?} accepted");
        }
    }
}

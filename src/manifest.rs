//! `herve.toml`: the services of a Herve, declared in a file.
//!
//! ```toml
//! [[service]]
//! name = "api"
//! type = "process"
//! state = "running"          # or "stopped"; running if left out
//! command = "python3 app.py"
//! hosts = ["api.example.com"]
//! env = ["MODE=prod", "WORKERS=2"]
//! replicas = 2
//! ```
//!
//! Each `[[service]]` table has a `name`, a `type`, an optional `state`, and the
//! service's fields (`description`, `hosts`, `path` and the type's own). A field given
//! several times in a registration is a list here; numbers and booleans are taken as
//! their text. The file becomes the desired state that `POST /services/apply` takes;
//! problems found here or by the server are shown with their line.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};
use toml::Spanned;

/// A parsed `herve.toml`.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    services: Vec<Declared>,
}

#[derive(Debug, Clone)]
struct Declared {
    name: String,
    type_name: String,
    state: String,
    fields: BTreeMap<String, Value>,
    /// The line of the `[[service]]` table.
    line: usize,
    /// The line of each key.
    lines: BTreeMap<String, usize>,
}

/// Something wrong with a file, at a line (1-based; 0 when the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Where it is.
    pub line: usize,
    /// What it is.
    pub message: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

/// The line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Manifest {
    /// Reads a `herve.toml`: every problem, each with its line, or the manifest.
    pub fn parse(text: &str) -> Result<Manifest, Vec<FileProblem>> {
        let file: File = toml::from_str(text).map_err(|error| {
            let line = error.span().map_or(0, |span| line_at(text, span.start));
            vec![FileProblem {
                line,
                message: error.message().trim().to_owned(),
            }]
        })?;
        let mut problems = Vec::new();
        let mut services = Vec::new();
        for table in file.service {
            let line = line_at(text, table.span().start);
            let mut declared = Declared {
                name: String::new(),
                type_name: String::new(),
                state: "running".to_owned(),
                fields: BTreeMap::new(),
                line,
                lines: BTreeMap::new(),
            };
            for (key, value) in table.into_inner() {
                let key_line = line_at(text, key.span().start);
                let key = key.into_inner();
                declared.lines.insert(key.clone(), key_line);
                let mut problem = |message: String| {
                    problems.push(FileProblem {
                        line: key_line,
                        message,
                    })
                };
                let value = value.into_inner();
                match key.as_str() {
                    "name" | "type" | "state" => {
                        let Some(text) = value.as_str() else {
                            problem(format!("'{key}' must be a string."));
                            continue;
                        };
                        match key.as_str() {
                            "name" => declared.name = text.to_owned(),
                            "type" => declared.type_name = text.to_owned(),
                            _ if matches!(text, "running" | "stopped") => {
                                declared.state = text.to_owned()
                            }
                            _ => problem(format!(
                                "'state' must be \"running\" or \"stopped\", not \"{text}\"."
                            )),
                        }
                    }
                    _ => match field_value(&value) {
                        Some(value) => {
                            declared.fields.insert(key, value);
                        }
                        None => problem(format!(
                            "'{key}' must be a string, a whole number, a boolean, or a list of them."
                        )),
                    },
                }
            }
            for key in ["name", "type"] {
                if !declared.lines.contains_key(key) {
                    problems.push(FileProblem {
                        line,
                        message: format!("This service has no '{key}'."),
                    });
                }
            }
            services.push(declared);
        }
        if problems.is_empty() {
            Ok(Manifest { services })
        } else {
            problems.sort_by_key(|problem| problem.line);
            Err(problems)
        }
    }

    /// The desired state `POST /services/apply` takes.
    pub fn desired_state(&self, prune: bool, dry_run: bool) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|service| {
                json!({
                    "name": service.name,
                    "type": service.type_name,
                    "state": service.state,
                    "fields": service.fields,
                })
            })
            .collect();
        json!({ "services": services, "prune": prune, "dry_run": dry_run })
    }

    /// The line of service `index`'s `field`, or of its table.
    pub fn line_of(&self, index: usize, field: Option<&str>) -> usize {
        let Some(service) = self.services.get(index) else {
            return 0;
        };
        field
            .and_then(|field| service.lines.get(field))
            .copied()
            .unwrap_or(service.line)
    }

    /// How many services the file declares.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the file declares no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// A field's value as the API takes it.
fn field_value(value: &toml::Value) -> Option<Value> {
    match value {
        toml::Value::String(text) => Some(Value::String(text.clone())),
        toml::Value::Integer(number) => Some(json!(number)),
        toml::Value::Boolean(flag) => Some(json!(flag)),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) => None,
                single => field_value(single),
            })
            .collect::<Option<Vec<Value>>>()
            .map(Value::Array),
        toml::Value::Float(_) | toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// `herve.toml` text for the services of a desired state (as `GET /services/apply`
/// gives it): applied, it changes nothing.
pub fn render(services: &[Value]) -> String {
    let mut out = String::from(
        "# The services of a Herve: `herve apply -f` this file to make a Herve match it.\n",
    );
    for service in services {
        out.push_str("\n[[service]]\n");
        let mut table = toml::Table::new();
        for key in ["name", "type", "state"] {
            if let Some(text) = service.get(key).and_then(Value::as_str) {
                table.insert(key.to_owned(), toml::Value::String(text.to_owned()));
            }
        }
        // `name`, `type` and `state` first, then the fields by name.
        out.push_str(&table_text(&table));
        let mut fields = toml::Table::new();
        if let Some(given) = service.get("fields").and_then(Value::as_object) {
            for (key, value) in given {
                fields.insert(key.clone(), toml_value(value));
            }
        }
        out.push_str(&table_text(&fields));
    }
    out
}

fn table_text(table: &toml::Table) -> String {
    let order = ["name", "type", "state"];
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort_by_key(|key| {
        (
            order
                .iter()
                .position(|first| first == key)
                .unwrap_or(order.len()),
            (*key).clone(),
        )
    });
    let mut out = String::new();
    for key in keys {
        let mut one = toml::Table::new();
        one.insert(key.clone(), table[key].clone());
        out.push_str(&toml::to_string(&one).unwrap_or_default());
    }
    out
}

/// A stored field as TOML: text that reads back as the same number or boolean is
/// written as one, for the reader; anything else stays a string.
fn toml_value(value: &Value) -> toml::Value {
    match value {
        Value::String(text) => {
            if let Ok(number) = text.parse::<i64>() {
                if number.to_string() == *text {
                    return toml::Value::Integer(number);
                }
            }
            match text.as_str() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => toml::Value::String(text.clone()),
            }
        }
        Value::Array(items) => toml::Value::Array(items.iter().map(toml_value).collect()),
        Value::Number(number) => number.as_i64().map_or_else(
            || toml::Value::String(number.to_string()),
            toml::Value::Integer,
        ),
        Value::Bool(flag) => toml::Value::Boolean(*flag),
        other => toml::Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_has_its_line() {
        let text = r#"
[[service]]
name = "a"
type = "process"
state = "paused"

[[service]]
type = "echo"
weight = 1.5
"#;
        let problems = Manifest::parse(text).expect_err("refused");
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [5, 7, 9], "{problems:?}");
        let syntax = Manifest::parse("[[service]]\nname = \n").expect_err("refused");
        assert_eq!(syntax[0].line, 2, "{syntax:?}");
        let unknown = Manifest::parse("[services]\n").expect_err("refused");
        assert_eq!(unknown.len(), 1);
    }

    #[test]
    fn rendered_files_parse_back_the_same() {
        let services = vec![json!({
            "name": "api", "type": "process", "state": "stopped",
            "fields": {"command": "python3 -m http.server", "replicas": "2", "env": ["A=1", "B=\"x\""],
                       "port_like": "007", "flag": "true"}
        })];
        let text = render(&services);
        let manifest = Manifest::parse(&text).expect("parses");
        let state = manifest.desired_state(false, false);
        let fields = &state["services"][0]["fields"];
        assert_eq!(fields["replicas"], json!(2));
        assert_eq!(fields["port_like"], json!("007"));
        assert_eq!(fields["env"], json!(["A=1", "B=\"x\""]));
        assert_eq!(state["services"][0]["state"], "stopped");
        assert_eq!(manifest.line_of(0, Some("command")), 7, "{text}");
    }
}

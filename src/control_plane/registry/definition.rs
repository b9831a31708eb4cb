//! What a user defines of a service besides its name and type, and Herve checks itself
//! whatever the type: a description, the service's routes (host names and a path
//! prefix), and the fields given to its type (kept, so that an edit is checked as a
//! registration of them with the edit's fields over them).

use serde_json::Value;
use uuid::Uuid;

use super::RegistryError;
use crate::contract::{FieldSpec, Fields};
use crate::control_plane::store::ServiceRecord;
use crate::data_plane::{parse_path_prefix, HostPattern, MiddlewareSpec};

/// Most host names one service may have.
const MAX_HOSTS: usize = 64;
/// Longest user description, in characters.
const MAX_DESCRIPTION: usize = 200;
/// The fields that are Herve's, not the type's.
const HERVES: [&str; 2] = ["name", "type"];

/// A service as its user defined it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Definition {
    /// Shown instead of the type's description.
    pub description: Option<String>,
    pub hosts: Vec<HostPattern>,
    /// The path prefix (`/` for everything); `None` without hosts and path.
    pub path: Option<String>,
    /// What guards and shapes its traffic.
    pub middlewares: MiddlewareSpec,
    /// In a cluster, the node a program must run on (`node`).
    pub node: Option<String>,
    /// The fields as given, but `name` and `type`.
    pub fields: Fields,
    /// What the type made of them.
    pub config: Value,
}

/// The fields Herve reads itself, whatever the type (`GET /services/types` lists them
/// beside each type's own).
pub(crate) const COMMON_FIELDS: [FieldSpec; 17] = [
    FieldSpec::optional(
        "description",
        "Shown instead of the type's description (one line, at most 200 characters).",
    ),
    FieldSpec::optional(
        "hosts",
        "Host names the service answers for, comma-separated (app.example.com, *.example.com).",
    ),
    FieldSpec::optional(
        "path",
        "A path prefix the service answers under (/api), on its hosts or on every host.",
    ),
    FieldSpec::optional(
        "protect",
        "auth:<service> (bearer tokens of that auth service) or basic (basic_users).",
    ),
    FieldSpec::optional(
        "basic_users",
        "user:hash lines (bcrypt or argon2) for protect=basic.",
    ),
    FieldSpec::optional(
        "rate_limit",
        "Requests per client: N/s, N/min or N/h (429 beyond).",
    ),
    FieldSpec::optional(
        "burst",
        "Requests at once under rate_limit (default: its N).",
    ),
    FieldSpec::optional(
        "cors_origins",
        "Origins allowed by CORS, comma-separated (* for any).",
    ),
    FieldSpec::optional(
        "cors_methods",
        "Methods allowed by CORS (default GET, HEAD, POST).",
    ),
    FieldSpec::optional("cors_headers", "Request headers allowed by CORS."),
    FieldSpec::optional(
        "cors_credentials",
        "true to allow credentials (not with cors_origins=*).",
    ),
    FieldSpec::optional(
        "cors_max_age",
        "Seconds a browser may keep a preflight's answer.",
    ),
    FieldSpec::optional("compress", "true: gzip or brotli by Accept-Encoding."),
    FieldSpec::optional(
        "request_headers",
        "Rules, one a line: Name: value sets, -Name removes (before the service).",
    ),
    FieldSpec::optional(
        "response_headers",
        "Rules, one a line: Name: value sets, -Name removes (on its answers).",
    ),
    FieldSpec::optional(
        "max_body_bytes",
        "A request body limit for this service, in bytes (413 beyond).",
    ),
    FieldSpec::optional(
        "node",
        "With several nodes: the node a process service runs on (process only).",
    ),
];

/// The generic part of a definition, read from a registration's or an edit's fields.
pub(crate) struct Generic {
    pub description: Option<String>,
    pub hosts: Vec<HostPattern>,
    pub path: Option<String>,
    pub middlewares: MiddlewareSpec,
    pub node: Option<String>,
}

impl Generic {
    /// Reads and checks `description`, `hosts`, `path` and the middlewares: a 400 names
    /// the field.
    pub fn read(fields: &Fields) -> Result<Generic, RegistryError> {
        let invalid = |field: &str, message: String| RegistryError::InvalidField {
            field: field.to_owned(),
            message,
        };
        let description = match fields.optional("description") {
            None => None,
            Some(text) => {
                if text.chars().count() > MAX_DESCRIPTION || text.chars().any(char::is_control) {
                    return Err(invalid(
                        "description",
                        format!(
                            "The field 'description' must be at most {MAX_DESCRIPTION} characters, on one line."
                        ),
                    ));
                }
                Some(text.to_owned())
            }
        };
        let mut hosts: Vec<HostPattern> = Vec::new();
        for text in fields.list("hosts") {
            let host = HostPattern::parse(text)
                .map_err(|why| invalid("hosts", format!("The field 'hosts' is invalid: {why}.")))?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        if hosts.len() > MAX_HOSTS {
            return Err(invalid(
                "hosts",
                format!("The field 'hosts' may name at most {MAX_HOSTS} hosts."),
            ));
        }
        let path = fields
            .optional("path")
            .map(parse_path_prefix)
            .transpose()
            .map_err(|why| invalid("path", format!("The field 'path' is invalid: {why}.")))?;
        // Host names alone serve every path of theirs.
        let path = path.or_else(|| (!hosts.is_empty()).then(|| "/".to_owned()));
        let middlewares =
            MiddlewareSpec::read(fields).map_err(|error| invalid(error.field, error.message))?;
        let node = read_node(fields).map_err(|message| invalid("node", message))?;
        Ok(Generic {
            description,
            hosts,
            path,
            middlewares,
            node,
        })
    }
}

impl Definition {
    /// The definition a stored record keeps, and what is wrong with it. Hosts that no
    /// longer parse are dropped (and said so): the service stays reachable by uuid and
    /// name. Middlewares that no longer parse make the record corrupt: a service that
    /// was protected must not start unprotected.
    pub fn stored(record: &ServiceRecord) -> (Definition, Option<String>) {
        let hosts = record
            .hosts
            .iter()
            .filter_map(|host| match HostPattern::parse(host) {
                Ok(host) => Some(host),
                Err(why) => {
                    tracing::error!(uuid = %record.uuid, %why, "a stored host of a service is invalid; it is dropped");
                    None
                }
            })
            .collect();
        let fields = Fields::from_pairs(record.fields.clone());
        let (middlewares, mut problem) = match MiddlewareSpec::read(&fields) {
            Ok(middlewares) => (middlewares, None),
            Err(error) => (MiddlewareSpec::default(), Some(error.message)),
        };
        let node = read_node(&fields).unwrap_or_else(|message| {
            problem.get_or_insert(message);
            None
        });
        let definition = Definition {
            description: record.user_description.clone(),
            hosts,
            path: record.path.clone(),
            middlewares,
            node,
            fields,
            config: record.config.clone(),
        };
        (definition, problem)
    }

    /// The definition made of `generic`, the fields given and the type's configuration.
    /// What the store keeps of this definition; the rest of the record (who the service
    /// is, where it is in its life) is the caller's.
    pub fn record(&self) -> ServiceRecord {
        ServiceRecord {
            config: self.config.clone(),
            user_description: self.description.clone(),
            hosts: self.hosts.iter().map(HostPattern::to_string).collect(),
            path: self.path.clone(),
            fields: self
                .fields
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..ServiceRecord::default()
        }
    }

    pub fn new(generic: Generic, fields: &Fields, config: Value) -> Definition {
        Definition {
            description: generic.description,
            hosts: generic.hosts,
            path: generic.path,
            middlewares: generic.middlewares,
            node: generic.node,
            fields: Fields::from_pairs(fields.iter().filter(|(key, _)| !HERVES.contains(key))),
            config,
        }
    }

    /// The (host, path) pairs this service claims: no two services may claim the same.
    /// A path without hosts claims it on every host (`""`).
    pub fn claims(&self) -> Vec<Claim> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        if self.hosts.is_empty() {
            return vec![Claim {
                host: String::new(),
                path: path.clone(),
            }];
        }
        self.hosts
            .iter()
            .map(|host| Claim {
                host: host.to_string(),
                path: path.clone(),
            })
            .collect()
    }
}

/// The `node` field: a node name (1 to 63 letters, digits, `.`, `_`, `-`), if given.
fn read_node(fields: &Fields) -> Result<Option<String>, String> {
    let Some(node) = fields.optional("node") else {
        return Ok(None);
    };
    let valid = node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid || node.is_empty() {
        return Err(
            "The field 'node' must be a node name: 1 to 63 letters, digits, '.', '_' or '-'."
                .to_owned(),
        );
    }
    Ok(Some(node.to_owned()))
}

/// One route a service claims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Claim {
    pub host: String,
    pub path: String,
}

impl Claim {
    /// The route as a user writes it: `app.example.com/api`, or `/api` on every host.
    pub fn describe(&self) -> String {
        if self.host.is_empty() {
            self.path.clone()
        } else if self.path == "/" {
            self.host.clone()
        } else {
            format!("{}{}", self.host, self.path)
        }
    }
}

/// An edit's fields over the stored ones: each key the edit names replaces every value
/// the stored fields had for it.
pub(crate) fn merged(stored: &Fields, edit: &Fields) -> Fields {
    let edited: Vec<&str> = edit.iter().map(|(key, _)| key).collect();
    Fields::from_pairs(
        stored
            .iter()
            .filter(|(key, _)| !edited.contains(key))
            .chain(edit.iter()),
    )
}

/// Refuses a name the data plane could not route unambiguously.
pub(crate) fn check_routable_name(name: &str) -> Result<(), RegistryError> {
    let invalid = |message: String| RegistryError::InvalidField {
        field: "name".to_owned(),
        message,
    };
    if crate::data_plane::OWN_PATHS.contains(&name) {
        return Err(invalid(format!(
            "The name '{name}' is one of Herve's own paths; choose another."
        )));
    }
    if Uuid::try_parse(name).is_ok() {
        return Err(invalid(
            "The field 'name' must not be a uuid: services are reached by both.".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_replaces_whole_keys() {
        let stored = Fields::from_pairs([("upstream", "a"), ("upstream", "b"), ("weight", "1")]);
        let edit = Fields::from_pairs([("upstream", "c")]);
        let merged = merged(&stored, &edit);
        assert_eq!(merged.get_all("upstream").collect::<Vec<_>>(), ["c"]);
        assert_eq!(merged.get("weight"), Some("1"));
    }

    #[test]
    fn generic_fields_are_checked() {
        let ok = Generic::read(&Fields::from_pairs([
            ("hosts", "App.example.com, *.example.org"),
            ("path", "/api/"),
        ]))
        .expect("valid");
        assert_eq!(ok.hosts.len(), 2);
        assert_eq!(ok.path.as_deref(), Some("/api"));
        let hosts_only = Generic::read(&Fields::from_pairs([("hosts", "a.test")])).expect("valid");
        assert_eq!(hosts_only.path.as_deref(), Some("/"));
        for (key, value) in [("hosts", "a b"), ("path", "api"), ("description", "a\nb")] {
            let error = Generic::read(&Fields::from_pairs([(key, value)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains(&format!("'{key}'")),
                "{key}={value:?}: {error}"
            );
        }
        assert!(check_routable_name("services").is_err());
        assert!(check_routable_name("3f2b8c1e-5d4a-4e7b-9c2d-8a1f0e6b7c93").is_err());
        assert!(check_routable_name("shop").is_ok());
    }
}

//! Applying a whole desired state at once (`POST /services/apply`), and exporting the
//! current one (`GET /services/apply`).
//!
//! The desired state lists services by name, each with its type, whether it should
//! run, and its fields. Everything in it is checked first, as registrations and edits
//! would be, and every problem is reported together; nothing changes unless there is
//! none. Then the plan is carried out: deletes (with `prune`), stops, updates and
//! creations, starts. The registry's gate is held whole from the check to the last
//! change, so no other API call sees or makes a change in between.
//!
//! A service whose fields are unchanged is not touched; one whose fields changed is
//! redefined as an edit would (only what changed is restarted, beside the old
//! instance when the type allows). Applying the same state twice changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::definition::{Claim, Definition, Generic};
use super::{validate_name, Registry, RegistryError, Slot, Status};
use crate::contract::{Fields, ServiceError, StatusReporter};

/// The most services one desired state may list.
pub(crate) const MAX_DESIRED: usize = 10_000;

/// What `POST /services/apply` takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DesiredState {
    #[serde(default)]
    pub services: Vec<DesiredService>,
    /// Delete the services the state does not list.
    #[serde(default)]
    pub prune: bool,
    /// Only say what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// One service as it should be.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DesiredService {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub state: RunState,
    /// Every field but `name` and `type`: a string (a number or a boolean is taken as
    /// its text) or a list of them, for a field given several times.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

/// Whether a service should run.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RunState {
    #[default]
    Running,
    Stopped,
}

/// One thing wrong with a desired state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Problem {
    /// The position of the service in the list; `None` for the state as a whole.
    pub index: Option<usize>,
    pub name: String,
    /// The field at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// What a change does.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    Create,
    Update,
    Start,
    Stop,
    Delete,
}

/// One change of a plan, and once carried out, how it went.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Change {
    pub action: Action,
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// The service's uuid (for a creation, once it is done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// For an update: the fields that change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Whether it was carried out (absent in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A desired service, checked.
struct Checked {
    index: usize,
    desired: DesiredService,
    fields: Fields,
    existing: Option<Arc<Slot>>,
    claims: Vec<Claim>,
}

impl Registry {
    /// Checks `desired` whole, then (unless it is a dry run) makes the registry match
    /// it. The changes, each with how it went; `Plan` with every problem when the
    /// state is refused, before anything changed.
    pub async fn apply(&self, desired: DesiredState) -> Result<Vec<Change>, RegistryError> {
        let _whole = self.gate.write().await;
        let mut problems = Vec::new();
        if desired.services.len() > MAX_DESIRED {
            return Err(RegistryError::Plan(vec![Problem {
                index: None,
                name: String::new(),
                field: None,
                message: format!("A desired state may list at most {MAX_DESIRED} services."),
            }]));
        }
        let mut existing: Vec<Arc<Slot>> = lock_services(self).by_uuid.values().cloned().collect();
        existing.sort_by_key(|slot| slot.seq);
        let by_name: HashMap<&str, &Arc<Slot>> = existing
            .iter()
            .map(|slot| (slot.name.as_str(), slot))
            .collect();

        let mut checked = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, service) in desired.services.iter().enumerate() {
            let mut problem = |field: Option<&str>, message: String| {
                problems.push(Problem {
                    index: Some(index),
                    name: service.name.clone(),
                    field: field.map(str::to_owned),
                    message,
                });
            };
            if let Err(error) = validate_name(&service.name) {
                problem(Some("name"), error.to_string());
                continue;
            }
            if let Some(first) = seen.insert(service.name.as_str(), index) {
                problem(
                    Some("name"),
                    format!(
                        "The service '{}' is listed twice (first at position {}).",
                        service.name,
                        first + 1
                    ),
                );
                continue;
            }
            let Some(service_type) = self.types.get(&service.type_name).cloned() else {
                problem(
                    Some("type"),
                    format!("The service type '{}' does not exist.", service.type_name),
                );
                continue;
            };
            let slot = by_name
                .get(service.name.as_str())
                .map(|slot| Arc::clone(slot));
            if let Some(slot) = &slot {
                if slot.type_name != service.type_name {
                    problem(
                        Some("type"),
                        format!(
                            "The service '{}' is of type '{}'; a type cannot be changed (remove the service first, or choose another name).",
                            service.name, slot.type_name
                        ),
                    );
                    continue;
                }
            }
            let fields = match to_fields(&service.fields) {
                Ok(fields) => fields,
                Err((field, message)) => {
                    problem(Some(&field), message);
                    continue;
                }
            };
            let generic = match Generic::read(&fields) {
                Ok(generic) => generic,
                Err(error) => {
                    problem(field_of(&error), error.to_string());
                    continue;
                }
            };
            if let Some(slot) = &slot {
                if let Some(corruption) = &slot.corrupt {
                    if !same_fields(&slot.definition().fields, &fields) {
                        problem(None, RegistryError::Corrupt(corruption.clone()).to_string());
                        continue;
                    }
                }
            }
            // A new service is checked under the uuid it would not keep: a register
            // hook only checks and shapes the fields.
            let uuid = slot.as_ref().map_or_else(Uuid::new_v4, |slot| slot.uuid);
            let ctx = self.context(uuid, &service.name, StatusReporter::detached());
            let config = match service_type.register(&ctx, &fields).await {
                Ok(config) => config,
                Err(error) => {
                    let error = RegistryError::from(error);
                    problem(field_of(&error), error.to_string());
                    continue;
                }
            };
            let claims = Definition::new(generic, &fields, config).claims();
            checked.push(Checked {
                index,
                desired: service.clone(),
                fields,
                existing: slot,
                claims,
            });
        }

        // The routes as they will be: those of the services kept as they are, then
        // those of the desired state.
        let listed: HashSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
        let kept: Vec<&Arc<Slot>> = existing
            .iter()
            .filter(|slot| !listed.contains(slot.name.as_str()))
            .collect();
        let mut routes: HashMap<Claim, String> = HashMap::new();
        if !desired.prune {
            for slot in &kept {
                for claim in slot.definition().claims() {
                    routes.insert(claim, slot.name.clone());
                }
            }
        }
        for service in &checked {
            for claim in &service.claims {
                match routes.get(claim) {
                    Some(owner) if *owner != service.desired.name => {
                        let field = if claim.host.is_empty() {
                            "path"
                        } else {
                            "hosts"
                        };
                        problems.push(Problem {
                            index: Some(service.index),
                            name: service.desired.name.clone(),
                            field: Some(field.to_owned()),
                            message: RegistryError::RouteTaken {
                                route: claim.describe(),
                                owner: owner.clone(),
                            }
                            .to_string(),
                        });
                    }
                    _ => {
                        routes.insert(claim.clone(), service.desired.name.clone());
                    }
                }
            }
        }
        let total = desired.services.len() + if desired.prune { 0 } else { kept.len() };
        if total > self.max_services {
            problems.push(Problem {
                index: None,
                name: String::new(),
                field: None,
                message: RegistryError::TooMany(self.max_services).to_string(),
            });
        }
        if !problems.is_empty() {
            problems.sort_by_key(|problem| problem.index);
            return Err(RegistryError::Plan(problems));
        }

        let mut plan = Vec::new();
        if desired.prune {
            for slot in &kept {
                plan.push(change(
                    Action::Delete,
                    &slot.name,
                    &slot.type_name,
                    Some(slot.uuid),
                ));
            }
        }
        for service in &checked {
            let name = &service.desired.name;
            let type_name = &service.desired.type_name;
            let wants_running = service.desired.state == RunState::Running;
            match &service.existing {
                None => {
                    plan.push(change(Action::Create, name, type_name, None));
                    if wants_running {
                        plan.push(change(Action::Start, name, type_name, None));
                    }
                }
                Some(slot) => {
                    let uuid = Some(slot.uuid);
                    let status = slot.status();
                    let runs = matches!(status, Status::Running | Status::Starting);
                    if !wants_running && (runs || status == Status::Failed) {
                        plan.push(change(Action::Stop, name, type_name, uuid));
                    }
                    let keys = changed_keys(&slot.definition().fields, &service.fields);
                    if !keys.is_empty() {
                        let mut update = change(Action::Update, name, type_name, uuid);
                        update.keys = keys;
                        plan.push(update);
                    }
                    if wants_running && !runs {
                        plan.push(change(Action::Start, name, type_name, uuid));
                    }
                }
            }
        }
        // Carried out by kind, whatever the order of the list: room is made first.
        plan.sort_by_key(|change| match change.action {
            Action::Delete => 0,
            Action::Stop => 1,
            Action::Update | Action::Create => 2,
            Action::Start => 3,
        });
        if desired.dry_run {
            return Ok(plan);
        }
        let fields: HashMap<&str, &Fields> = checked
            .iter()
            .map(|service| (service.desired.name.as_str(), &service.fields))
            .collect();
        self.carry_out(&mut plan, &fields).await;
        Ok(plan)
    }

    /// Carries out `plan` in order; a change that fails is marked so and the others go
    /// on. Updates and creations that need a route another one frees are tried again
    /// once it is.
    async fn carry_out(&self, plan: &mut [Change], fields: &HashMap<&str, &Fields>) {
        let mut pending: Vec<usize> = Vec::new();
        for at in 0..plan.len() {
            match plan[at].action {
                Action::Delete => {
                    let outcome = match plan[at].uuid {
                        Some(uuid) => self.delete(uuid).await,
                        None => Err(RegistryError::NotFound),
                    };
                    record(&mut plan[at], outcome);
                }
                Action::Stop => {
                    let outcome = match plan[at].uuid {
                        Some(uuid) => self.stop_unguarded(uuid).await.map(|_| ()),
                        None => Err(RegistryError::NotFound),
                    };
                    record(&mut plan[at], outcome);
                }
                Action::Update | Action::Create => pending.push(at),
                Action::Start => {
                    // The routes of every definition first.
                    self.define(plan, &mut pending, fields).await;
                    let name = plan[at].name.clone();
                    let uuid = plan
                        .iter()
                        .find(|change| change.name == name && change.uuid.is_some())
                        .and_then(|change| change.uuid);
                    plan[at].uuid = uuid;
                    let outcome = match uuid {
                        Some(uuid) => self.start_unguarded(uuid).await,
                        None => Err(RegistryError::Hook(ServiceError::failed(
                            "The service could not be created.",
                        ))),
                    };
                    record(&mut plan[at], outcome);
                }
            }
        }
        self.define(plan, &mut pending, fields).await;
    }

    /// Carries out the pending updates and creations, again and again while one of
    /// them succeeds: one may need a route another gives up, or be protected by an
    /// auth service another creates.
    async fn define(
        &self,
        plan: &mut [Change],
        pending: &mut Vec<usize>,
        fields: &HashMap<&str, &Fields>,
    ) {
        while !pending.is_empty() {
            let mut waiting = Vec::new();
            let mut progressed = false;
            let mut last_errors = Vec::new();
            for at in pending.drain(..) {
                let change = &plan[at];
                let Some(fields) = fields.get(change.name.as_str()) else {
                    continue;
                };
                let outcome = match change.action {
                    Action::Create => self
                        .create(&change.name, &change.type_name, fields)
                        .await
                        .map(Some),
                    _ => match change.uuid {
                        Some(uuid) => self.update(uuid, fields).await.map(|()| None),
                        None => Err(RegistryError::NotFound),
                    },
                };
                match outcome {
                    Ok(uuid) => {
                        if uuid.is_some() {
                            plan[at].uuid = uuid;
                        }
                        record(&mut plan[at], Ok(()));
                        progressed = true;
                    }
                    // A route another change frees, or an auth service another
                    // change creates: tried again once something else went through.
                    Err(
                        error @ (RegistryError::RouteTaken { .. }
                        | RegistryError::InvalidField { .. }),
                    ) if waits_for_another(&error) => {
                        waiting.push(at);
                        last_errors.push((at, error));
                    }
                    Err(error) => {
                        record(&mut plan[at], Err(error));
                        progressed = true;
                    }
                }
            }
            if !progressed {
                for (at, error) in last_errors {
                    record(&mut plan[at], Err(error));
                }
                return;
            }
            *pending = waiting;
        }
    }

    async fn create(
        &self,
        name: &str,
        type_name: &str,
        fields: &Fields,
    ) -> Result<Uuid, RegistryError> {
        let service_type = self
            .types
            .get(type_name)
            .cloned()
            .ok_or(RegistryError::UnknownType)?;
        let generic = Generic::read(fields)?;
        let view = self
            .register_unguarded(name, service_type, generic, fields)
            .await?;
        Ok(view.uuid)
    }

    async fn update(&self, uuid: Uuid, fields: &Fields) -> Result<(), RegistryError> {
        let (slot, mut life) = self.locked(uuid, false).await?;
        self.redefine(&slot, &mut life, fields).await.map(|_| ())
    }

    async fn delete(&self, uuid: Uuid) -> Result<(), RegistryError> {
        self.stop_unguarded(uuid).await?;
        self.unregister_unguarded(uuid).await.map(|_| ())
    }

    /// Starts a service; the caller holds the gate.
    pub(super) async fn start_unguarded(&self, uuid: Uuid) -> Result<(), RegistryError> {
        let (slot, mut life) = self.locked(uuid, false).await?;
        self.start_locked(&slot, &mut life).await
    }

    /// Every service as a desired state that applies back to itself, oldest first.
    pub fn export(&self) -> Vec<DesiredService> {
        let mut slots: Vec<Arc<Slot>> = lock_services(self).by_uuid.values().cloned().collect();
        slots.sort_by_key(|slot| slot.seq);
        slots
            .iter()
            .map(|slot| {
                let state = match slot.status() {
                    // A failed service was meant to run.
                    Status::Running | Status::Starting | Status::Failed => RunState::Running,
                    Status::Registered | Status::Stopped => RunState::Stopped,
                };
                let mut fields: BTreeMap<String, Value> = BTreeMap::new();
                for (key, values) in grouped(&slot.definition().fields) {
                    let value = match values.as_slice() {
                        [one] => Value::String((*one).to_owned()),
                        many => Value::Array(
                            many.iter()
                                .map(|v| Value::String((*v).to_owned()))
                                .collect(),
                        ),
                    };
                    fields.insert(key.to_owned(), value);
                }
                DesiredService {
                    name: slot.name.clone(),
                    type_name: slot.type_name.clone(),
                    state,
                    fields,
                }
            })
            .collect()
    }
}

fn lock_services(registry: &Registry) -> std::sync::MutexGuard<'_, super::Services> {
    crate::util::lock(&registry.services)
}

fn change(action: Action, name: &str, type_name: &str, uuid: Option<Uuid>) -> Change {
    Change {
        action,
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        uuid,
        keys: Vec::new(),
        done: None,
        error: None,
    }
}

fn record(change: &mut Change, outcome: Result<(), RegistryError>) {
    match outcome {
        Ok(()) => change.done = Some(true),
        Err(error) => {
            change.done = Some(false);
            change.error = Some(error.to_string());
        }
    }
}

/// The field an error names, if any.
fn field_of(error: &RegistryError) -> Option<&str> {
    match error {
        RegistryError::InvalidField { field, .. } => Some(field),
        _ => None,
    }
}

/// The fields of a desired service: each value as text, a list as the key repeated.
fn to_fields(given: &BTreeMap<String, Value>) -> Result<Fields, (String, String)> {
    let mut pairs = Vec::new();
    for (key, value) in given {
        if matches!(key.as_str(), "name" | "type" | "state") {
            return Err((
                key.clone(),
                format!("The field '{key}' is given beside the fields, not among them."),
            ));
        }
        let text = |value: &Value| match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        };
        let wrong = || {
            (
                key.clone(),
                format!(
                    "The field '{key}' must be a string, a number, a boolean, or a list of them."
                ),
            )
        };
        match value {
            Value::Array(items) => {
                for item in items {
                    pairs.push((key.clone(), text(item).ok_or_else(wrong)?));
                }
            }
            single => pairs.push((key.clone(), text(single).ok_or_else(wrong)?)),
        }
    }
    Ok(Fields::from_pairs(pairs))
}

/// Fields by key, each with its values in order.
fn grouped(fields: &Fields) -> BTreeMap<&str, Vec<&str>> {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, value) in fields.iter() {
        by_key.entry(key).or_default().push(value);
    }
    by_key
}

fn same_fields(a: &Fields, b: &Fields) -> bool {
    grouped(a) == grouped(b)
}

/// The keys whose values differ between `stored` and `desired`, in order.
fn changed_keys(stored: &Fields, desired: &Fields) -> Vec<String> {
    let (stored, desired) = (grouped(stored), grouped(desired));
    let keys: std::collections::BTreeSet<&str> =
        stored.keys().chain(desired.keys()).copied().collect();
    keys.into_iter()
        .filter(|key| stored.get(key) != desired.get(key))
        .map(str::to_owned)
        .collect()
}

/// Whether a change failed for want of another change of the same plan.
fn waits_for_another(error: &RegistryError) -> bool {
    match error {
        RegistryError::RouteTaken { .. } => true,
        RegistryError::InvalidField { field, .. } => field == "protect",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_compare_whole_keys() {
        let stored = Fields::from_pairs([("a", "1"), ("hosts", "x"), ("hosts", "y")]);
        let same = Fields::from_pairs([("hosts", "x"), ("a", "1"), ("hosts", "y")]);
        assert!(changed_keys(&stored, &same).is_empty());
        let edited = Fields::from_pairs([("a", "2"), ("hosts", "x"), ("b", "")]);
        assert_eq!(changed_keys(&stored, &edited), ["a", "b", "hosts"]);
    }

    #[test]
    fn values_become_text() {
        let given: BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "replicas": 2, "flag": true, "env": ["A=1", "B=2"], "command": "x"
        }))
        .expect("json");
        let fields = to_fields(&given).expect("fields");
        assert_eq!(fields.get("replicas"), Some("2"));
        assert_eq!(fields.get("flag"), Some("true"));
        assert_eq!(fields.get_all("env").collect::<Vec<_>>(), ["A=1", "B=2"]);
        let nested: BTreeMap<String, Value> =
            serde_json::from_value(serde_json::json!({"env": [["x"]]})).expect("json");
        assert_eq!(to_fields(&nested).expect_err("refused").0, "env");
    }
}

//! `models`: a CRUD API generated from a schema, its data in Herve's database.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::{params, OptionalExtension};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::field;
use crate::api::form::{fields_from_body, media_type};
use crate::api::{json_ok, json_ok_with, ApiError};
use crate::contract::{
    Fields, MountPrefix, RunningService, ServiceContext, ServiceError, ServiceType,
};
use crate::store::sqlite::{db, SqliteStore};
use crate::store::{unix_now, StoreError};

/// Most fields in one schema.
const MAX_FIELDS: usize = 64;
/// Longest string a field may be declared to hold.
const MAX_STRING: u32 = 1_000_000;
/// Default and largest page of a listing.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1000;
/// A listing is read and sent a batch at a time, so that a client that reads slowly
/// holds one batch, not its whole page: at most this many rows...
const BATCH_ROWS: u64 = 64;
/// ...and, past the first row, at most this many bytes of stored data.
const BATCH_BYTES: usize = 64 * 1024;
/// Names the instances' own keys take.
const RESERVED: [&str; 3] = ["id", "created_at", "updated_at"];

/// The `models` service type.
pub struct ModelsType {
    database: SqliteStore,
}

impl ModelsType {
    pub fn new(database: SqliteStore) -> Self {
        ModelsType { database }
    }
}

/// The type of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    String,
    Int,
    Float,
    Bool,
}

/// One field of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    pub kind: Kind,
    /// For strings: the most characters.
    pub max_len: Option<u32>,
    pub required: bool,
}

/// What a models service keeps from its registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelsConfig {
    pub model: String,
    pub fields: Vec<FieldSpec>,
}

fn identifier_ok(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    name.len() <= max
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `name:type[:max][:required],...`.
pub fn parse_schema(spec: &str) -> Result<Vec<FieldSpec>, String> {
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

#[async_trait]
impl ServiceType for ModelsType {
    fn name(&self) -> &str {
        "models"
    }

    fn description(&self) -> &str {
        "A service storing instances of a data model behind a CRUD API"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<Value, ServiceError> {
        let model = fields.require("model")?;
        if !identifier_ok(model, 64) {
            return Err(ServiceError::invalid_field(
                "model",
                "The field 'model' must be a name of letters, digits and '_', starting with a letter.",
            ));
        }
        fields.require("fields")?;
        // Repeated (or a JSON array): one spec made of all of them.
        let spec = fields.get_all("fields").collect::<Vec<_>>().join(",");
        let schema = parse_schema(&spec).map_err(|why| {
            ServiceError::invalid_field("fields", format!("The field 'fields' is invalid: {why}."))
        })?;
        let config = ModelsConfig {
            model: model.to_owned(),
            fields: schema,
        };
        field::to_config(&config)
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let config: ModelsConfig = field::from_config(config)?;
        let collection = format!("/{}", config.model);
        let item = format!("/{}/{{id}}", config.model);
        let model = Arc::new(Model {
            service: ctx.uuid().to_string(),
            config,
            database: self.database.clone(),
        });
        let router = Router::new()
            .route(&collection, get(list).post(create))
            .route(&item, get(show).put(replace).patch(update).delete(remove))
            .with_state(model);
        Ok(Box::new(router))
    }

    async fn unregister(&self, ctx: &ServiceContext, _config: &Value) -> Result<(), ServiceError> {
        self.database
            .delete_service_rows(
                &["model_instances", "model_sequences"],
                ctx.uuid().to_string(),
            )
            .await
            .map_err(|e| ServiceError::failed(e.to_string()))
    }
}

/// One running models service.
struct Model {
    service: String,
    config: ModelsConfig,
    database: SqliteStore,
}

/// An instance as clients see it: `id`, `created_at`, `updated_at`, then the fields
/// in schema order.
struct Instance<'a> {
    id: i64,
    created_at: i64,
    updated_at: i64,
    values: Map<String, Value>,
    schema: &'a [FieldSpec],
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

/// A stored row: id, created_at, updated_at, values.
type Row = (i64, i64, i64, Map<String, Value>);

/// How a write treats the fields it is not given.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    /// All required fields must be given; the others become null.
    Whole,
    /// Only the given fields change.
    Partial,
}

impl Model {
    fn name(&self) -> &str {
        &self.config.model
    }

    fn not_found(&self) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} model: instance not found", self.name()),
        )
    }

    fn unprocessable(&self) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{} model: unable to process this content", self.name()),
        )
    }

    fn invalid(&self, field: &str, why: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{} model: the field '{field}' {why}", self.name()),
        )
    }

    fn instance(&self, row: Row) -> Instance<'_> {
        let (id, created_at, updated_at, values) = row;
        Instance {
            id,
            created_at,
            updated_at,
            values,
            schema: &self.config.fields,
        }
    }

    /// The typed values of a request body, checked against the schema.
    fn values(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        write: Write,
    ) -> Result<Map<String, Value>, ApiError> {
        let media = media_type(headers.get(header::CONTENT_TYPE));
        if media.as_deref() == Some("application/json") {
            return self.json_values(body, write);
        }
        let fields = fields_from_body(media.as_deref(), body).map_err(|_| self.unprocessable())?;
        if fields
            .iter()
            .any(|(key, _)| !self.config.fields.iter().any(|f| f.name == key))
        {
            return Err(self.unprocessable());
        }
        let mut values = Map::new();
        for spec in &self.config.fields {
            let Some(raw) = fields.get(&spec.name) else {
                if write == Write::Whole {
                    if spec.required {
                        return Err(self.unprocessable());
                    }
                    values.insert(spec.name.clone(), Value::Null);
                }
                continue;
            };
            let value = self.typed(spec, raw)?;
            // An empty value does not fill a required field, not even a string one.
            if spec.required && (value.is_null() || raw.is_empty()) {
                return Err(self.unprocessable());
            }
            values.insert(spec.name.clone(), value);
        }
        Ok(values)
    }

    /// JSON values must have the field's JSON type already: `"36"` is not an int.
    fn json_values(&self, body: &[u8], write: Write) -> Result<Map<String, Value>, ApiError> {
        let Ok(Value::Object(given)) = serde_json::from_slice::<Value>(body) else {
            return Err(self.unprocessable());
        };
        if given
            .keys()
            .any(|key| !self.config.fields.iter().any(|f| &f.name == key))
        {
            return Err(self.unprocessable());
        }
        let mut values = Map::new();
        for spec in &self.config.fields {
            let value = match given.get(&spec.name) {
                None if write == Write::Partial => continue,
                None | Some(Value::Null) => {
                    if spec.required {
                        return Err(self.unprocessable());
                    }
                    Value::Null
                }
                Some(value) => {
                    let fits = match (spec.kind, value) {
                        (Kind::String, Value::String(_)) => true,
                        (Kind::Int, Value::Number(n)) => n.is_i64(),
                        (Kind::Float, Value::Number(_)) | (Kind::Bool, Value::Bool(_)) => true,
                        _ => false,
                    };
                    if !fits {
                        let wanted = match spec.kind {
                            Kind::String => "must be a string",
                            Kind::Int => "must be a whole number",
                            Kind::Float => "must be a number",
                            Kind::Bool => "must be true or false",
                        };
                        return Err(self.invalid(&spec.name, wanted));
                    }
                    if let (Value::String(text), Some(max)) = (value, spec.max_len) {
                        if text.chars().count() > max as usize {
                            return Err(self.invalid(
                                &spec.name,
                                &format!("must be at most {max} characters"),
                            ));
                        }
                        if text.is_empty() && spec.required {
                            return Err(self.unprocessable());
                        }
                    }
                    value.clone()
                }
            };
            values.insert(spec.name.clone(), value);
        }
        Ok(values)
    }

    fn typed(&self, spec: &FieldSpec, raw: &str) -> Result<Value, ApiError> {
        if raw.is_empty() && spec.kind != Kind::String {
            return Ok(Value::Null);
        }
        Ok(match spec.kind {
            Kind::String => {
                let max = spec.max_len.unwrap_or(MAX_STRING);
                if raw.chars().count() > max as usize {
                    return Err(
                        self.invalid(&spec.name, &format!("must be at most {max} characters"))
                    );
                }
                Value::String(raw.to_owned())
            }
            Kind::Int => raw
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| self.invalid(&spec.name, "must be a whole number"))?,
            Kind::Float => raw
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| self.invalid(&spec.name, "must be a number"))?,
            Kind::Bool => match raw.trim() {
                "1" => Value::Bool(true),
                "0" => Value::Bool(false),
                text if text.eq_ignore_ascii_case("true") => Value::Bool(true),
                text if text.eq_ignore_ascii_case("false") => Value::Bool(false),
                _ => return Err(self.invalid(&spec.name, "must be true or false")),
            },
        })
    }

    fn parse_id(&self, text: &str) -> Result<i64, ApiError> {
        text.parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| self.not_found())
    }

    async fn insert(&self, values: Map<String, Value>) -> Result<Row, StoreError> {
        let service = self.service.clone();
        self.database
            .in_transaction(move |tx| insert_row(tx, &service, values))
            .await
    }
}

fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    service: &str,
    values: Map<String, Value>,
) -> Result<Row, StoreError> {
    // Ids come from a per-service counter, never from MAX(id): a deleted id is never
    // given again. The first is 0, as in the first Herve.
    let id: i64 = tx
        .query_row(
            "INSERT INTO model_sequences (service, last_id) VALUES (?1, 0)
             ON CONFLICT (service) DO UPDATE SET last_id = last_id + 1
             RETURNING last_id",
            params![service],
            |row| row.get(0),
        )
        .map_err(db)?;
    let now = unix_now();
    tx.execute(
        "INSERT INTO model_instances (service, id, created_at, updated_at, data) VALUES (?1, ?2, ?3, ?3, ?4)",
        params![service, id, now, data_text(&values)?],
    )
    .map_err(db)?;
    Ok((id, now, now, values))
}

/// Replaces the data of instance `id`.
fn update_row(
    tx: &rusqlite::Transaction<'_>,
    service: &str,
    id: i64,
    values: &Map<String, Value>,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE model_instances SET data = ?1, updated_at = ?2 WHERE service = ?3 AND id = ?4",
        params![data_text(values)?, now, service, id],
    )
    .map_err(db)?;
    Ok(())
}

/// The stored form of an instance's values.
fn data_text(values: &Map<String, Value>) -> Result<String, StoreError> {
    serde_json::to_string(values).map_err(|e| StoreError::Database(e.to_string()))
}

fn read_row(
    conn: &rusqlite::Connection,
    service: &str,
    id: i64,
) -> Result<Option<Row>, StoreError> {
    conn.query_row(
        "SELECT id, created_at, updated_at, data FROM model_instances WHERE service = ?1 AND id = ?2",
        params![service, id],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get::<_, String>(3)?)),
    )
    .optional()
    .map_err(db)?
    .map(decode_row)
    .transpose()
}

fn decode_row(
    (id, created_at, updated_at, data): (i64, i64, i64, String),
) -> Result<Row, StoreError> {
    match serde_json::from_str(&data) {
        Ok(Value::Object(values)) => Ok((id, created_at, updated_at, values)),
        _ => Err(StoreError::Corrupt {
            uuid: format!("model instance {id}"),
            reason: "its data is not a JSON object".to_owned(),
        }),
    }
}

fn store_failed(error: StoreError) -> ApiError {
    tracing::error!(%error, "models store failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The data could not be read or saved.",
    )
}

#[derive(Deserialize)]
struct Page {
    limit: Option<String>,
    offset: Option<String>,
}

async fn list(
    State(model): State<Arc<Model>>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let page = page.map(|Query(page)| page).unwrap_or(Page {
        limit: None,
        offset: None,
    });
    let number = |text: Option<String>, default: u64, max: u64, name: &str| match text {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("The parameter '{name}' must be a whole number from 0 to {max}."),
                )
            }),
    };
    let limit = number(page.limit, DEFAULT_LIMIT, MAX_LIMIT, "limit")?;
    let offset = number(page.offset, 0, i64::MAX as u64, "offset")?;
    // The first batch is read before answering, so that a failure is a clean 500.
    let first = model
        .batch(After::Offset(offset), limit.min(BATCH_ROWS))
        .await
        .map_err(store_failed)?;
    let listing = Listing {
        model,
        left: limit,
        ready: Some(first),
        last_id: None,
        written: 0,
        state: ListingState::Head,
    };
    let chunks = futures_util::stream::unfold(listing, |mut listing| async move {
        let chunk = listing.next_chunk().await?;
        Some((chunk, listing))
    });
    let mut response = Response::new(axum::body::Body::from_stream(chunks));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Where a batch of a listing starts.
enum After {
    /// The first batch: after `offset` rows.
    Offset(u64),
    /// The next: after the last id sent (the order is by id).
    Id(i64),
}

impl Model {
    /// Up to `rows` instances in id order, fewer if they hold more than
    /// [`BATCH_BYTES`] (never none while any is left).
    async fn batch(&self, after: After, rows: u64) -> Result<Vec<Row>, StoreError> {
        let service = self.service.clone();
        self.database
            .with_conn(move |conn| {
                let (sql, key) = match after {
                    After::Offset(offset) => (
                        "SELECT id, created_at, updated_at, data FROM model_instances
                         WHERE service = ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
                        i64::try_from(offset).unwrap_or(i64::MAX),
                    ),
                    After::Id(id) => (
                        "SELECT id, created_at, updated_at, data FROM model_instances
                         WHERE service = ?1 AND id > ?3 ORDER BY id LIMIT ?2",
                        id,
                    ),
                };
                let mut stmt = conn.prepare_cached(sql).map_err(db)?;
                let raw = stmt
                    .query_map(
                        params![service, i64::try_from(rows).unwrap_or(i64::MAX), key],
                        |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                row.get(2)?,
                                row.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .map_err(db)?;
                let (mut batch, mut bytes) = (Vec::new(), 0usize);
                for row in raw {
                    let row = row.map_err(db)?;
                    bytes += row.3.len();
                    if bytes > BATCH_BYTES && !batch.is_empty() {
                        break;
                    }
                    batch.push(decode_row(row)?);
                }
                Ok(batch)
            })
            .await
    }
}

/// A listing being sent: `{"success":true,"data":[`, the instances a batch at a
/// time as the client takes them, then `]}`.
struct Listing {
    model: Arc<Model>,
    /// Instances still to send.
    left: u64,
    /// A batch read ahead (the first one).
    ready: Option<Vec<Row>>,
    last_id: Option<i64>,
    written: u64,
    state: ListingState,
}

enum ListingState {
    Head,
    Rows,
    Done,
}

impl Listing {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        let mut out = Vec::with_capacity(8 * 1024);
        match self.state {
            ListingState::Done => return None,
            ListingState::Head => {
                out.extend_from_slice(br#"{"success":true,"data":["#);
                self.state = ListingState::Rows;
            }
            ListingState::Rows => {}
        }
        let rows = match (self.ready.take(), self.last_id) {
            (Some(rows), _) => rows,
            (None, Some(last_id)) if self.left > 0 => {
                match self
                    .model
                    .batch(After::Id(last_id), self.left.min(BATCH_ROWS))
                    .await
                {
                    Ok(rows) => rows,
                    // The answer has begun: all that can be done is to cut it short.
                    Err(error) => {
                        tracing::error!(%error, "models store failed during a listing");
                        self.state = ListingState::Done;
                        return Some(Err(std::io::Error::other(error)));
                    }
                }
            }
            _ => Vec::new(),
        };
        if rows.is_empty() || self.left == 0 {
            out.extend_from_slice(b"]}");
            self.state = ListingState::Done;
            return Some(Ok(out.into()));
        }
        for row in rows
            .into_iter()
            .take(usize::try_from(self.left).unwrap_or(usize::MAX))
        {
            if self.written > 0 {
                out.push(b',');
            }
            self.last_id = Some(row.0);
            if let Err(error) = serde_json::to_writer(&mut out, &self.model.instance(row)) {
                self.state = ListingState::Done;
                return Some(Err(std::io::Error::other(error)));
            }
            self.written += 1;
            self.left -= 1;
        }
        Some(Ok(out.into()))
    }
}

async fn show(
    State(model): State<Arc<Model>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = model.parse_id(&id)?;
    let service = model.service.clone();
    let row = model
        .database
        .with_conn(move |conn| read_row(conn, &service, id))
        .await
        .map_err(store_failed)?
        .ok_or_else(|| model.not_found())?;
    Ok(json_ok(StatusCode::OK, None, Some(model.instance(row))))
}

async fn create(
    State(model): State<Arc<Model>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let values = model.values(&headers, &body, Write::Whole)?;
    let row = model.insert(values).await.map_err(store_failed)?;
    Ok(json_ok(
        StatusCode::CREATED,
        None,
        Some(model.instance(row)),
    ))
}

/// PUT: replaces every field of an existing instance (200), or creates a new one
/// (201, with an id of Herve's: clients never choose ids).
async fn replace(
    State(model): State<Arc<Model>>,
    mount: Option<axum::Extension<MountPrefix>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = model.parse_id(&id)?;
    let values = model.values(&headers, &body, Write::Whole)?;
    let service = model.service.clone();
    let (created, row) = model
        .database
        .in_transaction(move |tx| {
            let now = unix_now();
            Ok(match read_row(tx, &service, id)? {
                Some((id, created_at, _, _)) => {
                    update_row(tx, &service, id, &values, now)?;
                    (false, (id, created_at, now, values))
                }
                None => (true, insert_row(tx, &service, values)?),
            })
        })
        .await
        .map_err(store_failed)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let id = row.0;
    let mut response = json_ok(status, None, Some(model.instance(row)));
    if created {
        // Absolute: relative to the request, `user/12` would resolve under `/user/`.
        let prefix = mount.as_ref().map_or("", |mount| mount.0.as_str());
        if let Ok(location) = format!("{prefix}/{}/{id}", model.name()).parse() {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

async fn update(
    State(model): State<Arc<Model>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = model.parse_id(&id)?;
    let changes = model.values(&headers, &body, Write::Partial)?;
    let service = model.service.clone();
    // Read, merge and write in one transaction: concurrent patches of different
    // fields all land.
    let row = model
        .database
        .in_transaction(move |tx| {
            let Some((id, created_at, _, mut values)) = read_row(tx, &service, id)? else {
                return Ok(None);
            };
            values.extend(changes);
            let now = unix_now();
            update_row(tx, &service, id, &values, now)?;
            Ok(Some((id, created_at, now, values)))
        })
        .await
        .map_err(store_failed)?
        .ok_or_else(|| model.not_found())?;
    Ok(json_ok(StatusCode::OK, None, Some(model.instance(row))))
}

async fn remove(
    State(model): State<Arc<Model>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = model.parse_id(&id)?;
    let service = model.service.clone();
    let deleted = model
        .database
        .with_conn(move |conn| {
            conn.execute(
                "DELETE FROM model_instances WHERE service = ?1 AND id = ?2",
                params![service, id],
            )
            .map_err(db)
        })
        .await
        .map_err(store_failed)?;
    if deleted == 0 {
        return Err(model.not_found());
    }
    Ok(json_ok_with::<()>(
        StatusCode::OK,
        Some(format!("{} model: instance has been deleted", model.name())),
        None,
    )
    .into_response())
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

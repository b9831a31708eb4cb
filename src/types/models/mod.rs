//! `models`: a CRUD API generated from a schema, its data in Herve's database.
//!
//! `schema` parses the schema and checks every written instance; `db` keeps the
//! instances; the handlers here extract, call and answer.

mod db;
mod schema;

use std::path::Path as FilePath;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::contract::http::{fields_from_body, media_type, ApiError, Envelope};
use crate::contract::{
    FieldSpec, Fields, MountPrefix, RunningService, ServiceContext, ServiceError, ServiceType,
};
use crate::util::sqlite::DbError;
use db::{After, ModelsDb, Row};
pub(crate) use schema::parse_schema;
use schema::{identifier_ok, Instance, ModelsConfig, Rejection, Write};

/// Default and largest page of a listing.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1000;
/// A listing is read and sent a batch at a time, so that a client that reads slowly
/// holds one batch, not its whole page: at most this many rows...
const BATCH_ROWS: u64 = 64;
/// ...and, past the first row, at most this many bytes of stored data.
const BATCH_BYTES: usize = 64 * 1024;

/// The `models` service type.
pub(crate) struct ModelsType {
    db: ModelsDb,
}

impl ModelsType {
    /// The type, its data in the shared database if there is one, else in the
    /// database file at `database`.
    pub async fn open(
        database: &FilePath,
        shared: Option<&crate::util::postgres::SharedDb>,
    ) -> Result<Self, DbError> {
        Ok(ModelsType {
            db: ModelsDb::open(database, shared).await?,
        })
    }
}

#[async_trait]
impl ServiceType for ModelsType {
    type Config = ModelsConfig;

    fn name(&self) -> &str {
        "models"
    }

    fn description(&self) -> &str {
        "A service storing instances of a data model behind a CRUD API"
    }

    fn fields(&self) -> Vec<FieldSpec> {
        vec![
            FieldSpec::required("model", "The model's name, in its paths."),
            FieldSpec::required(
                "fields",
                "name:type[:max][:required],... (string, int, float, bool).",
            ),
        ]
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<ModelsConfig, ServiceError> {
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
        Ok(ModelsConfig {
            model: model.to_owned(),
            fields: schema,
        })
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &ModelsConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let collection = format!("/{}", config.model);
        let item = format!("/{}/{{id}}", config.model);
        let model = Arc::new(Model {
            service: ctx.uuid().to_string(),
            config: config.clone(),
            db: self.db.clone(),
        });
        let router = Router::new()
            .route(&collection, get(list).post(create))
            .route(&item, get(show).put(replace).patch(update).delete(remove))
            .with_state(model);
        Ok(Box::new(router))
    }

    async fn unregister(
        &self,
        ctx: &ServiceContext,
        _config: &ModelsConfig,
    ) -> Result<(), ServiceError> {
        self.db
            .forget(&ctx.uuid().to_string())
            .await
            .map_err(|error| ServiceError::failed_because("The data could not be deleted", error))
    }
}

/// One running models service.
struct Model {
    service: String,
    config: ModelsConfig,
    db: ModelsDb,
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

    fn rejected(&self, rejection: Rejection) -> ApiError {
        let message = match rejection {
            Rejection::Unprocessable => {
                format!("{} model: unable to process this content", self.name())
            }
            Rejection::Invalid { field, must } => {
                format!("{} model: the field '{field}' {must}", self.name())
            }
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
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

    /// The checked values of a form or JSON body.
    fn values(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        write: Write,
    ) -> Result<Map<String, Value>, ApiError> {
        let media = media_type(headers.get(header::CONTENT_TYPE));
        let values = if media.as_deref() == Some("application/json") {
            self.config.json_values(body, write)
        } else {
            let fields = fields_from_body(media.as_deref(), body)
                .map_err(|_| self.rejected(Rejection::Unprocessable))?;
            self.config.form_values(&fields, write)
        };
        values.map_err(|rejection| self.rejected(rejection))
    }

    fn parse_id(&self, text: &str) -> Result<i64, ApiError> {
        text.parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| self.not_found())
    }
}

fn store_failed(error: DbError) -> ApiError {
    super::data_failed("The data", error)
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
        .db
        .batch(
            &model.service,
            After::Offset(offset),
            limit.min(BATCH_ROWS),
            BATCH_BYTES,
        )
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
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
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
                let next = self
                    .model
                    .db
                    .batch(
                        &self.model.service,
                        After::Id(last_id),
                        self.left.min(BATCH_ROWS),
                        BATCH_BYTES,
                    )
                    .await;
                match next {
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
    let row = model
        .db
        .get(&model.service, id)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| model.not_found())?;
    Ok(Envelope::data(model.instance(row)).respond(StatusCode::OK))
}

async fn create(
    State(model): State<Arc<Model>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let values = model.values(&headers, &body, Write::Whole)?;
    let row = model
        .db
        .insert(&model.service, values)
        .await
        .map_err(store_failed)?;
    Ok(Envelope::data(model.instance(row)).respond(StatusCode::CREATED))
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
    let (created, row) = model
        .db
        .replace(&model.service, id, values)
        .await
        .map_err(store_failed)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let id = row.0;
    let mut response = Envelope::data(model.instance(row)).respond(status);
    if created {
        // Absolute: relative, `user/12` would resolve under `/user/`.
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
    let row = model
        .db
        .update(&model.service, id, changes)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| model.not_found())?;
    Ok(Envelope::data(model.instance(row)).respond(StatusCode::OK))
}

async fn remove(
    State(model): State<Arc<Model>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = model.parse_id(&id)?;
    let deleted = model
        .db
        .delete(&model.service, id)
        .await
        .map_err(store_failed)?;
    if !deleted {
        return Err(model.not_found());
    }
    Ok(
        Envelope::message(format!("{} model: instance has been deleted", model.name()))
            .respond(StatusCode::OK)
            .into_response(),
    )
}

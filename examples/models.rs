//! A JSON API over an in-memory model: `notes`, with routes for creating, reading,
//! updating and deleting notes, answers in Herve's envelope, and typed validation.
//! Each running instance has notes of its own; they are gone when it stops.
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example models
//! curl -u admin:secret -d name=n -d type=notes http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl -d text='buy milk' http://127.0.0.1:5000/<uuid>/notes    # {"success":true,"data":{"id":1,...}}
//! curl -X PUT -H 'content-type: application/json' -d '{"text":"buy bread"}' \
//!      http://127.0.0.1:5000/<uuid>/notes/1
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use herve::contract::http::{ApiError, Envelope, FormOrJson};
use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// The longest note, in characters.
const MAX_TEXT: usize = 200;
/// Notes one instance keeps: memory is not unlimited, and clients are not trusted.
const MAX_NOTES: usize = 1000;

/// `notes`: an in-memory CRUD API.
pub struct Notes;

/// One note, as the API shows it.
#[derive(Clone, Serialize)]
pub struct Note {
    id: u64,
    text: String,
}

/// The notes of one running instance.
#[derive(Default)]
struct Store {
    notes: BTreeMap<u64, Note>,
    /// Ids are never reused, even after a delete: a client holding an old id must not
    /// reach someone else's note.
    last_id: u64,
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    // No handler leaves the map half-changed, so a panic elsewhere spoils nothing.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl ServiceType for Notes {
    type Config = ();

    fn name(&self) -> &str {
        "notes"
    }

    fn description(&self) -> &str {
        "A service keeping notes in memory, with a JSON API"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let store = Shared::default();
        let routes = Router::new()
            .route("/notes", get(list).post(create))
            .route("/notes/{id}", get(read).put(update).delete(remove))
            .with_state(store);
        Ok(Box::new(routes))
    }
}

/// The `text` field, or a 422 saying what is wrong with it.
fn note_text(fields: &Fields) -> Result<String, ApiError> {
    let text = fields.get("text").map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The field 'text' is required.",
        ));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("The field 'text' must be at most {MAX_TEXT} characters."),
        ));
    }
    Ok(text.to_owned())
}

/// The id in the path; one that is not a number names no note either.
fn note_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| not_found())
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "The note does not exist.")
}

async fn list(State(store): State<Shared>) -> Response {
    let notes: Vec<Note> = lock(&store).notes.values().cloned().collect();
    Envelope::data(notes).respond(StatusCode::OK)
}

async fn create(
    State(store): State<Shared>,
    FormOrJson(fields): FormOrJson,
) -> Result<Response, ApiError> {
    let text = note_text(&fields)?;
    let mut store = lock(&store);
    if store.notes.len() >= MAX_NOTES {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("The service keeps at most {MAX_NOTES} notes; delete some first."),
        ));
    }
    store.last_id += 1;
    let note = Note {
        id: store.last_id,
        text,
    };
    store.notes.insert(note.id, note.clone());
    Ok(Envelope::data(note)
        .with_message("The note has been created.")
        .respond(StatusCode::CREATED))
}

async fn read(State(store): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = note_id(&id)?;
    let note = lock(&store).notes.get(&id).cloned().ok_or_else(not_found)?;
    Ok(Envelope::data(note).respond(StatusCode::OK))
}

async fn update(
    State(store): State<Shared>,
    Path(id): Path<String>,
    FormOrJson(fields): FormOrJson,
) -> Result<Response, ApiError> {
    let id = note_id(&id)?;
    let text = note_text(&fields)?;
    let mut store = lock(&store);
    let note = store.notes.get_mut(&id).ok_or_else(not_found)?;
    note.text = text;
    Ok(Envelope::data(note.clone())
        .with_message("The note has been updated.")
        .respond(StatusCode::OK))
}

async fn remove(State(store): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = note_id(&id)?;
    lock(&store).notes.remove(&id).ok_or_else(not_found)?;
    Ok(Envelope::message("The note has been deleted.").respond(StatusCode::OK))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Notes)).await
}

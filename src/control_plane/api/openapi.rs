//! `GET /openapi.json`: the admin API as an OpenAPI 3.1 document, made by utoipa from
//! the handlers' own annotations (each sits on its handler) and the types they answer
//! with, so that it cannot drift from the code.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::control_plane::registry::ServiceView;
use crate::control_plane::store::Status;

/// An answer that only says something: every error, and most changes.
#[derive(Serialize, ToSchema)]
pub(super) struct Said {
    pub success: bool,
    pub message: String,
}

/// The list of services.
#[derive(Serialize, ToSchema)]
pub(super) struct ServiceList {
    pub success: bool,
    pub data: Vec<ServiceView>,
}

/// One service.
#[derive(Serialize, ToSchema)]
pub(super) struct OneService {
    pub success: bool,
    pub message: Option<String>,
    pub data: ServiceView,
}

/// Any other answer, with data of any shape (or none, for a refusal).
#[derive(Serialize, ToSchema)]
pub(super) struct WithData {
    pub success: bool,
    pub message: Option<String>,
    pub data: Option<Value>,
}

/// Lines of a service's output.
#[derive(Serialize, ToSchema)]
pub(super) struct Lines {
    pub success: bool,
    pub data: Vec<String>,
}

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        // Every endpoint answers 401 without the admin's credentials (a session cookie
        // does too), and 403 to a change a browser marks as cross-site.
        let said = utoipa::openapi::Ref::from_schema_name("Said");
        let refusal = |description: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(said.clone()))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .entry("401".to_owned())
                    .or_insert_with(|| refusal("Admin credentials are required").into());
                operation
                    .responses
                    .responses
                    .entry("403".to_owned())
                    .or_insert_with(|| {
                        refusal("A cross-site change, or a session without its CSRF token").into()
                    });
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Herve admin API", description = "Register, run, supervise and route to services."),
    paths(
        super::list,
        super::show,
        super::register,
        super::edit,
        super::start,
        super::stop,
        super::unregister,
        super::restart,
        super::logs,
        super::operate::reload,
        super::operate::status,
        super::operate::types,
        super::operate::export,
        super::operate::apply,
        super::operate::cluster,
        super::certificates::list,
        super::certificates::upload,
        super::certificates::remove,
        super::scrape,
        document,
    ),
    components(schemas(Said, ServiceList, OneService, WithData, Lines, ServiceView, Status)),
    modifiers(&BasicAuth),
    security(("admin" = []))
)]
struct AdminApi;

/// The document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
pub(super) async fn document() -> axum::response::Response {
    axum::response::IntoResponse::into_response(axum::Json(AdminApi::openapi()))
}

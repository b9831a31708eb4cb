//! A service type defined outside Herve's source, added through the public builder.

use async_trait::async_trait;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};

use crate::support::*;

/// Greets with a configured word; counts its stops in a file of its own.
struct Greeter;

#[derive(Serialize, Deserialize)]
struct GreeterConfig {
    greeting: String,
}

#[async_trait]
impl ServiceType for Greeter {
    type Config = GreeterConfig;

    fn name(&self) -> &str {
        "greeter"
    }

    fn description(&self) -> &str {
        "A test greeter"
    }

    async fn register(
        &self,
        ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<GreeterConfig, ServiceError> {
        let greeting = fields.require("greeting")?;
        if greeting.len() > 20 {
            return Err(ServiceError::invalid_field(
                "greeting",
                "The field 'greeting' must be at most 20 characters.",
            ));
        }
        std::fs::create_dir_all(ctx.data_dir()).map_err(|e| ServiceError::failed(e.to_string()))?;
        Ok(GreeterConfig {
            greeting: greeting.to_owned(),
        })
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &GreeterConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let greeting = config.greeting.clone();
        let name = ctx.name().to_owned();
        Ok(Box::new(Router::new().route(
            "/hello",
            get(move || async move { format!("{greeting} from {name}") }),
        )))
    }

    async fn unregister(
        &self,
        ctx: &ServiceContext,
        _config: &GreeterConfig,
    ) -> Result<(), ServiceError> {
        std::fs::remove_dir_all(ctx.data_dir()).map_err(|e| ServiceError::failed(e.to_string()))
    }
}

#[tokio::test]
async fn a_custom_type_registers_validates_runs_and_cleans_up() {
    let herve = TestHerve::start_built(|_| {}, |builder| builder.service_type(Greeter)).await;

    let missing = herve.register("g", "greeter").await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.message(), "The field 'greeting' is required.");

    let long = "x".repeat(21);
    let too_long = herve
        .post_form(
            "/services/register",
            &[("name", "g"), ("type", "greeter"), ("greeting", &long)],
        )
        .await;
    too_long.expect(400, "The field 'greeting' must be at most 20 characters.");

    let reply = herve
        .post_form(
            "/services/register",
            &[("name", "g"), ("type", "greeter"), ("greeting", "salut")],
        )
        .await;
    reply.expect(201, "The service has been successfully registered.");
    assert_eq!(reply.json()["data"]["description"], "A test greeter");
    assert_eq!(reply.json()["data"]["type"], "greeter");
    let uuid = reply.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let service_dir = herve.data_dir.join("services").join(&uuid);
    assert!(service_dir.is_dir());

    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(
        herve.get(&format!("/{uuid}/hello")).await.text(),
        "salut from g"
    );

    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    herve
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");
    assert!(!service_dir.exists());

    // Built-in types are still there next to it.
    herve.register_ok("e", "echo").await;
    herve.stop().await;
}

/// The example of the README, exactly as shipped.
#[allow(dead_code)]
#[path = "../../examples/custom_service.rs"]
mod example;

#[tokio::test]
async fn the_shipped_example_type_works() {
    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(example::Greeter)).await;
    let long = "x".repeat(41);
    herve
        .post_form(
            "/services/register",
            &[("name", "hi"), ("type", "greeter"), ("greeting", &long)],
        )
        .await
        .expect(400, "The field 'greeting' must be at most 40 characters.");
    let reply = herve
        .post_form(
            "/services/register",
            &[("name", "hi"), ("type", "greeter"), ("greeting", "Bonjour")],
        )
        .await;
    reply.expect(201, "The service has been successfully registered.");
    let uuid = reply.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(
        herve.get(&format!("/{uuid}/hello")).await.text(),
        "Bonjour from hi\n"
    );
    assert_eq!(
        herve.get(&format!("/{uuid}/hello?to=Ada")).await.text(),
        "Bonjour, Ada, from hi\n"
    );
    herve.stop().await;
}

/// A type whose start always fails.
struct Broken;

#[async_trait]
impl ServiceType for Broken {
    type Config = ();

    fn name(&self) -> &str {
        "broken"
    }

    fn description(&self) -> &str {
        "Never starts"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        Err(ServiceError::failed("The port 1 is not available."))
    }
}

#[tokio::test]
async fn a_failed_start_is_a_500_with_the_reason_and_status_failed() {
    let herve = TestHerve::start_built(|_| {}, |builder| builder.service_type(Broken)).await;
    let uuid = herve.register_ok("b", "broken").await;
    herve
        .start(&uuid)
        .await
        .expect(500, "The port 1 is not available.");
    let shown = herve.admin_get(&format!("/services/{uuid}")).await;
    assert_eq!(shown.json()["data"]["status"], "failed");
    assert_eq!(herve.get(&format!("/{uuid}/")).await.status, 404);
    // Stopping acknowledges the failure; then it can go.
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    assert_eq!(herve.list().await[0]["status"], "stopped");
    herve
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");
    herve.stop().await;
}

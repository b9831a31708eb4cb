//! Service types with their configuration type erased, so that types of every kind sit
//! in one catalog: the configuration travels as the JSON Herve persists, and is typed
//! again at the edge of each hook.

use async_trait::async_trait;
use serde_json::Value;

use super::{
    FieldSpec, Fields, LogLines, RunningService, ServiceContext, ServiceError, ServiceType,
};

/// A [`ServiceType`] whose configuration is JSON.
#[async_trait]
pub(crate) trait AnyServiceType: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    fn fields(&self) -> Vec<FieldSpec>;
    async fn register(&self, ctx: &ServiceContext, fields: &Fields) -> Result<Value, ServiceError>;
    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError>;
    fn runs_side_by_side(&self, config: &Value) -> bool;
    async fn unregister(&self, ctx: &ServiceContext, config: &Value) -> Result<(), ServiceError>;
    async fn recover(&self, services: &[ServiceContext]);
    async fn logs(
        &self,
        ctx: &ServiceContext,
        config: &Value,
        tail: usize,
    ) -> Result<Option<Vec<String>>, ServiceError>;
    async fn follow_logs(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Option<LogLines>, ServiceError>;
}

/// The stored configuration of a service, typed again.
fn typed<T: ServiceType>(config: &Value) -> Result<T::Config, ServiceError> {
    T::Config::deserialize(config)
        .map_err(|error| ServiceError::failed_because("The stored configuration is invalid", error))
}

use serde::Deserialize;

#[async_trait]
impl<T: ServiceType> AnyServiceType for T {
    fn name(&self) -> &str {
        ServiceType::name(self)
    }

    fn description(&self) -> &str {
        ServiceType::description(self)
    }

    fn fields(&self) -> Vec<FieldSpec> {
        ServiceType::fields(self)
    }

    async fn register(&self, ctx: &ServiceContext, fields: &Fields) -> Result<Value, ServiceError> {
        let config = ServiceType::register(self, ctx, fields).await?;
        serde_json::to_value(&config).map_err(|error| {
            ServiceError::failed_because("The configuration could not be stored", error)
        })
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let config = typed::<T>(config)?;
        ServiceType::start(self, ctx, &config).await
    }

    fn runs_side_by_side(&self, config: &Value) -> bool {
        // A configuration that does not read back cannot start anyway.
        typed::<T>(config).is_ok_and(|config| ServiceType::runs_side_by_side(self, &config))
    }

    async fn unregister(&self, ctx: &ServiceContext, config: &Value) -> Result<(), ServiceError> {
        let config = typed::<T>(config)?;
        ServiceType::unregister(self, ctx, &config).await
    }

    async fn recover(&self, services: &[ServiceContext]) {
        ServiceType::recover(self, services).await;
    }

    async fn logs(
        &self,
        ctx: &ServiceContext,
        config: &Value,
        tail: usize,
    ) -> Result<Option<Vec<String>>, ServiceError> {
        let config = typed::<T>(config)?;
        ServiceType::logs(self, ctx, &config, tail).await
    }

    async fn follow_logs(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Option<LogLines>, ServiceError> {
        let config = typed::<T>(config)?;
        ServiceType::follow_logs(self, ctx, &config).await
    }
}

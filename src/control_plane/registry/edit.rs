//! Editing a service in place (`PATCH /services/{uuid}`), without dropping a request.
//!
//! An edit is checked exactly as a registration of the stored fields with the edit's
//! over them; a refused one changes nothing. Then:
//! - a service that does not run just keeps its new definition;
//! - one whose type configuration is unchanged (only its description, hosts or path
//!   changed) has its routes moved at once, nothing restarted;
//! - otherwise a new instance is started beside the old one, the routes move to it in
//!   one swap, and the old one is stopped once its last request is answered (bounded by
//!   [`DRAIN`]); a type that cannot run two instances side by side is restarted.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::definition::{merged, Definition, Generic};
use super::{Life, Registry, RegistryError, ServiceView, Slot, Status};
use crate::contract::{AnyServiceType, Fields, RunningService};
use crate::data_plane::{Chain, Target};
use crate::util::lock;

/// The longest an old instance is given to finish its requests after an edit.
pub(crate) const DRAIN: Duration = Duration::from_secs(30);
/// How often a draining instance is looked at.
const DRAIN_CHECK: Duration = Duration::from_millis(20);

impl Registry {
    /// Edits service `uuid` with `edit`'s fields; the service as it is now.
    pub async fn edit(&self, uuid: Uuid, edit: &Fields) -> Result<ServiceView, RegistryError> {
        let _shared = self.gate.read().await;
        let (slot, mut life) = self.locked(uuid, false).await?;
        for key in ["name", "type"] {
            let current = if key == "name" {
                &slot.name
            } else {
                &slot.type_name
            };
            if edit.get(key).is_some_and(|value| value != current) {
                return Err(RegistryError::InvalidField {
                    field: key.to_owned(),
                    message: format!("The field '{key}' of a service cannot be changed."),
                });
            }
        }
        let fields = merged(&slot.definition().fields, edit);
        self.redefine(&slot, &mut life, &fields).await
    }

    /// Replaces the definition of `slot` by the one `fields` make, checked as a
    /// registration; the caller holds its lifecycle lock.
    pub(super) async fn redefine(
        &self,
        slot: &Arc<Slot>,
        life: &mut Life,
        fields: &Fields,
    ) -> Result<ServiceView, RegistryError> {
        let uuid = slot.uuid;
        if let Some(problem) = &slot.corrupt {
            return Err(RegistryError::Corrupt(problem.clone()));
        }
        let Some(service_type) = slot.service_type.clone() else {
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let current = slot.definition();
        let generic = Generic::read(fields)?;
        self.check_authority(&slot.name, &generic.middlewares)?;
        super::check_node(&slot.type_name, &generic)?;
        let ctx = self.context(
            uuid,
            &slot.name,
            crate::contract::StatusReporter::detached(),
        );
        let config = service_type.register(&ctx, fields).await?;
        let next = Definition::new(generic, fields, config);
        let claims = next.claims();
        if let Some((route, owner)) = lock(&self.services).conflict(uuid, &claims) {
            return Err(RegistryError::RouteTaken { route, owner });
        }

        let restarted = self
            .put_definition(slot, life, &service_type, &current, next)
            .await?;
        let mut view = slot.view(false);
        view.restarted = restarted.then_some(true);
        Ok(view)
    }

    /// Saves `next` as the definition of `slot` and puts it in force without dropping
    /// a request; whether the service had to be restarted. The caller holds its
    /// lifecycle lock.
    pub(super) async fn put_definition(
        &self,
        slot: &Arc<Slot>,
        life: &mut Life,
        service_type: &Arc<dyn AnyServiceType>,
        current: &Definition,
        next: Definition,
    ) -> Result<bool, RegistryError> {
        let running = life.instance.is_some() && slot.status().should_run();
        // A program pinned to another node moves there.
        let reconfigured = next.config != current.config
            || (next.node != current.node && self.placement_of(slot).is_some());
        if !running || !reconfigured {
            self.store.update(&slot.record(&next)).await?;
            self.adopt(slot, current, next);
            Ok(false)
        } else if service_type.runs_side_by_side(&next.config) && self.placement_of(slot).is_none()
        {
            self.replace_beside(slot, life, service_type, current, next)
                .await?;
            Ok(false)
        } else {
            self.store.update(&slot.record(&next)).await?;
            self.adopt(slot, current, next);
            self.halt(slot, life).await;
            self.start_locked(slot, life).await?;
            Ok(true)
        }
    }

    /// Starts an instance of `next` beside the running one, saves `next`, moves the
    /// routes to the new instance in one swap and stops the old one once its requests
    /// are answered. If the new instance does not start, the old one answers on.
    pub(super) async fn replace_beside(
        &self,
        slot: &Arc<Slot>,
        life: &mut Life,
        service_type: &Arc<dyn AnyServiceType>,
        current: &Definition,
        next: Definition,
    ) -> Result<(), RegistryError> {
        let uuid = slot.uuid;
        let old_epoch = lock(&slot.state).epoch;
        let (epoch, abandon, hurry) = {
            let mut state = lock(&slot.state);
            let abandon = CancellationToken::new();
            state.abandon = Some(abandon.clone());
            // The old instance's: a fence hurries both.
            let hurry = state
                .hurry
                .get_or_insert_with(CancellationToken::new)
                .clone();
            (state.next_epoch(), abandon, hurry)
        };
        let ctx = self
            .context(uuid, &slot.name, self.reporter(slot, epoch))
            .with_abandon(abandon)
            .with_hurry(hurry);
        let started = service_type.start(&ctx, &next.config).await;
        let back_to_old = || {
            let mut state = lock(&slot.state);
            state.abandon = None;
            // The old instance answers on: its reports count again.
            state.epoch = old_epoch;
        };
        let instance = match started {
            Ok(instance) => instance,
            Err(error) => {
                back_to_old();
                return Err(error.into());
            }
        };
        if let Err(error) = self.store.update(&slot.record(&next)).await {
            back_to_old();
            if let Err(stop_error) = instance.stop().await {
                tracing::warn!(%uuid, error = %stop_error, "stop of a new instance after a failed save failed");
            }
            return Err(error.into());
        }
        lock(&slot.state).abandon = None;
        let old_target = lock(&slot.state).target.clone();
        let old = life.instance.take();
        self.adopt(slot, current, next);
        self.go_live(slot, life, instance, epoch)?;
        if let Some(old) = old {
            self.drain(uuid, old, old_target);
        }
        Ok(())
    }

    /// Makes `next` the definition of `slot` (saved already): its routes claimed, and
    /// published at once if the service answers.
    fn adopt(&self, slot: &Arc<Slot>, current: &Definition, next: Definition) {
        let claims = next.claims();
        lock(&self.services).reclaim(slot.uuid, &current.claims(), claims);
        // Middlewares are rebuilt only when they change: an edit of anything else
        // keeps their counts (rates, failed credentials).
        let chain = (next.middlewares != current.middlewares)
            .then(|| Chain::build(&next.middlewares, &slot.name, &self.hashing));
        let mut state = lock(&slot.state);
        if let Some(chain) = chain {
            state.chain = chain;
        }
        state.definition = Arc::new(next);
        if let (Some(target), Status::Running | Status::Starting) = (&state.target, state.status) {
            self.routes.publish(slot.routes(&state, target));
        }
    }

    /// Stops an instance that no longer answers once its last request is answered
    /// (every request holds its target) or [`DRAIN`] has passed, in the background.
    fn drain(&self, uuid: Uuid, instance: Arc<dyn RunningService>, target: Option<Arc<Target>>) {
        let closing = self.closing_token.clone();
        let task = self.runtime.spawn(async move {
            if let Some(target) = target {
                let deadline = tokio::time::Instant::now() + DRAIN;
                // Only this task holds it once every request is done.
                while Arc::strong_count(&target) > 1 && tokio::time::Instant::now() < deadline {
                    tokio::select! {
                        () = tokio::time::sleep(DRAIN_CHECK) => {}
                        () = closing.cancelled() => break,
                    }
                }
            }
            if let Err(error) = instance.stop().await {
                tracing::warn!(%uuid, %error, "a replaced instance did not stop cleanly");
            }
        });
        let mut draining = lock(&self.draining);
        draining.retain(|task| !task.is_finished());
        draining.push(task);
    }
}

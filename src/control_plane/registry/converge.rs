//! Applying a change another node made: the registry of this node is brought to what
//! the shared store says a service is (or to nothing, once it is gone).
//!
//! The store's row is the user's intent; this node's instance follows it. A row whose
//! status says the service runs gets an instance here (where the service may run
//! here); one that says it is stopped or registered loses its instance; a `failed` row
//! (an instance failed on some node) leaves this node's instance as it is. The writes
//! these steps would make are the change itself, already stored: they run
//! [`replaying`], which turns them into no-ops.

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::definition::Definition;
use super::{Life, Registry, RegistryError, Slot};
use crate::control_plane::store::{replaying, ServiceRecord, Status, StoreError};
use crate::data_plane::ServiceMeter;
use crate::util::lock;

impl Registry {
    /// Brings service `uuid` to what the store says of it now (gone, if nothing).
    /// The row is read once this node's own changes to the service are done (under
    /// its lifecycle lock), so a notice that comes late never undoes a newer change.
    /// A store that fails is the caller's to retry (the change is not applied); any
    /// other failure is this node's, and logged (a start that failed, say).
    pub async fn converge(&self, uuid: Uuid) -> Result<(), StoreError> {
        let _shared = self.gate.read().await;
        let outcome = replaying(async {
            let known = lock(&self.services).by_uuid.contains_key(&uuid);
            if known {
                let (slot, mut life) = self.locked(uuid, false).await?;
                match self.store.get(uuid).await? {
                    None => {
                        self.halt(&slot, &mut life).await;
                        self.forget(&slot, &mut life).await
                    }
                    Some(record) => self.converge_existing(&slot, &mut life, record).await,
                }
            } else {
                // Registrations of this node first: their row is theirs to adopt.
                let _registering = self.registering.lock().await;
                if lock(&self.services).by_uuid.contains_key(&uuid) {
                    return Ok(());
                }
                match self.store.get(uuid).await? {
                    None => Ok(()),
                    Some(record) => self.converge_new(record).await,
                }
            }
        })
        .await;
        match outcome {
            Ok(()) | Err(RegistryError::NotFound) => Ok(()),
            Err(RegistryError::Store(error)) => Err(error),
            Err(error) => {
                tracing::warn!(%uuid, %error, "could not apply a change made on another node");
                Ok(())
            }
        }
    }

    /// Every service this node knows.
    pub fn uuids(&self) -> Vec<Uuid> {
        lock(&self.services).by_uuid.keys().copied().collect()
    }

    async fn converge_new(&self, record: ServiceRecord) -> Result<(), RegistryError> {
        let uuid = record.uuid;
        let should_run = record.status.should_run();
        let service_type = self.types.get(&record.type_name).cloned();
        let slot = Slot::from_record(
            record,
            service_type,
            ServiceMeter::new(self.workers),
            &self.hashing,
        );
        if should_run {
            // Not running here yet: the start below makes it so.
            lock(&slot.state).status = Status::Registered;
        }
        let slot = Arc::new(slot);
        {
            let mut services = lock(&self.services);
            services.names.insert(slot.name.clone());
            services.reclaim(uuid, &[], slot.definition().claims());
            services.by_uuid.insert(uuid, Arc::clone(&slot));
        }
        if should_run {
            let mut life = slot.life.lock().await;
            self.start_locked(&slot, &mut life).await?;
        }
        Ok(())
    }

    async fn converge_existing(
        &self,
        slot: &Arc<Slot>,
        life: &mut Life,
        record: ServiceRecord,
    ) -> Result<(), RegistryError> {
        // A stop first: an edit that came with it must not start anything.
        if matches!(record.status, Status::Stopped | Status::Registered) {
            self.halt(slot, life).await;
            slot.set_status(record.status, &record.detail);
        }
        let (next, _) = Definition::stored(&record);
        let current = slot.definition();
        if next != *current {
            if let Some(service_type) = slot.service_type.clone() {
                self.put_definition(slot, life, &service_type, &current, next)
                    .await?;
            }
        }
        let runs_here = life.instance.is_some() && slot.status().should_run();
        if record.status.should_run() && !runs_here {
            self.start_locked(slot, life).await?;
        }
        Ok(())
    }

    /// Stops the program of service `uuid` here: this node could not renew its lease
    /// in time, and another node may take it. It is placed again once the database
    /// is back.
    pub async fn fence(&self, uuid: Uuid, deadline: Instant) {
        // Gone by the deadline whoever holds the service's lifecycle lock (a stop or a
        // restart waiting on the database): stopped from here too, at once. Stopping
        // a program twice is stopping it once.
        let mut stopping = None;
        if let Ok(slot) = self.slot(uuid) {
            let (running, hurry) = {
                let state = lock(&slot.state);
                (state.instance.clone(), state.hurry.clone())
            };
            // A start under way is given up, and whatever it launched is killed at
            // the deadline (a program that is not ready yet ignores SIGTERM too).
            slot.abandon_start();
            if let Some(hurry) = hurry {
                self.runtime.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
                    hurry.cancel();
                });
            }
            if let Some(instance) = running {
                let grace = deadline.saturating_duration_since(Instant::now());
                stopping = Some(self.runtime.spawn(async move {
                    if let Err(error) = instance.stop_within(grace).await {
                        tracing::warn!(%uuid, %error, "a fenced program did not stop cleanly");
                    }
                }));
            }
        }
        let Ok((slot, mut life)) = self.locked(uuid, true).await else {
            return;
        };
        self.halt_within(&slot, &mut life, Some(deadline)).await;
        // The halt may have found the instance's stop under way already: the fence is
        // over once that stop is (nothing is placed again before).
        if let Some(stopping) = stopping {
            let _ = stopping.await;
        }
        slot.set_status(
            Status::Failed,
            "Stopped on this node: it lost the shared database and, with it, the lease on the service.",
        );
    }

    /// Places service `uuid` again (its lease changed hands): stopped here, then
    /// started here or forwarded, as the cluster decides.
    pub async fn place_again(&self, uuid: Uuid) {
        let _shared = self.gate.read().await;
        let outcome = replaying(async {
            let (slot, mut life) = self.locked(uuid, true).await?;
            self.halt(&slot, &mut life).await;
            // What the store says now: the lease may have gone with a stop or an
            // unregistration that this node has yet to apply.
            let stored = self.store.get(uuid).await?;
            let stopped = stored
                .as_ref()
                .is_none_or(|record| matches!(record.status, Status::Stopped | Status::Registered));
            if stopped || matches!(slot.status(), Status::Stopped | Status::Registered) {
                if let Some(placement) = self.placement_of(&slot) {
                    placement.unfence(uuid);
                }
                return Ok(());
            }
            self.start_locked(&slot, &mut life).await
        })
        .await;
        if let Err(error) = outcome {
            // Gone, or never to start as it is: not to be tried again every second.
            let settled = matches!(
                error,
                RegistryError::NotFound
                    | RegistryError::Corrupt(_)
                    | RegistryError::TypeUnavailable(_)
            );
            if settled {
                if let Some(placement) = &self.placement {
                    placement.unfence(uuid);
                }
            }
            tracing::warn!(%uuid, %error, "could not place a service again");
        }
    }
}

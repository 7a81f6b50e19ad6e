//! The services of an in-process deployment, shared by the `LocalDeployment` that started them
//! and the data owners and computations made from it: any of them keeps the services running
//! while it lives, and `close()` stops them for all.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use engine::service::client::RemoteOwner;
use pyo3::prelude::*;

use crate::errors::Error;

/// `mutex`'s value, also after a thread panicked while holding it (nothing here is left half
/// updated by a panic: the engine reports errors as values).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Alice, bob and the dealer running in this process, until closed.
pub struct Services {
    deployment: Mutex<Option<engine::LocalDeployment>>,
    /// Every data owner made here, to close their connections before the services stop.
    owners: Mutex<Vec<Weak<Mutex<RemoteOwner>>>>,
}

impl Services {
    /// Share the running deployment `d`.
    pub fn new(d: engine::LocalDeployment) -> Arc<Services> {
        Arc::new(Services {
            deployment: Mutex::new(Some(d)),
            owners: Mutex::new(Vec::new()),
        })
    }

    /// The running deployment, or the error of a closed one.
    pub fn running(&self) -> PyResult<engine::LocalDeployment> {
        lock(&self.deployment)
            .clone()
            .ok_or_else(|| Error::new_err("the local deployment is closed"))
    }

    /// Whether `close()` was called.
    pub fn closed(&self) -> bool {
        lock(&self.deployment).is_none()
    }

    /// Keep a data owner's connections, to close them when the services stop.
    pub fn track(&self, owner: &Arc<Mutex<RemoteOwner>>) {
        let mut owners = lock(&self.owners);
        owners.retain(|o| o.strong_count() > 0);
        owners.push(Arc::downgrade(owner));
    }

    /// Close the data owners' connections, then stop the services (blocking: call it without
    /// the GIL); idempotent.
    pub fn close(&self) {
        let owners: Vec<_> = std::mem::take(&mut *lock(&self.owners));
        let d = lock(&self.deployment).take();
        for o in owners.iter().filter_map(Weak::upgrade) {
            lock(&o).disconnect();
        }
        drop(d);
    }
}

//! Model names: what is served under a name, and the claims that keep two uploads or deletes of one
//! name from running at once (alice alone orders them; bob claims a name at her join).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::deploy::Role;
use crate::error::{EngineError, Result};

use super::ServedModel;
use super::{poisoned, PartyService};

/// A model name reserved by an upload or a delete in progress (released on drop).
pub(super) struct NameClaim<'a> {
    pub(super) names: &'a Mutex<HashSet<String>>,
    pub(super) name: String,
}

impl Drop for NameClaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut n) = self.names.lock() {
            n.remove(&self.name);
        }
    }
}

/// A model name an upload or a delete works on, and what must be served under it.
#[derive(Clone, Copy)]
pub(super) struct NameUse<'n> {
    pub(super) name: &'n str,
    /// `None`: nothing (an upload); `Some(uid)`: the model of that upload (a delete).
    pub(super) serving: Option<u64>,
}

impl PartyService {
    /// Alice: reserve the name before she joins bob; bob only checks it now and claims it at
    /// her join (see [`Self::join_peer`]).
    pub(super) fn claim_first(&self, u: NameUse<'_>) -> Result<Option<NameClaim<'_>>> {
        if self.index == 0 {
            self.claim_name(u).map(Some)
        } else {
            self.check_use(u).map(|()| None)
        }
    }

    /// Reserve a name for an upload or a delete (refused while another one works on it), and
    /// check that what is served under it is what the request expects.
    pub(super) fn claim_name(&self, u: NameUse<'_>) -> Result<NameClaim<'_>> {
        if !self
            .claimed
            .lock()
            .map_err(|_| poisoned())?
            .insert(u.name.to_string())
        {
            return Err(EngineError::Invalid(format!(
                "model '{}' is being uploaded or deleted by another request",
                u.name
            )));
        }
        let claim = NameClaim {
            names: &self.claimed,
            name: u.name.to_string(),
        };
        self.check_use(u)?;
        Ok(claim)
    }

    /// Is what is served under `u.name` what the request expects?
    pub(super) fn check_use(&self, u: NameUse<'_>) -> Result<()> {
        let served = self
            .models
            .read()
            .map_err(|_| poisoned())?
            .get(u.name)
            .map(|m| m.meta.uid);
        let name = u.name;
        match (served, u.serving) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(_), None) => Err(EngineError::Refused(format!(
                "model '{name}' already exists (delete it first)"
            ))),
            (None, Some(_)) => Err(EngineError::UnknownModel {
                name: name.to_string(),
            }),
            (Some(_), Some(_)) => Err(EngineError::Invalid(format!(
                "model '{name}' was replaced while this request waited"
            ))),
        }
    }

    pub(super) fn model(&self, name: &str) -> Result<Arc<ServedModel>> {
        self.models
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownModel {
                name: name.to_string(),
            })
    }

    pub(super) fn check_owner(&self, role: &Role, m: &ServedModel) -> Result<()> {
        if role != &Role::ModelOwner(m.meta.owner.clone()) {
            return Err(EngineError::Refused(format!(
                "model '{}' belongs to model owner '{}'; {role} may not delete it",
                m.meta.name, m.meta.owner
            )));
        }
        Ok(())
    }
}

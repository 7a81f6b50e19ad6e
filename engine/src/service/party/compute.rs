//! Custom secure computations at a party: programs that an in-process deployment hands this
//! service ([`crate::service::computation::Computation`]), run on the same party runtime, links
//! and dealer as every data owner's request.
//!
//! A data owner opens a computation with [`Request::Compute`]; the parties join each other and
//! the dealer as for any request ([`JoinKind::Compute`]: no model, fresh seeds), and the second
//! data owner, if any, joins with [`Request::Attach`]. Each party then runs the programs it is
//! handed, one after another, on one [`Party`] that keeps its shares between programs, until the
//! computation ends. Programs come only from the process that runs the service: a service
//! across hosts has none, and refuses the request.
//!
//! [`Request::Compute`]: crate::wire::control::Request::Compute
//! [`Request::Attach`]: crate::wire::control::Request::Attach

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::party::Party;
use crate::transport::{Link, PartyId, StreamTransport, Transport};
use crate::wire::control::{DealerJoin, JoinKind};

use super::{poisoned, PartyService};

/// One program run by one party: the same code on both (SPMD), with this party's own state.
pub(crate) type Job = Box<dyn FnOnce(&mut Party) -> Box<dyn Any + Send> + Send>;

/// What a program returned (its boxed result), or why it could not run.
pub(crate) type JobOutcome = std::result::Result<Box<dyn Any + Send>, String>;

/// A computation's programs for this party, registered by the in-process deployment before
/// the computation's request is sent.
pub(crate) struct ProgramSlot {
    /// Programs, in order; closed when the computation ends.
    pub(crate) jobs: Receiver<Job>,
    /// Each program's outcome, in order.
    pub(crate) outcomes: Sender<JobOutcome>,
    /// Where the second data owner's link arrives, when one joins.
    pub(crate) attached: Option<Receiver<Attached>>,
}

/// The second data owner's link, lent to a computation; given back on `back` when it ends.
pub(crate) struct Attached {
    role: Role,
    link: Link,
    back: Sender<Link>,
}

impl PartyService {
    /// Register a computation's programs (and, when a second data owner joins it, the way its
    /// link reaches the computation) before the computation's request arrives.
    pub(crate) fn register_program(
        &self,
        request: u64,
        slot: ProgramSlot,
        attach: Option<Sender<Attached>>,
    ) -> Result<()> {
        self.programs
            .lock()
            .map_err(|_| poisoned())?
            .insert(request, slot);
        if let Some(tx) = attach {
            self.attach_to
                .lock()
                .map_err(|_| poisoned())?
                .insert(request, tx);
        }
        Ok(())
    }

    /// Forget a computation's registration that no request used (its owner gave up).
    pub(crate) fn unregister_program(&self, request: u64) {
        if let Ok(mut p) = self.programs.lock() {
            p.remove(&request);
        }
        if let Ok(mut a) = self.attach_to.lock() {
            a.remove(&request);
        }
    }

    /// Run computation `request` for the data owner on `net` (see the module documentation).
    pub(super) fn compute(
        self: &Arc<Self>,
        request: u64,
        frac_bits: u32,
        attach: bool,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<()> {
        let checked = (|| {
            let slot = self
                .programs
                .lock()
                .map_err(|_| poisoned())?
                .remove(&request)
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "no program for computation {request} here: custom computations run \
                         only on an in-process deployment (LocalDeployment::computation)"
                    ))
                })?;
            if attach && slot.attached.is_none() {
                return Err(EngineError::Invalid(format!(
                    "computation {request} expects a second data owner that was not registered"
                )));
            }
            Ok((slot, FixedPoint::new(frac_bits)?))
        })();
        let (mut slot, fx) = self.checked_or_cancel(request, checked)?;
        let join = DealerJoin {
            request,
            party: self.index as u8,
            model: String::new(),
            kind: JoinKind::Compute,
            frac_bits,
        };
        let sent = self.send_join(net, &join);
        let reused = self.checked_or_cancel(request, sent)?;
        self.join_peer(request, digest, &[], None, net)?;
        let grant = self.seed_answer(net, &join, reused)?;
        let lent = match slot.attached.take().filter(|_| attach) {
            Some(rx) => {
                let timeout = self.net.options().timeout;
                let a = rx.recv_timeout(timeout).map_err(|_| EngineError::Timeout {
                    me: self.me(),
                    peer: PartyId::ModelOwner,
                    after: timeout,
                })?;
                net.resume_link(a.role.party_id(), a.link, 0, 0);
                Some((a.role.party_id(), a.back))
            }
            None => None,
        };
        let role = if self.index == 0 {
            crate::memory::Role::Alice
        } else {
            crate::memory::Role::Bob
        };
        let ran = self.with_party(net, fx, Some(grant), |p| {
            let _role = crate::memory::RoleScope::enter(role);
            while let Ok(job) = slot.jobs.recv() {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(p)))
                    .map_err(|_| "the program panicked".to_string());
                if slot.outcomes.send(outcome).is_err() {
                    break;
                }
            }
            Ok(())
        });
        if let Some((owner, back)) = lent {
            if let Some(link) = net.take_link(owner) {
                let _ = back.send(link);
            }
        }
        ran?;
        if self.index == 1 {
            self.end_dealer(net, false, "")?;
        }
        self.release(net);
        Ok(())
    }

    /// Lend the link of the data owner on `net` to computation `to` until it ends (the owner
    /// talks to the computation on it meanwhile); then the link comes back for this request's
    /// reply.
    pub(super) fn attach(
        self: &Arc<Self>,
        role: &Role,
        to: u64,
        net: &mut StreamTransport,
    ) -> Result<()> {
        let tx = self
            .attach_to
            .lock()
            .map_err(|_| poisoned())?
            .remove(&to)
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "no computation {to} awaits a second data owner here"
                ))
            })?;
        let owner = role.party_id();
        let (link, sent, received) = net
            .take_link_state(owner)
            .ok_or_else(|| EngineError::Invalid(format!("{role} has no link to lend")))?;
        let (back, returned) = std::sync::mpsc::channel();
        tx.send(Attached {
            role: role.clone(),
            link,
            back,
        })
        .map_err(|_| {
            EngineError::Invalid(format!("computation {to} ended before {role} joined"))
        })?;
        let link = returned.recv().map_err(|_| EngineError::PartyFailed {
            party: self.me(),
            detail: format!("computation {to} ended without handing {role}'s link back"),
        })?;
        net.resume_link(owner, link, sent, received);
        Ok(())
    }
}

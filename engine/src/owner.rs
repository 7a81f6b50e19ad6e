//! A data owner's endpoint (model owner or client): the only place where two shares meet.
//! The same code serves an in-process deployment and a remote owner
//! ([`crate::service::client`]); only the transport differs.

use rayon::prelude::*;

use crate::dealer::{fill_words, MaterialRng};
use crate::error::{EngineError, Result};
use crate::memory::{Role, RoleScope};
use crate::transport::{step_code, PartyId, Transport};
use crate::wire::control::{decode, Reply, REPLY_STEP};
use crate::wire::tensor::{pack, unpack};

/// A data owner endpoint (model owner or client): splits its plaintext into shares and
/// reconstructs values revealed to it. It is the only place where two shares meet.
pub(crate) struct DataOwner {
    net: Box<dyn Transport>,
    rng: MaterialRng,
}

impl DataOwner {
    /// An owner endpoint over `net`, drawing masks from `rng`.
    pub(crate) fn new(net: Box<dyn Transport>, rng: MaterialRng) -> DataOwner {
        DataOwner { net, rng }
    }

    /// The owner's transport.
    pub(crate) fn net(&mut self) -> &mut dyn Transport {
        self.net.as_mut()
    }

    /// End this endpoint, handing back its transport.
    pub(crate) fn into_transport(self) -> Box<dyn Transport> {
        self.net
    }

    /// Split ring values into two uniformly random additive shares and send one to each party:
    /// `fill` writes the values into alice's message, which then becomes `values - mask` in
    /// place, with bob's share a fresh uniform mask written straight into his message. (No
    /// other copy of either is made: model weights are large.)
    pub(crate) fn send_shares_with(
        &mut self,
        shape: &[usize],
        fill: &mut dyn FnMut(&mut [u64]) -> Result<()>,
    ) -> Result<()> {
        let _role = RoleScope::enter(Role::Owner);
        let header = 1 + shape.len();
        let len: usize = shape.iter().product();
        let framed = || {
            let mut v = kernels::cpu::zeroed_words(header + len);
            v[..header].copy_from_slice(&pack(shape, &[]));
            v
        };
        let mut to_alice = framed();
        fill(&mut to_alice[header..])?;
        let mut to_bob = framed();
        fill_words(&mut self.rng, &mut to_bob[header..]);
        to_alice[header..]
            .par_iter_mut()
            .zip(&to_bob[header..])
            .for_each(|(a, m)| *a = a.wrapping_sub(*m));
        self.net.meter().set_step("share");
        self.net.send(PartyId::Alice, to_alice)?;
        self.net.send(PartyId::Bob, to_bob)
    }

    /// Receive both parties' shares of a revealed value and add them.
    pub(crate) fn receive_reveal(&mut self) -> Result<(Vec<usize>, Vec<u64>)> {
        let _role = RoleScope::enter(Role::Owner);
        self.net.meter().set_step("reveal");
        let m0 = self.receive_from(PartyId::Alice)?;
        let m1 = self.receive_from(PartyId::Bob)?;
        let (s0, v0) = unpack(&m0)?;
        let (s1, v1) = unpack(&m1)?;
        if s0 != s1 {
            return Err(EngineError::Protocol(format!(
                "revealed shares disagree on shape: {s0:?} vs {s1:?}"
            )));
        }
        Ok((
            s0,
            v0.iter().zip(v1).map(|(a, b)| a.wrapping_add(*b)).collect(),
        ))
    }

    /// Receive the next message of the current step from `party`; a party's failure reply in
    /// its place becomes an error naming the party and its reason.
    pub(crate) fn receive_from(&mut self, party: PartyId) -> Result<Vec<u64>> {
        let want = step_code(self.net.meter_ref().current_step());
        let (tag, msg) = self.net.recv_tagged(party)?;
        if tag == want {
            return Ok(msg);
        }
        if tag == step_code(REPLY_STEP) {
            if let Some(e) = decode::<Reply>(&msg, "reply")
                .ok()
                .and_then(|r| r.as_error(party))
            {
                return Err(e);
            }
        }
        Err(EngineError::Protocol(format!(
            "{party} sent a message of another step than '{}': out of step",
            self.net.meter_ref().current_step()
        )))
    }
}

//! A data owner's endpoint (model owner or client): the only place where two shares meet.
//! The same code serves an in-process deployment and a remote owner
//! ([`crate::service::client`]); only the transport differs.
//!
//! **Sharing with half the traffic.** To share a tensor `v`, the owner draws a fresh 256-bit
//! seed `s` from its OS-seeded generator, sends bob only `s` (his share is `G(s)`, the first
//! words of ChaCha12 keyed by `s`, which he expands himself) and alice `v - G(s)`. Security:
//! bob's view is a uniformly random seed, independent of `v`; alice's view is `v` masked by
//! `G(s)`, computationally indistinguishable from uniform for a ChaCha12 keystream under a key
//! she never sees (the same argument as the dealer's seed compression). The owner's traffic is
//! one share plus 32 bytes instead of two shares.

use rayon::prelude::*;

use rand_core::RngCore;

use crate::dealer::{fill_from_seed, MaterialRng};
use crate::error::{EngineError, Result};
use crate::memory::{Role, RoleScope};
use crate::transport::{step_code, PartyId, Transport};
use crate::wire::control::{decode, Reply, REPLY_STEP};
use crate::wire::tensor::{pack, pack_seed, unpack};

/// Words of the mask expanded at once when an owner masks alice's share (one task's slice).
const MASK_SLICE: usize = 4096;

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

    /// Split ring values into two additive shares and send one to each party: `fill` writes the
    /// values into alice's message, which then becomes `values - G(seed)` in place; bob gets
    /// only the fresh seed (see the module documentation). The mask is expanded in slices, so
    /// no copy of the tensor is made beyond alice's message (model weights are large).
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
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        to_alice[header..]
            .par_chunks_mut(MASK_SLICE)
            .enumerate()
            .for_each(|(i, values)| {
                let mut mask = [0u64; MASK_SLICE];
                let mask = &mut mask[..values.len()];
                fill_from_seed(&seed, i * MASK_SLICE, mask);
                for (v, m) in values.iter_mut().zip(mask.iter()) {
                    *v = v.wrapping_sub(*m);
                }
            });
        self.net.meter().set_step("share");
        self.net.send(PartyId::Alice, to_alice)?;
        self.net.send(PartyId::Bob, pack_seed(shape, &seed))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::transport::tcp_mesh;
    use crate::wire::tensor::{unpack_seed, SHARE_SEED_WORDS};

    /// Alice's message is `v - G(seed)`, bob's is the shape and the 4-word seed alone, and the
    /// two reconstruct `v` exactly, on odd lengths (1, 7, one slice, one word past a slice,
    /// several slices) and edge values (0, -1, the ends of the ring).
    #[test]
    fn bob_receives_a_seed_and_the_shares_reconstruct() {
        let seed: u64 = rand::random();
        eprintln!("seed {seed}");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let who = [PartyId::Client, PartyId::Alice, PartyId::Bob];
        let mut mesh = tcp_mesh(&who, Duration::from_secs(30)).unwrap();
        let mut alice = mesh.remove(&PartyId::Alice).unwrap();
        let mut bob = mesh.remove(&PartyId::Bob).unwrap();
        let net = mesh.remove(&PartyId::Client).unwrap();
        let mut owner = DataOwner::new(Box::new(net), MaterialRng::seed_from_u64(rng.gen()));
        alice.meter().set_step("share");
        bob.meter().set_step("share");
        for len in [1usize, 7, MASK_SLICE, MASK_SLICE + 1, 3 * MASK_SLICE + 5] {
            let edges = [0, u64::MAX, 1 << 63, (1 << 63) - 1, 1];
            let v: Vec<u64> = (0..len)
                .map(|i| edges.get(i).copied().unwrap_or_else(|| rng.gen()))
                .collect();
            let shape = [1, len];
            owner
                .send_shares_with(&shape, &mut |out| {
                    out.copy_from_slice(&v);
                    Ok(())
                })
                .unwrap();
            let to_alice = alice.recv(PartyId::Client).unwrap();
            let to_bob = bob.recv(PartyId::Client).unwrap();
            assert_eq!(to_bob.len(), 1 + shape.len() + SHARE_SEED_WORDS);
            let (got, a) = unpack(&to_alice).unwrap();
            assert_eq!(got, shape);
            let (got, s) = unpack_seed(&to_bob).unwrap();
            assert_eq!(got, shape);
            let mut b = vec![0u64; len];
            fill_from_seed(&s, 0, &mut b);
            let sum: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
            assert_eq!(sum, v, "length {len}");
            if len > 1 {
                assert_ne!(a, &v[..], "alice's share is masked");
            }
        }
        // A seeded share whose header lies is refused before anything is expanded.
        assert!(unpack_seed(&[2, 1 << 40, 1 << 40, 1, 2, 3, 4]).is_err());
        assert!(unpack_seed(&[1, 5, 1, 2, 3]).is_err());
        assert!(unpack_seed(&[]).is_err());
    }
}

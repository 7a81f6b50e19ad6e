//! An in-process deployment: alice, bob and the dealer on their own threads, data owners on the
//! caller's side, all connected by metered channels.

use std::any::Any;
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kernels::{backend_from_kind, BackendKind};
use rand_core::SeedableRng;

use crate::dealer::{run_dealer, DealerPolicy, DealerRng, MaterialRng, OP_SHUTDOWN};
use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;
use crate::memory::{Role, RoleScope};
use crate::owner::DataOwner;
use crate::party::Party;
use crate::transport::{
    channel_mesh, tcp_mesh, tls_mesh, PartyId, StreamOptions, TrafficStats, Transport,
    TransportKind,
};

/// How to set up a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Compute backend of both parties.
    pub backend: BackendKind,
    /// Fixed-point format.
    pub fixed: FixedPoint,
    /// How long a party waits for a message before failing with a timeout.
    pub timeout: Duration,
    /// `Some(seed)` only in tests: makes all randomness reproducible. `None`: OS entropy.
    pub test_seed: Option<u64>,
    /// How the endpoints talk: in-process channels (default) or loopback TCP.
    pub transport: TransportKind,
    /// Tune the process's allocator for large share buffers (see [`crate::alloc`]); on by
    /// default, process-wide.
    pub tune_allocator: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            backend: BackendKind::Cpu,
            fixed: FixedPoint::default(),
            timeout: Duration::from_secs(300),
            test_seed: None,
            transport: TransportKind::Channels,
            tune_allocator: true,
        }
    }
}

/// A handle to a secret tensor held as shares by alice and bob (no data, just its id and shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedTensor {
    id: u64,
    shape: Vec<usize>,
}

impl SharedTensor {
    /// The store id on both parties.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

type Job = Box<dyn FnOnce(&mut Party) -> Box<dyn Any + Send> + Send>;

struct PartyThread {
    jobs: Option<Sender<Job>>,
    results: Receiver<Box<dyn Any + Send>>,
    handle: Option<JoinHandle<()>>,
}

/// Alice, bob and the dealer running in-process, plus the two data owners.
pub struct Session {
    config: SessionConfig,
    parties: Vec<PartyThread>,
    dealer: Option<JoinHandle<Result<()>>>,
    owners: HashMap<PartyId, DataOwner>,
    backend_desc: String,
}

impl Session {
    /// Start the parties and the dealer.
    pub fn new(config: SessionConfig) -> Result<Session> {
        if config.tune_allocator {
            crate::alloc::tune_allocator();
        }
        let mut mesh: std::collections::HashMap<PartyId, Box<dyn Transport>> =
            match config.transport {
                TransportKind::Channels => channel_mesh(&PartyId::ALL, config.timeout)
                    .into_iter()
                    .map(|(k, v)| (k, Box::new(v) as Box<dyn Transport>))
                    .collect(),
                TransportKind::Tcp => tcp_mesh(&PartyId::ALL, config.timeout)?
                    .into_iter()
                    .map(|(k, v)| (k, Box::new(v) as Box<dyn Transport>))
                    .collect(),
                TransportKind::Tls => {
                    tls_mesh(&PartyId::ALL, StreamOptions::with_timeout(config.timeout))?
                        .into_iter()
                        .map(|(k, v)| (k, Box::new(v) as Box<dyn Transport>))
                        .collect()
                }
            };
        let dealer_net = mesh.remove(&PartyId::Dealer).expect("dealer endpoint");
        // Bob's second link to the dealer, for his background pool workers.
        let mut pool_mesh: HashMap<PartyId, Box<dyn Transport>> = match config.transport {
            TransportKind::Channels => {
                channel_mesh(&[PartyId::Bob, PartyId::Dealer], config.timeout)
                    .into_iter()
                    .map(|(k, v)| (k, Box::new(v) as Box<dyn Transport>))
                    .collect()
            }
            TransportKind::Tcp => tcp_mesh(&[PartyId::Bob, PartyId::Dealer], config.timeout)?
                .into_iter()
                .map(|(k, v)| (k, Box::new(v) as Box<dyn Transport>))
                .collect(),
            TransportKind::Tls => tls_mesh(
                &[PartyId::Bob, PartyId::Dealer],
                StreamOptions::with_timeout(config.timeout),
            )?
            .into_iter()
            .map(|(k, v)| (k, Box::new(v) as Box<dyn Transport>))
            .collect(),
        };
        let dealer_pool_net = pool_mesh.remove(&PartyId::Dealer);
        let mut bob_pool_net = pool_mesh.remove(&PartyId::Bob);
        let policy = DealerPolicy::for_session(config.fixed.frac_bits());
        let source = match config.test_seed {
            Some(s) => DealerRng::TestSeed(s),
            None => DealerRng::Os,
        };
        let dealer = std::thread::Builder::new()
            .name("dealer".into())
            .spawn(move || run_dealer(dealer_net, dealer_pool_net, source, policy))
            .map_err(|e| EngineError::Invalid(format!("cannot spawn dealer thread: {e}")))?;
        let mut backends = Vec::new();
        for _ in 0..2 {
            backends.push(backend_from_kind(config.backend)?);
        }
        let backend_desc = backends[0].describe();
        let mut parties = Vec::new();
        for (index, backend) in backends.into_iter().enumerate() {
            let net = mesh
                .remove(&PartyId::compute(index))
                .expect("party endpoint");
            let (job_tx, job_rx) = channel::<Job>();
            let (res_tx, res_rx) = channel::<Box<dyn Any + Send>>();
            let fixed = config.fixed;
            let pool_net = if index == 1 {
                bob_pool_net.take()
            } else {
                None
            };
            let handle = std::thread::Builder::new()
                .name(PartyId::compute(index).to_string())
                .spawn(move || {
                    crate::memory::set_thread_role(if index == 0 {
                        crate::memory::Role::Alice
                    } else {
                        crate::memory::Role::Bob
                    });
                    let mut party = match Party::new(index, net, backend, fixed) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = res_tx.send(Box::new(Err::<(), _>(e)));
                            return;
                        }
                    };
                    if let Some(link) = pool_net {
                        party.set_pool_link(link);
                    }
                    while let Ok(job) = job_rx.recv() {
                        let out = job(&mut party);
                        if res_tx.send(out).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| EngineError::Invalid(format!("cannot spawn party thread: {e}")))?;
            parties.push(PartyThread {
                jobs: Some(job_tx),
                results: res_rx,
                handle: Some(handle),
            });
        }
        let mut owners = HashMap::new();
        for id in [PartyId::ModelOwner, PartyId::Client] {
            let rng = match config.test_seed {
                Some(s) => MaterialRng::seed_from_u64(s ^ ((id as u64 + 1) * 0x9E37_79B9)),
                None => MaterialRng::from_entropy(),
            };
            owners.insert(
                id,
                DataOwner::new(mesh.remove(&id).expect("owner endpoint"), rng),
            );
        }
        Ok(Session {
            config,
            parties,
            dealer: Some(dealer),
            owners,
            backend_desc,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Description of the compute backend.
    pub fn backend_description(&self) -> &str {
        &self.backend_desc
    }

    /// Run `program` on alice and bob concurrently (each on its own thread, with its own state)
    /// and return both results. A program is the same code for both parties (SPMD).
    pub fn run<R, F>(&mut self, program: F) -> Result<[R; 2]>
    where
        R: Send + 'static,
        F: Fn(&mut Party) -> Result<R> + Send + Sync + 'static,
    {
        let program = Arc::new(program);
        for (i, p) in self.parties.iter().enumerate() {
            let prog = program.clone();
            let job: Job = Box::new(move |party: &mut Party| Box::new(prog(party)));
            p.jobs
                .as_ref()
                .expect("running")
                .send(job)
                .map_err(|_| EngineError::PartyFailed {
                    party: PartyId::compute(i),
                    detail: "party thread has stopped".into(),
                })?;
        }
        let mut out: Vec<Result<R>> = Vec::with_capacity(2);
        for (i, p) in self.parties.iter().enumerate() {
            let any = p.results.recv().map_err(|_| EngineError::PartyFailed {
                party: PartyId::compute(i),
                detail: "party thread panicked".into(),
            })?;
            let r = any
                .downcast::<Result<R>>()
                .map_err(|_| EngineError::PartyFailed {
                    party: PartyId::compute(i),
                    detail: "party failed during set-up".into(),
                })?;
            out.push(*r);
        }
        let b = out.pop().expect("bob");
        let a = out.pop().expect("alice");
        if a.is_err() || b.is_err() {
            // A failed program may leave preprocessed material that no protocol consumed; drop
            // it on both parties so the next program starts in step.
            self.clear_material();
        }
        Ok([a?, b?])
    }

    fn clear_material(&mut self) {
        // Cannot fail, so this does not recurse.
        let _ = self.run(|p| {
            p.clear_material();
            Ok(())
        });
    }

    /// `owner` fixed-point encodes `values` and shares them to alice and bob.
    pub fn share(
        &mut self,
        owner: PartyId,
        shape: &[usize],
        values: &[f64],
    ) -> Result<SharedTensor> {
        let encoded = {
            let _role = RoleScope::enter(Role::Owner);
            self.config.fixed.encode(values)?
        };
        self.share_ring(owner, shape, &encoded)
    }

    /// `owner` shares already-encoded ring values.
    pub fn share_ring(
        &mut self,
        owner: PartyId,
        shape: &[usize],
        values: &[u64],
    ) -> Result<SharedTensor> {
        self.send_shares(owner, shape, values)?;
        let s = shape.to_vec();
        let [a, b] = self.run(move |p| {
            let x = p.receive_share(owner, &s)?;
            Ok(p.keep(x))
        })?;
        Ok(SharedTensor {
            id: agreed_id(a, b)?,
            shape: shape.to_vec(),
        })
    }

    /// `owner` splits ring values into two shares and sends one to each party, without waiting:
    /// a party program must then take them with [`Party::receive_share`] (lets one program
    /// receive inputs and compute in a single session run).
    pub fn send_shares(&mut self, owner: PartyId, shape: &[usize], values: &[u64]) -> Result<()> {
        if shape.iter().product::<usize>() != values.len() {
            return Err(shape_err(
                "share",
                format!("shape {shape:?} does not hold {} values", values.len()),
            ));
        }
        self.owner(owner)?.send_shares_with(shape, &mut |out| {
            out.copy_from_slice(values);
            Ok(())
        })
    }

    /// `owner` shares `[shape]` values that `fill` writes (encoded ring values), without
    /// waiting (see [`Session::send_shares`]): lets an owner stream a tensor from its source
    /// straight into the messages.
    pub fn send_shares_filled(
        &mut self,
        owner: PartyId,
        shape: &[usize],
        fill: &mut dyn FnMut(&mut [u64]) -> Result<()>,
    ) -> Result<()> {
        self.owner(owner)?.send_shares_with(shape, fill)
    }

    /// Reveal a shared tensor to `owner` only; returns the ring values the owner reconstructs.
    pub fn reveal_ring(&mut self, owner: PartyId, x: &SharedTensor) -> Result<Vec<u64>> {
        self.owner(owner)?;
        let id = x.id;
        self.run(move |p| {
            let s = p.kept(id)?;
            p.reveal_to(owner, &s)
        })?;
        Ok(self.owner(owner)?.receive_reveal()?.1)
    }

    /// Reveal to `owner` and decode as fixed point.
    pub fn reveal(&mut self, owner: PartyId, x: &SharedTensor) -> Result<Vec<f64>> {
        let ring = self.reveal_ring(owner, x)?;
        Ok(self.config.fixed.decode(&ring))
    }

    /// Receive a reveal that a party program already sent to `owner`.
    pub fn receive_revealed(&mut self, owner: PartyId) -> Result<(Vec<usize>, Vec<u64>)> {
        self.owner(owner)?.receive_reveal()
    }

    /// The endpoint of data owner `id`.
    pub(crate) fn owner_mut(&mut self, id: PartyId) -> Result<&mut DataOwner> {
        self.owner(id)
    }

    fn owner(&mut self, id: PartyId) -> Result<&mut DataOwner> {
        self.owners
            .get_mut(&id)
            .ok_or_else(|| EngineError::Invalid(format!("{id} is not a data owner")))
    }

    /// Traffic counted by alice and bob so far.
    pub fn traffic(&mut self) -> Result<[TrafficStats; 2]> {
        self.run(|p| Ok(p.traffic()))
    }

    /// Wrap a store id as a handle (for programs that keep shares themselves).
    pub fn handle(id: u64, shape: &[usize]) -> SharedTensor {
        SharedTensor {
            id,
            shape: shape.to_vec(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ask the dealer to stop through bob's link, then close the parties.
        let _ = self.run(|p| {
            if p.index() == 1 {
                p.send_to("dealer", PartyId::Dealer, vec![OP_SHUTDOWN])?;
            }
            Ok(())
        });
        for p in &mut self.parties {
            p.jobs.take();
            if let Some(h) = p.handle.take() {
                let _ = h.join();
            }
        }
        if let Some(d) = self.dealer.take() {
            let _ = d.join();
        }
    }
}

/// The store id both parties returned for the same object; they advance identically, so a
/// difference means the parties are out of step (checked in release builds too).
pub fn agreed_id(alice: u64, bob: u64) -> Result<u64> {
    if alice != bob {
        return Err(EngineError::Protocol(format!(
            "alice and bob disagree on a store id ({alice} vs {bob}): the parties are out of step"
        )));
    }
    Ok(alice)
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_ids_must_agree() {
        assert_eq!(super::agreed_id(7, 7).unwrap(), 7);
        let e = super::agreed_id(7, 8).unwrap_err().to_string();
        assert!(
            e.contains("alice and bob disagree on a store id (7 vs 8)"),
            "{e}"
        );
    }
}

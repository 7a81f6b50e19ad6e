//! Custom secure computations on an in-process deployment: the embedding API.
//!
//! A [`Computation`] is one long request on the deployment's own services: alice and bob run
//! the programs it hands them (the same code on both, each with its own shares), on the same
//! party runtime, links and dealer as uploads and classifications. The client and the model
//! owner share inputs with it and receive what is revealed to them.
//!
//! ```
//! use engine::service::computation::Computation;
//! use engine::service::local::{LocalConfig, LocalDeployment};
//! use engine::{FixedPoint, PartyId};
//!
//! let d = LocalDeployment::start(LocalConfig::default()).unwrap();
//! let mut c = Computation::open(&d, FixedPoint::default()).unwrap();
//! let x = c.share(PartyId::Client, &[2, 2], &[1.0, -2.0, 3.0, -4.0]).unwrap();
//! let y = c.share(PartyId::ModelOwner, &[2, 2], &[0.5, 0.0, 0.0, 0.5]).unwrap();
//! let (xi, yi) = (x.id(), y.id());
//! // One program, run by alice and bob on their own shares.
//! let [z, _] = c
//!     .run(move |p| {
//!         let z = p.matmul(&p.kept(xi)?, &p.kept(yi)?)?;
//!         let r = p.relu(&z)?;
//!         Ok(p.keep(r))
//!     })
//!     .unwrap();
//! let out = c.reveal(PartyId::Client, &Computation::handle(z, &[2, 2])).unwrap();
//! assert_eq!(out, vec![0.5, 0.0, 1.5, 0.0]);
//! ```

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;
use crate::memory::{Role as MemoryRole, RoleScope};
use crate::nn::plan::ModelPlan;
use crate::nn::range::{check_inputs, ModelBounds};
use crate::nn::shared::SharedModel;
use crate::nn::source::ModelSource;
use crate::owner::DataOwner;
use crate::party::Party;
use crate::service::client::{RemoteOwner, RequestStats};
use crate::service::local::LocalDeployment;
use crate::service::party::{Job, JobOutcome, PartyService, ProgramSlot};
use crate::transport::{PartyId, TrafficStats};
use crate::wire::control::Request;

/// A handle to a secret tensor held as shares by alice and bob (its store id and shape; no
/// data).
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

/// One data owner of a computation: its connections and its endpoint of the request.
struct Owner {
    conn: RemoteOwner,
    endpoint: Option<DataOwner>,
    /// The request whose reply ends this owner's part.
    request: u64,
}

/// A custom secure computation (see the module documentation). Dropping it ends the
/// computation: the parties drop its shares and answer its request.
pub struct Computation {
    fixed: FixedPoint,
    request: u64,
    owners: HashMap<PartyId, Owner>,
    jobs: Vec<Sender<Job>>,
    outcomes: Vec<Receiver<JobOutcome>>,
    parties: Vec<Arc<PartyService>>,
    /// Keeps the services running while the computation lives (dropped last: the owners'
    /// connections close first).
    deployment: LocalDeployment,
}

impl Computation {
    /// Open a custom secure computation at `fixed` precision on `deployment`'s services, with
    /// its client (who opens it) and model owner (who joins it) as the data owners.
    pub fn open(deployment: &LocalDeployment, fixed: FixedPoint) -> Result<Computation> {
        let parties = deployment.party_services();
        let mut client = deployment.client()?;
        let mut model_owner = deployment.model_owner()?;
        let deployment = deployment.clone();
        let request = client.fresh_request_id();
        let mut jobs = Vec::new();
        let mut outcomes = Vec::new();
        for p in &parties {
            let (job_tx, job_rx) = channel();
            let (out_tx, out_rx) = channel();
            let (attach_tx, attach_rx) = channel();
            p.register_program(
                request,
                ProgramSlot {
                    jobs: job_rx,
                    outcomes: out_tx,
                    attached: Some(attach_rx),
                },
                Some(attach_tx),
            )?;
            jobs.push(job_tx);
            outcomes.push(out_rx);
        }
        let opened = (|| {
            let c = client.begin(&Request::Compute {
                request,
                frac_bits: fixed.frac_bits(),
                attach: true,
            })?;
            let attach = model_owner.fresh_request_id();
            let m = model_owner.begin(&Request::Attach {
                request: attach,
                to: request,
            })?;
            // From now on the model owner talks inside the computation's request.
            let mut m = m;
            m.net().set_request_id(request);
            Ok::<_, EngineError>((c, m, attach))
        })();
        let (c, m, attach) = match opened {
            Ok(x) => x,
            Err(e) => {
                for p in &parties {
                    p.unregister_program(request);
                }
                return Err(e);
            }
        };
        let mut owners = HashMap::new();
        owners.insert(
            PartyId::Client,
            Owner {
                conn: client,
                endpoint: Some(c),
                request,
            },
        );
        owners.insert(
            PartyId::ModelOwner,
            Owner {
                conn: model_owner,
                endpoint: Some(m),
                request: attach,
            },
        );
        Ok(Computation {
            fixed,
            request,
            owners,
            jobs,
            outcomes,
            parties,
            deployment,
        })
    }

    /// The computation's fixed-point format.
    pub fn fixed_point(&self) -> FixedPoint {
        self.fixed
    }

    /// Description of the parties' compute backend.
    pub fn backend_description(&self) -> &str {
        self.deployment.backend_description()
    }

    /// The deployment the computation runs on.
    pub fn deployment(&self) -> &LocalDeployment {
        &self.deployment
    }

    /// The computation's request id (in the services' logs).
    pub fn id(&self) -> u64 {
        self.request
    }

    /// Run `program` on alice and bob concurrently (each on its own thread, with its own state)
    /// and return both results. A program is the same code for both parties (SPMD).
    pub fn run<R, F>(&mut self, program: F) -> Result<[R; 2]>
    where
        R: Send + 'static,
        F: Fn(&mut Party) -> Result<R> + Send + Sync + 'static,
    {
        let program = Arc::new(program);
        for (i, tx) in self.jobs.iter().enumerate() {
            let prog = program.clone();
            let job: Job = Box::new(move |party: &mut Party| Box::new(prog(party)));
            tx.send(job).map_err(|_| self.stopped(i))?;
        }
        let mut out: Vec<Result<R>> = Vec::with_capacity(2);
        for i in 0..self.outcomes.len() {
            let outcome = self.outcomes[i].recv().map_err(|_| self.stopped(i))?;
            let r = outcome
                .map_err(|why| EngineError::PartyFailed {
                    party: PartyId::compute(i),
                    detail: why,
                })?
                .downcast::<Result<R>>()
                .map_err(|_| EngineError::PartyFailed {
                    party: PartyId::compute(i),
                    detail: "the program returned another type".into(),
                })?;
            out.push(*r);
        }
        let b = out.pop().expect("bob");
        let a = out.pop().expect("alice");
        if a.is_err() || b.is_err() {
            // A failed program may leave preprocessed material that no protocol consumed; drop
            // it on both parties so the next program starts in step.
            let _ = self.run_unchecked(|p| p.clear_material());
        }
        Ok([a?, b?])
    }

    fn run_unchecked(&mut self, f: fn(&mut Party)) -> Result<()> {
        for tx in &self.jobs {
            let job: Job = Box::new(move |party: &mut Party| {
                f(party);
                Box::new(())
            });
            let _ = tx.send(job);
        }
        for rx in &self.outcomes {
            let _ = rx.recv();
        }
        Ok(())
    }

    fn stopped(&self, i: usize) -> EngineError {
        EngineError::PartyFailed {
            party: PartyId::compute(i),
            detail: format!(
                "computation {} stopped at this party (its log says why)",
                self.request
            ),
        }
    }

    fn owner(&mut self, id: PartyId) -> Result<&mut DataOwner> {
        self.owners
            .get_mut(&id)
            .and_then(|o| o.endpoint.as_mut())
            .ok_or_else(|| EngineError::Invalid(format!("{id} is not a data owner")))
    }

    /// `owner` fixed-point encodes `values` and shares them to alice and bob.
    pub fn share(
        &mut self,
        owner: PartyId,
        shape: &[usize],
        values: &[f64],
    ) -> Result<SharedTensor> {
        let encoded = {
            let _role = RoleScope::enter(MemoryRole::Owner);
            self.fixed.encode(values)?
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
    /// a program must then take them with [`Party::receive_share`] (lets one program receive
    /// inputs and compute in a single run).
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
    /// waiting (see [`Computation::send_shares`]).
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
        Ok(self.fixed.decode(&ring))
    }

    /// Receive a reveal that a program already sent to `owner`.
    pub fn receive_revealed(&mut self, owner: PartyId) -> Result<(Vec<usize>, Vec<u64>)> {
        self.owner(owner)?.receive_reveal()
    }

    /// [`Self::share_model_with`] with the default bounds (inputs within
    /// [`crate::nn::range::DEFAULT_INPUT_BOUND`], worst-case analysis).
    pub fn share_model(&mut self, owner: PartyId, model: &dyn ModelSource) -> Result<SharedModel> {
        self.share_model_with(owner, model, &ModelBounds::default())
    }

    /// `owner` fixed-point encodes `model` and shares it with alice and bob inside this
    /// computation, the same way an upload does ([`ModelPlan::send_layer`] /
    /// [`ModelPlan::build_layer`]): each weight becomes a fixed operand (its mask opened once).
    /// Before anything is shared, the range analysis proves that no value can overflow for
    /// inputs within `bounds` (or refuses).
    pub fn share_model_with(
        &mut self,
        owner: PartyId,
        model: &dyn ModelSource,
        bounds: &ModelBounds,
    ) -> Result<SharedModel> {
        self.share_model_observed(owner, model, bounds, &mut |_, _| {})
    }

    /// [`Self::share_model_with`], calling `on_progress(parameters_done, parameters_total)`
    /// after each layer.
    pub fn share_model_observed(
        &mut self,
        owner: PartyId,
        model: &dyn ModelSource,
        bounds: &ModelBounds,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SharedModel> {
        let fx = self.fixed;
        let plan = Arc::new(ModelPlan::of(model, &fx, bounds)?);
        let (total, mut done) = (model.parameter_count(), 0);
        let mut layers = Vec::with_capacity(plan.layers.len());
        for li in 0..plan.layers.len() {
            plan.send_layer(model, li, &fx, &mut |shape, fill| {
                self.send_shares_filled(owner, shape, fill)
            })?;
            let pl = plan.clone();
            let [(layer, a), (_, b)] = self.run(move |p| pl.build_layer(p, li, owner))?;
            for (x, y) in a.iter().zip(&b) {
                agreed_id(*x, *y)?;
            }
            layers.push(layer);
            done += plan.layer_parameters(li);
            on_progress(done.min(total), total);
        }
        // This process is the model owner too: its model keeps the owner's bounds.
        Ok(plan.model(layers, &fx).with_owner_bounds(bounds.clone()))
    }

    /// Drop a shared model's shares and fixed operands on both parties.
    pub fn delete_model(&mut self, model: SharedModel) -> Result<()> {
        let ids: Vec<u64> = model.stored_ids().into_iter().flatten().collect();
        self.run(move |p| {
            for &id in &ids {
                p.forget(id);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Encrypted logits `[n, classes]` of `model` on `data [n, in]` (the client's plaintext),
    /// revealed to the client (its own outputs), `batch` rows at a time: for comparing with a
    /// plaintext evaluation.
    pub fn logits_for_client(
        &mut self,
        model: &SharedModel,
        data: &[f64],
        batch: usize,
    ) -> Result<Vec<f64>> {
        let width = model.in_features();
        let n = data.len() / width.max(1);
        check_inputs(data, width, model.bounds().input_bound)?;
        let mut out = Vec::with_capacity(n * model.out_features());
        for lo in (0..n).step_by(batch.max(1)) {
            let hi = (lo + batch.max(1)).min(n);
            let x = self.share(
                PartyId::Client,
                &[hi - lo, width],
                &data[lo * width..hi * width],
            )?;
            let m = model.clone();
            let xid = x.id();
            self.run(move |p| {
                let x = p.kept(xid)?;
                let logits = m.forward(p, &x)?;
                p.forget(xid);
                p.finish_range_checks()?;
                p.reveal_to(PartyId::Client, &logits)
            })?;
            let (_, ring) = self.receive_revealed(PartyId::Client)?;
            out.extend(self.fixed.decode(&ring));
        }
        Ok(out)
    }

    /// Traffic counted by alice and bob so far in this computation.
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

impl Drop for Computation {
    fn drop(&mut self) {
        // Closing the programs ends the computation at both parties; each then answers its
        // data owners' requests, which are read here so the connections end in step.
        self.jobs.clear();
        for o in self.owners.values_mut() {
            if let Some(mut e) = o.endpoint.take() {
                if o.request != self.request {
                    e.net().set_request_id(o.request);
                }
                let _ = o.conn.finish(e, &mut RequestStats::default());
            }
        }
        for p in &self.parties {
            p.unregister_program(self.request);
        }
        self.owners.clear();
        self.parties.clear();
    }
}

/// The store id both parties returned for the same object; they advance identically, so a
/// difference means the parties are out of step (checked in release builds too).
pub fn agreed_id(alice: u64, bob: u64) -> Result<u64> {
    if alice != bob {
        return Err(EngineError::OutOfStep {
            step: "keep",
            detail: format!(
                "alice and bob disagree on a store id ({alice} vs {bob}): the parties are out of step"
            ),
        });
    }
    Ok(alice)
}

//! A compute party (alice or bob) as a service: it stores uploaded models' shares, and runs data
//! owners' requests with the other party and the dealer, each request on its own links.
//!
//! Alice connects to bob and to the dealer; bob to the dealer; data owners to both. A request
//! from a data owner is read on the owner's connection and run on that connection's thread;
//! connections run concurrently, at most `limits.max_requests` requests at once (past that the
//! owner gets [`Reply::Busy`]). See [`crate::service`] for how a request's links are joined.
//!
//! Models are kept in `DATA_DIR/<name>.model`: this party's shares of each weight and bias and
//! the public masked weights, with the model's plan and owner, written atomically and
//! checksummed ([`crate::service::store`]); all are loaded (and checked) at start-up. Correct
//! counts awaiting their model owner are kept in `DATA_DIR/scores` ([`crate::service::scores`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kernels::Backend;
use serde::{Deserialize, Serialize};

use crate::dealer::{words_to_text, SeedGrant, STATUS_OK};
use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::classify::{batch_specs, BatchStep};
use crate::nn::plan::ModelPlan;
use crate::nn::shared::SharedModel;
use crate::party::{Party, Prepared, WeightShares};
use crate::protocols::matmul::block_rows;
use crate::service::dealer::{DEALER_STEP, OP_END};
use crate::service::net::{LinkPool, Listener, Net};
use crate::service::scores::ScoreBook;
use crate::service::store::{RecordReader, RecordWriter};
use crate::service::wire::{
    decode, digest, encode, fresh_id, DealerEnd, DealerJoin, JoinAnswer, JoinKind, ModelInfo,
    PeerJoin, PrepareJob, Reply, Request, JOIN_STEP, REPLY_STEP, REQUEST_STEP,
};
use crate::transport::{step_code, Envelope, Link, PartyId, StreamTransport, Transport};

const RECORD_KIND: &[u8; 8] = b"party\0\0\0";

/// A model this party serves.
struct ServedModel {
    meta: ModelMeta,
    model: SharedModel,
    weights: Vec<WeightShares>,
    fx: FixedPoint,
}

/// What a model's record holds besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ModelMeta {
    name: String,
    owner: String,
    plan: ModelPlan,
    /// Store ids of each layer (`[weight, fixed operand, bias]` for layers with parameters).
    ids: Vec<Vec<u64>>,
    /// The upload's request id: material made for this model is never used with another
    /// model uploaded later under the same name.
    uid: u64,
}

impl ModelMeta {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            owner: self.owner.clone(),
            input_shape: self.plan.input_shape().to_vec(),
            classes: self.plan.out_features(),
            frac_bits: self.plan.frac_bits,
            input_bound: self.plan.input_bound,
            parameters: (0..self.plan.layers.len())
                .map(|l| self.plan.layer_parameters(l))
                .sum(),
        }
    }
}

/// One batch's dealer material, made by both parties together ahead of a request (each holds
/// its own half, under the same id).
struct PreparedEntry {
    items: Vec<Prepared>,
    made: Instant,
}

/// Preprocessed material older than this is dropped unused.
const PREPARED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
/// Bob holds at most this many entries (the oldest are dropped first).
const MAX_HELD: usize = 1024;

/// Alice's joins that reached bob, and bob's requests waiting for them.
#[derive(Default)]
struct Rendezvous {
    waiting: HashMap<u64, Sender<(PeerJoin, Link)>>,
    parked: HashMap<u64, (PeerJoin, Link, Instant)>,
    refused: HashMap<u64, Instant>,
}

/// A compute party's service (see the module documentation).
pub struct PartyService {
    index: usize,
    net: Arc<Net>,
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    models: RwLock<HashMap<String, Arc<ServedModel>>>,
    scores: ScoreBook,
    seen: Mutex<(HashSet<u64>, VecDeque<u64>)>,
    active: AtomicUsize,
    peer_pool: LinkPool,
    dealer_pool: LinkPool,
    rendezvous: Mutex<Rendezvous>,
    /// Names an upload or a delete is working on now.
    claimed: Mutex<HashSet<String>>,
    /// Set by [`Self::shut_down`].
    stopping: AtomicBool,
    /// Material being made ahead right now (alice's producers, bob's side of each batch).
    background: AtomicUsize,
    /// Alice: preprocessed material ready per batch shape, by id.
    ready: Mutex<HashMap<PrepareJob, VecDeque<(u64, PreparedEntry)>>>,
    /// Alice: the shapes whose material is being made now.
    producing: Mutex<HashSet<PrepareJob>>,
    /// Bob: his halves of preprocessed material, by id.
    held: Mutex<HashMap<u64, (PrepareJob, PreparedEntry)>>,
}

fn poisoned() -> EngineError {
    EngineError::Protocol("party state poisoned".into())
}

/// A model name: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'.
pub fn check_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "'{name}' is not a valid model name (1-64 letters, digits, '-', '_' or '.', not \
             starting with '.')"
        )))
    }
}

/// A model name reserved by an upload or a delete in progress (released on drop).
struct NameClaim<'a> {
    names: &'a Mutex<HashSet<String>>,
    name: String,
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
struct NameUse<'n> {
    name: &'n str,
    /// `None`: nothing (an upload); `Some(uid)`: the model of that upload (a delete).
    serving: Option<u64>,
}

/// What a party learns when alice and bob join for a request.
struct Joined<'a> {
    /// Per offered batch: whether both parties hold material made ahead for it.
    have: Vec<bool>,
    /// Bob: his material made ahead for the batches alice offered.
    held: Vec<Option<PreparedEntry>>,
    /// Bob: his claim on the model name (see [`PartyService::join_peer`]).
    claim: Option<NameClaim<'a>>,
}

/// Decrement a count of work in progress (requests, material made ahead) when the work ends,
/// however it ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PartyService {
    /// The service of party `index` (0 alice, 1 bob) with its models in `dir` (created if
    /// missing); every record there is loaded and checked now, and a damaged or foreign one is
    /// an error naming the file (nothing is loaded half).
    pub fn open(
        index: usize,
        net: Net,
        backend: Arc<dyn Backend>,
        dir: &Path,
    ) -> Result<Arc<PartyService>> {
        let expected = if index == 0 { Role::Alice } else { Role::Bob };
        if net.me() != &expected {
            return Err(EngineError::Invalid(format!(
                "party {index} must run as {expected}, not {}",
                net.me()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", dir.display())))?;
        let svc = PartyService {
            index,
            net: Arc::new(net),
            backend,
            dir: dir.to_path_buf(),
            models: RwLock::new(HashMap::new()),
            scores: ScoreBook::open(dir, index)?,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            active: AtomicUsize::new(0),
            peer_pool: LinkPool::new(Role::Bob),
            dealer_pool: LinkPool::new(Role::Dealer),
            rendezvous: Mutex::new(Rendezvous::default()),
            claimed: Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
            background: AtomicUsize::new(0),
            ready: Mutex::new(HashMap::new()),
            producing: Mutex::new(HashSet::new()),
            held: Mutex::new(HashMap::new()),
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", dir.display())))?;
        let mut loaded = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("model") {
                let m = svc.load(&path)?;
                tracing::info!(me = %svc.net.me(), model = %m.meta.name, "loaded model");
                loaded.insert(m.meta.name.clone(), Arc::new(m));
            }
        }
        *svc.models.write().map_err(|_| poisoned())? = loaded;
        Ok(Arc::new(svc))
    }

    /// Shutting down: stop making material ahead (a producer ends quietly after its current
    /// batch), persist the correct counts kept so far (later ones stay in memory), and drop the
    /// idle links to the other party and the dealer.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.scores.close();
        self.peer_pool.clear();
        self.dealer_pool.clear();
    }

    /// After [`Self::shut_down`]: wait (at most `limit`) until no material is being made ahead,
    /// so no background work still runs on the backend when the process exits.
    pub fn wait_background(&self, limit: std::time::Duration) {
        let start = Instant::now();
        while self.background.load(Ordering::SeqCst) > 0 {
            if start.elapsed() > limit {
                tracing::warn!(me = %self.net.me(), "material ahead still being made at the shutdown");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn me(&self) -> PartyId {
        PartyId::compute(self.index)
    }

    /// Alice: batches of material ready ahead, over all shapes (for tests).
    #[cfg(test)]
    pub(crate) fn ready_batches(&self) -> usize {
        self.ready
            .lock()
            .map(|r| r.values().map(VecDeque::len).sum())
            .unwrap_or(0)
    }

    /// Bob: swap the material of two entries he holds (a test injecting mismatched material);
    /// whether he held two.
    #[cfg(test)]
    pub(crate) fn swap_two_held(&self) -> bool {
        let Ok(mut h) = self.held.lock() else {
            return false;
        };
        let ids: Vec<u64> = h.keys().copied().take(2).collect();
        let [a, b] = ids[..] else {
            return false;
        };
        let ea = std::mem::take(&mut h.get_mut(&a).expect("held").1.items);
        let eb = std::mem::replace(&mut h.get_mut(&b).expect("held").1.items, ea);
        h.get_mut(&a).expect("held").1.items = eb;
        true
    }

    /// The models served.
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut v: Vec<ModelInfo> = self
            .models
            .read()
            .map(|m| m.values().map(|s| s.meta.info()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Accept connections on `listener` until the process ends: data owners' (and, on bob,
    /// alice's), each served on its own thread.
    pub fn serve(self: &Arc<Self>, listener: Listener) -> Result<()> {
        self.serve_until(listener, &AtomicBool::new(false))
    }

    /// [`Self::serve`] until `stop` is set (checked after each accepted connection).
    pub fn serve_until(self: &Arc<Self>, listener: Listener, stop: &AtomicBool) -> Result<()> {
        tracing::info!(
            me = %self.net.me(),
            addr = %listener.describe(),
            tls = self.net.is_tls(),
            models = self.models().len(),
            correct_counts_kept = self.scores.len(),
            "serving"
        );
        let mut allowed = self.net.deployment().data_owners.clone();
        if self.index == 1 {
            allowed.push(Role::Alice);
        }
        while let Some(stream) = listener.accept() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let me = self.clone();
            self.net
                .admit_on_thread(stream, allowed.clone(), move |role, link| match role {
                    Role::Alice => me.serve_peer_link(link),
                    role => me.serve_owner(role, link),
                });
        }
        Ok(())
    }

    // ---- data owners ----

    /// Serve a data owner's connection: request after request, until it closes or fails.
    fn serve_owner(self: &Arc<Self>, role: Role, mut link: Link) {
        let owner = role.party_id();
        let options = self.net.options();
        loop {
            let (env, msg) = match link.recv(self.me(), owner, &self.net.idle_options()) {
                Ok(m) => m,
                Err(EngineError::Disconnected { .. }) => return,
                Err(e) => {
                    tracing::warn!(me = %self.net.me(), peer = %role, error = %e, "dropped a data owner's link");
                    return;
                }
            };
            let request = match decode::<Request>(&msg, "request") {
                Ok(r)
                    if env.seq == 0
                        && env.step == step_code(REQUEST_STEP)
                        && env.request == r.id()
                        && r.id() != 0 =>
                {
                    r
                }
                Ok(_) => {
                    tracing::warn!(me = %self.net.me(), peer = %role, ?env, "refused a request out of step");
                    return;
                }
                Err(e) => {
                    tracing::warn!(me = %self.net.me(), peer = %role, error = %e, "refused a request");
                    return;
                }
            };
            let mut net = StreamTransport::new(self.me(), options);
            net.set_request(request.id());
            net.resume_link(owner, link, 0, 1);
            let started = Instant::now();
            let kind = request.kind();
            let id = request.id();
            let (model, rows, batch) = request.subject();
            let (reply, keep) = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.dispatch(&role, &request, &digest(&msg), &mut net)
            }))
            .unwrap_or_else(|_| {
                (
                    Reply::Failed {
                        reason: "internal error (panic) in the request".into(),
                    },
                    false,
                )
            });
            let stats = net.meter_ref().stats().total();
            match &reply {
                Reply::Failed { reason } => tracing::warn!(
                    me = %self.net.me(), request = id, kind, model, owner = %role, reason, "request failed"
                ),
                Reply::Busy { limit } => tracing::warn!(
                    me = %self.net.me(), request = id, kind, owner = %role, limit, "busy: request refused"
                ),
                Reply::Done { .. } => tracing::info!(
                    me = %self.net.me(), request = id, kind, model, rows, batch, owner = %role,
                    rounds = stats.rounds, bytes = stats.bytes_sent,
                    ms = started.elapsed().as_secs_f64() * 1e3, "request done"
                ),
            }
            net.meter().set_step(REPLY_STEP);
            let sent = net.send(owner, encode(&reply));
            match (sent, keep, net.take_link(owner)) {
                (Ok(()), true, Some(l)) => link = l,
                // After a failure the owner's link is out of step (it may still be sending the
                // rest of the request): read and drop what arrives until the owner, having read
                // the reply, closes (closing at once would make TCP reset the connection and
                // discard the reply before the owner reads it); at most one timeout.
                (Ok(()), false, Some(mut l)) => {
                    let until = Instant::now() + options.timeout;
                    while Instant::now() < until && l.recv(self.me(), owner, &options).is_ok() {}
                    return;
                }
                _ => return,
            }
        }
    }

    /// Run a request; returns the reply and whether the owner's link is still in step.
    fn dispatch(
        self: &Arc<Self>,
        role: &Role,
        request: &Request,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> (Reply, bool) {
        // Ids of the last 2^20 requests are remembered (the oldest forgotten first).
        let fresh = self
            .seen
            .lock()
            .map(|mut guard| {
                let (set, order) = &mut *guard;
                if !set.insert(request.id()) {
                    return false;
                }
                order.push_back(request.id());
                if order.len() > 1 << 20 {
                    if let Some(old) = order.pop_front() {
                        set.remove(&old);
                    }
                }
                true
            })
            .unwrap_or(false);
        if !fresh {
            return (
                Reply::Failed {
                    reason: format!("request id {} was already used", request.id()),
                },
                false,
            );
        }
        let light = matches!(
            request,
            Request::List { .. } | Request::Score { .. } | Request::Delete { .. }
        );
        let limit = self.net.deployment().limits.max_requests;
        if !light && self.active.fetch_add(1, Ordering::SeqCst) >= limit {
            self.active.fetch_sub(1, Ordering::SeqCst);
            self.refuse_peer_join(request.id(), "busy");
            self.cancel_peer(request.id());
            return (Reply::Busy { limit }, false);
        }
        let _slot = (!light).then(|| Slot(&self.active));
        let r = match request {
            Request::List { .. } => Ok(self.done(None, net)),
            Request::Score { of, .. } => {
                self.scores.take(role, *of).map(|s| self.done(Some(s), net))
            }
            Request::Delete { name, .. } => self
                .delete(role, name, digest, net)
                .map(|()| self.done(None, net)),
            Request::Upload {
                request,
                name,
                plan,
            } => self
                .upload(role, *request, name, plan, digest, net)
                .map(|()| self.done(None, net)),
            Request::Classify {
                request,
                model,
                rows,
                batch,
                labels,
            } => self
                .classify(*request, model, *rows, *batch, *labels, digest, net)
                .map(|()| self.done(None, net)),
        };
        match r {
            Ok(reply) => (reply, true),
            Err(e) => {
                if !matches!(request, Request::List { .. } | Request::Score { .. }) {
                    self.refuse_peer_join(request.id(), "failed");
                }
                (
                    Reply::Failed {
                        reason: e.to_string(),
                    },
                    false,
                )
            }
        }
    }

    fn done(&self, share: Option<u64>, net: &StreamTransport) -> Reply {
        let t = net.meter_ref().stats().total();
        Reply::Done {
            share,
            models: self.models(),
            rounds: t.rounds,
            messages: t.messages,
            bytes: t.bytes_sent,
        }
    }

    /// Alice: reserve the name before she joins bob; bob only checks it now and claims it at
    /// her join (see [`Self::join_peer`]).
    fn claim_first(&self, u: NameUse<'_>) -> Result<Option<NameClaim<'_>>> {
        if self.index == 0 {
            self.claim_name(u).map(Some)
        } else {
            self.check_use(u).map(|()| None)
        }
    }

    /// Reserve a name for an upload or a delete (refused while another one works on it), and
    /// check that what is served under it is what the request expects.
    fn claim_name(&self, u: NameUse<'_>) -> Result<NameClaim<'_>> {
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
    fn check_use(&self, u: NameUse<'_>) -> Result<()> {
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
            (Some(_), None) => Err(EngineError::Invalid(format!(
                "model '{name}' already exists (delete it first)"
            ))),
            (None, Some(_)) => Err(EngineError::Invalid(format!(
                "no model '{name}' is served here"
            ))),
            (Some(_), Some(_)) => Err(EngineError::Invalid(format!(
                "model '{name}' was replaced while this request waited"
            ))),
        }
    }

    fn model(&self, name: &str) -> Result<Arc<ServedModel>> {
        self.models
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::Invalid(format!("no model '{name}' is served here")))
    }

    fn check_owner(&self, role: &Role, m: &ServedModel) -> Result<()> {
        if role != &Role::ModelOwner(m.meta.owner.clone()) {
            return Err(EngineError::Invalid(format!(
                "model '{}' belongs to model owner '{}'; {role} may not delete it",
                m.meta.name, m.meta.owner
            )));
        }
        Ok(())
    }

    /// Delete a model on both parties and at the dealer: the parties join (so both check the
    /// owner first), bob has the dealer forget the masks and tells alice; only then does each
    /// party remove its record.
    fn delete(
        self: &Arc<Self>,
        role: &Role,
        name: &str,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<()> {
        let checked = self.model(name).and_then(|m| {
            self.check_owner(role, &m)?;
            let u = NameUse {
                name,
                serving: Some(m.meta.uid),
            };
            Ok((m, u, self.claim_first(u)?))
        });
        let (m, u, _claim) = self.checked_or_cancel(net.request(), checked)?;
        let _bobs_claim = self
            .join_peer(net.request(), digest, &[], Some(u), net)?
            .claim;
        if self.index == 1 {
            let join = DealerJoin {
                request: net.request(),
                party: 1,
                model: name.to_string(),
                kind: JoinKind::Delete,
                frac_bits: m.meta.plan.frac_bits,
            };
            let r = self.dealer_round(net, &join).and_then(|reply| {
                if reply.first() == Some(&STATUS_OK) {
                    Ok(())
                } else {
                    Err(dealer_refused(&reply))
                }
            });
            let _ = self.tell_alice(net, &r);
            r?;
        } else {
            self.hear_bob(net, "the model was not deleted")?;
        }
        self.models.write().map_err(|_| poisoned())?.remove(name);
        if let Ok(mut r) = self.ready.lock() {
            r.retain(|job, _| job.model != name);
        }
        if let Ok(mut h) = self.held.lock() {
            h.retain(|_, (job, _)| job.model != name);
        }
        let path = self.record_path(name);
        std::fs::remove_file(&path)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?;
        tracing::info!(me = %self.net.me(), model = name, "model deleted");
        self.release(net);
        Ok(())
    }

    // ---- joining the peer and the dealer ----

    /// Join request `request` with the other party: alice sends bob her join on a link from
    /// her pool, offering per batch the preprocessed material she holds (`offered`); bob waits
    /// for it, checks that alice received the same request and takes his halves of the offered
    /// material. Returns, per batch, the material both hold (bob's halves on bob; on alice only
    /// the flags, as `None`s where bob lacks his half).
    ///
    /// `claim` names the model an upload or delete works on: alice claimed it before her join,
    /// bob claims it (and checks again what is served under it) only once her join arrived, so
    /// alice alone orders requests on one name (two concurrent uploads cannot each take one
    /// party's claim and both fail).
    fn join_peer(
        &self,
        request: u64,
        digest: &[u8],
        offered: &[Option<u64>],
        claim: Option<NameUse<'_>>,
        net: &mut StreamTransport,
    ) -> Result<Joined<'_>> {
        net.meter().set_step(JOIN_STEP);
        if self.index == 1 {
            let (join, link) = self.await_peer(request)?;
            net.resume_link(PartyId::Alice, link, 0, 1);
            let mut claimed = None;
            let refused = if join.digest.is_empty() {
                Some("alice refused the request".to_string())
            } else if join.digest != digest {
                Some("alice and bob received different requests".to_string())
            } else {
                match claim.map(|u| self.claim_name(u)).transpose() {
                    Ok(c) => {
                        claimed = c;
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            };
            let held: Vec<Option<PreparedEntry>> = match refused {
                None => join
                    .prepared
                    .iter()
                    .map(|id| id.and_then(|id| self.take_held(id)))
                    .collect(),
                Some(_) => Vec::new(),
            };
            let have: Vec<bool> = held.iter().map(Option::is_some).collect();
            net.send(
                PartyId::Alice,
                encode(&JoinAnswer {
                    refused: refused.clone(),
                    have: have.clone(),
                }),
            )?;
            if let Some(why) = refused {
                return Err(EngineError::PartyFailed {
                    party: PartyId::Alice,
                    detail: format!("request {request}: {why}"),
                });
            }
            return Ok(Joined {
                have,
                held,
                claim: claimed,
            });
        }
        let join = encode(&PeerJoin {
            request,
            digest: digest.to_vec(),
            prepared: offered.to_vec(),
            prepare: None,
        });
        let answer = self.peer_round(net, join)?;
        if let Some(reason) = answer.refused {
            return Err(EngineError::PartyFailed {
                party: PartyId::Bob,
                detail: reason,
            });
        }
        if answer.have.len() != offered.len() {
            return Err(EngineError::Protocol(format!(
                "bob answered for {} batches, alice offered {}",
                answer.have.len(),
                offered.len()
            )));
        }
        Ok(Joined {
            have: answer.have,
            held: Vec::new(),
            claim: None,
        })
    }

    /// Alice: send a join to bob on a link from her pool and read his answer; a pooled link
    /// that died while idle (bob restarted) is replaced once.
    fn peer_round(&self, net: &mut StreamTransport, join: Vec<u64>) -> Result<JoinAnswer> {
        net.meter().set_step(JOIN_STEP);
        let (link, mut reused) = self.peer_pool.get(&self.net)?;
        net.add_link(PartyId::Bob, link);
        loop {
            let r = net
                .send(PartyId::Bob, join.clone())
                .and_then(|()| net.recv(PartyId::Bob));
            match r {
                Ok(m) => return decode::<JoinAnswer>(&m, "join answer"),
                // A pooled link may have died while idle (bob restarted): use a new one.
                Err(EngineError::Disconnected { .. }) if reused => {
                    net.take_link(PartyId::Bob);
                    net.add_link(PartyId::Bob, self.net.connect(&Role::Bob)?);
                    reused = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The outcome of a request's checks before the parties join: on a failure, alice tells bob
    /// at once (so he does not wait for her join); bob's failures answer alice's join
    /// ([`Self::refuse_peer_join`]).
    fn checked_or_cancel<T>(self: &Arc<Self>, request: u64, checked: Result<T>) -> Result<T> {
        if checked.is_err() {
            self.cancel_peer(request);
        }
        checked
    }

    /// Alice: tell bob she will not run `request` (an empty digest), on a link of its own.
    fn cancel_peer(self: &Arc<Self>, request: u64) {
        if self.index != 0 {
            return;
        }
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("party-cancel".into())
            .spawn(move || {
                if let Ok((link, _)) = me.peer_pool.get(&me.net) {
                    let join = Envelope {
                        request,
                        seq: 0,
                        step: step_code(JOIN_STEP),
                    };
                    let _ = link.send(
                        join,
                        encode(&PeerJoin {
                            request,
                            digest: Vec::new(),
                            prepared: Vec::new(),
                            prepare: None,
                        }),
                    );
                    // Dropping the link flushes the join and closes it.
                }
            });
    }

    /// Bob: wait (at most the timeout) for alice's join of `request`.
    fn await_peer(&self, request: u64) -> Result<(PeerJoin, Link)> {
        let rx = {
            let mut r = self.rendezvous.lock().map_err(|_| poisoned())?;
            if let Some((join, link, _)) = r.parked.remove(&request) {
                return Ok((join, link));
            }
            let (tx, rx) = channel();
            r.waiting.insert(request, tx);
            rx
        };
        let timeout = self.net.options().timeout;
        let got = rx.recv_timeout(timeout);
        if let Ok(mut r) = self.rendezvous.lock() {
            r.waiting.remove(&request);
        }
        got.map_err(|_| EngineError::Timeout {
            me: PartyId::Bob,
            peer: PartyId::Alice,
            after: timeout,
        })
    }

    /// Bob: alice's join of a request that bob refused or failed gets that answer at once.
    fn refuse_peer_join(self: &Arc<Self>, request: u64, why: &'static str) {
        if self.index != 1 {
            return;
        }
        let parked = self.rendezvous.lock().ok().and_then(|mut r| {
            r.refused.retain(|_, t| t.elapsed().as_secs() < 3600);
            r.refused.insert(request, Instant::now());
            r.parked.remove(&request)
        });
        if let Some((_, link, _)) = parked {
            self.answer_refused(request, link, why);
        }
    }

    fn answer_refused(self: &Arc<Self>, request: u64, link: Link, why: &str) {
        let mut net = StreamTransport::new(PartyId::Bob, self.net.options());
        net.set_request(request);
        net.resume_link(PartyId::Alice, link, 0, 1);
        net.meter().set_step(JOIN_STEP);
        let _ = net.send(
            PartyId::Alice,
            encode(&JoinAnswer {
                refused: Some(format!("bob refused request {request} ({why})")),
                have: Vec::new(),
            }),
        );
        if let Some(l) = net.take_link(PartyId::Alice) {
            self.spawn_peer_link(l);
        }
    }

    /// Bob: read alice's joins on one link and hand each to the request it names.
    fn serve_peer_link(self: &Arc<Self>, mut link: Link) {
        let options = self.net.options();
        let (env, msg) = match link.recv(PartyId::Bob, PartyId::Alice, &self.net.idle_options()) {
            Ok(m) => m,
            Err(EngineError::Disconnected { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, "bob: dropped a link from alice");
                return;
            }
        };
        let join = match decode::<PeerJoin>(&msg, "peer join") {
            Ok(j)
                if j.request == env.request && env.seq == 0 && env.step == step_code(JOIN_STEP) =>
            {
                j
            }
            _ => {
                tracing::warn!(?env, "bob: refused a join out of step from alice");
                return;
            }
        };
        if let Some(job) = join.prepare.clone() {
            self.serve_prepare(join.request, job, link);
            return;
        }
        let request = join.request;
        let mut r = match self.rendezvous.lock() {
            Ok(r) => r,
            Err(_) => return,
        };
        if r.refused.contains_key(&request) {
            drop(r);
            self.answer_refused(request, link, "refused");
            return;
        }
        if let Some(tx) = r.waiting.remove(&request) {
            let _ = tx.send((join, link));
            return;
        }
        let timeout = options.timeout * 4;
        r.parked.retain(|_, (_, _, t)| t.elapsed() < timeout);
        r.parked.insert(request, (join, link, Instant::now()));
    }

    /// Bob: serve a link from alice again after a request that ended in step on it.
    fn spawn_peer_link(self: &Arc<Self>, link: Link) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("party-peer".into())
            .spawn(move || me.serve_peer_link(link));
    }

    /// Send `join` to the dealer on a link from the pool (a pooled link found closed is
    /// replaced by a new connection); returns whether the link was reused (see
    /// [`Self::dealer_answer`]).
    fn send_join(&self, net: &mut StreamTransport, join: &DealerJoin) -> Result<bool> {
        net.meter().set_step(DEALER_STEP);
        let (link, reused) = self.dealer_pool.get(&self.net)?;
        net.add_link(PartyId::Dealer, link);
        match net.send(PartyId::Dealer, encode(join)) {
            Err(EngineError::Disconnected { .. }) if reused => {
                net.take_link(PartyId::Dealer);
                net.add_link(PartyId::Dealer, self.net.connect(&Role::Dealer)?);
                net.send(PartyId::Dealer, encode(join))?;
                Ok(false)
            }
            r => r.map(|()| reused),
        }
    }

    /// The dealer's answer to a join sent with [`Self::send_join`]; a pooled link that died
    /// while idle (the dealer restarted) is replaced by a new connection once.
    fn dealer_answer(
        &self,
        net: &mut StreamTransport,
        join: &DealerJoin,
        reused: bool,
    ) -> Result<Vec<u64>> {
        net.meter().set_step(DEALER_STEP);
        match net.recv(PartyId::Dealer) {
            Err(EngineError::Disconnected { .. }) if reused => {
                net.take_link(PartyId::Dealer);
                net.add_link(PartyId::Dealer, self.net.connect(&Role::Dealer)?);
                net.send(PartyId::Dealer, encode(join))?;
                net.recv(PartyId::Dealer)
            }
            r => r,
        }
    }

    /// Send a join to the dealer and return its answer.
    fn dealer_round(&self, net: &mut StreamTransport, join: &DealerJoin) -> Result<Vec<u64>> {
        let reused = self.send_join(net, join)?;
        self.dealer_answer(net, join, reused)
    }

    /// The dealer's answer to a join: this party's seed for the request.
    fn seed_answer(
        &self,
        net: &mut StreamTransport,
        join: &DealerJoin,
        reused: bool,
    ) -> Result<SeedGrant> {
        let reply = self.dealer_answer(net, join, reused)?;
        match reply.split_first() {
            Some((&STATUS_OK, grant)) => SeedGrant::from_words(grant),
            _ => Err(dealer_refused(&reply)),
        }
    }

    /// Join the current request at the dealer and (while the dealer answers) the other party;
    /// returns this party's seed for the request and, for bob, his claim on `model` (taken at
    /// alice's join, see [`Self::join_peer`]).
    fn join_both(
        self: &Arc<Self>,
        net: &mut StreamTransport,
        digest: &[u8],
        u: NameUse<'_>,
        kind: JoinKind,
        frac_bits: u32,
    ) -> Result<(SeedGrant, Option<NameClaim<'_>>)> {
        let join = DealerJoin {
            request: net.request(),
            party: self.index as u8,
            model: u.name.to_string(),
            kind,
            frac_bits,
        };
        let sent = self.send_join(net, &join);
        let reused = self.checked_or_cancel(join.request, sent)?;
        let claim = self
            .join_peer(join.request, digest, &[], Some(u), net)?
            .claim;
        Ok((self.seed_answer(net, &join, reused)?, claim))
    }

    /// Bob: end the request at the dealer (committing an upload when `commit`).
    fn end_dealer(&self, net: &mut StreamTransport, commit: bool, owner: &str) -> Result<()> {
        if self.index != 1 {
            return Ok(());
        }
        net.meter().set_step(DEALER_STEP);
        let mut msg = vec![OP_END];
        msg.extend(encode(&DealerEnd::Finish {
            commit,
            owner: owner.to_string(),
        }));
        net.send(PartyId::Dealer, msg)?;
        let reply = net.recv(PartyId::Dealer)?;
        if reply.first() != Some(&STATUS_OK) {
            return Err(dealer_refused(&reply));
        }
        Ok(())
    }

    fn release_dealer(&self, net: &mut StreamTransport) {
        if let Some(l) = net.take_link(PartyId::Dealer) {
            self.dealer_pool.put(l);
        }
    }

    /// Return a finished request's peer and dealer links for reuse.
    fn release(self: &Arc<Self>, net: &mut StreamTransport) {
        self.release_dealer(net);
        self.release_peer(net);
    }

    /// Return a finished request's link to the other party for reuse.
    fn release_peer(self: &Arc<Self>, net: &mut StreamTransport) {
        if let Some(l) = net.take_link(self.other()) {
            if self.index == 0 {
                self.peer_pool.put(l);
            } else {
                self.spawn_peer_link(l);
            }
        }
    }

    fn other(&self) -> PartyId {
        PartyId::compute(1 - self.index)
    }

    /// Run `body` on a party object of this request over `net` (its links, with their
    /// sequence numbers, are handed back to `net` afterwards, whatever the outcome).
    fn with_party<R>(
        &self,
        net: &mut StreamTransport,
        fx: FixedPoint,
        seed: Option<SeedGrant>,
        body: impl FnOnce(&mut Party) -> Result<R>,
    ) -> Result<R> {
        let taken = std::mem::replace(net, StreamTransport::new(self.me(), self.net.options()));
        let mut party =
            Party::with_seed(self.index, Box::new(taken), self.backend.clone(), fx, seed);
        let r = body(&mut party);
        match party.into_transport().into_stream() {
            Some(back) => *net = back,
            None => unreachable!("a service party runs over a stream transport"),
        }
        r
    }

    // ---- upload ----

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.model"))
    }

    #[allow(clippy::too_many_arguments)]
    fn upload(
        self: &Arc<Self>,
        role: &Role,
        request: u64,
        name: &str,
        plan: &ModelPlan,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<()> {
        let u = NameUse {
            name,
            serving: None,
        };
        let checked = (|| {
            let Role::ModelOwner(owner) = role else {
                return Err(EngineError::Invalid(format!(
                    "only a model owner uploads models, not {role}"
                )));
            };
            check_model_name(name)?;
            plan.check()?;
            let claim = self.claim_first(u)?;
            Ok((owner, FixedPoint::new(plan.frac_bits)?, claim))
        })();
        let (owner, fx, _claim) = self.checked_or_cancel(request, checked)?;
        let (seed, _bobs_claim) =
            self.join_both(net, digest, u, JoinKind::Upload, plan.frac_bits)?;
        let owner_id = role.party_id();
        let (layers, ids) = self.with_party(net, fx, Some(seed), |p| {
            let mut layers = Vec::new();
            let mut ids = Vec::new();
            for li in 0..plan.layers.len() {
                let (l, i) = plan.build_layer(p, li, owner_id)?;
                layers.push(l);
                ids.push(i);
            }
            let weights = ids
                .iter()
                .filter(|i| i.len() == 3)
                .map(|i| p.weight_shares([i[0], i[1], i[2]]))
                .collect::<Result<Vec<_>>>()?;
            Ok(((layers, weights), ids))
        })?;
        let (layers, weights) = layers;
        let served = ServedModel {
            meta: ModelMeta {
                name: name.to_string(),
                owner: owner.clone(),
                plan: plan.clone(),
                ids,
                uid: request,
            },
            model: plan.model(layers, &fx),
            weights,
            fx,
        };
        // The record is written under a name of this request's own and takes the model's name
        // only once the upload is committed everywhere.
        let pending = self.dir.join(format!("{name}.{request}.pending"));
        self.save(&served, &pending)?;
        // Both parties stored their shares: bob commits at the dealer, then tells alice.
        let committed = self
            .commit_upload(net, owner)
            .and_then(|()| crate::service::store::rename_record(&pending, &self.record_path(name)));
        if let Err(e) = committed {
            let _ = std::fs::remove_file(&pending);
            return Err(e);
        }
        self.models
            .write()
            .map_err(|_| poisoned())?
            .insert(name.to_string(), Arc::new(served));
        self.release(net);
        Ok(())
    }

    /// After both parties stored an upload: alice tells bob, bob commits at the dealer and
    /// tells alice the outcome.
    fn commit_upload(&self, net: &mut StreamTransport, owner: &str) -> Result<()> {
        net.meter().set_step("commit");
        if self.index == 0 {
            net.send(PartyId::Bob, vec![STATUS_OK])?;
            return self.hear_bob(net, "the upload was not committed");
        }
        let alice = net.recv(PartyId::Alice)?;
        let r = if alice.first() == Some(&STATUS_OK) {
            self.end_dealer(net, true, owner)
        } else {
            Err(EngineError::PartyFailed {
                party: PartyId::Alice,
                detail: "alice did not store the upload".into(),
            })
        };
        // Once the dealer kept the model, bob keeps it too, even if alice is gone by now.
        let _ = self.tell_alice(net, &r);
        r
    }

    /// Bob: tell alice the outcome of a step both must agree on (a commit, a delete).
    fn tell_alice(&self, net: &mut StreamTransport, outcome: &Result<()>) -> Result<()> {
        net.meter().set_step("commit");
        let answer = match outcome {
            Ok(()) => vec![STATUS_OK],
            Err(e) => {
                let mut v = vec![crate::dealer::STATUS_ERROR];
                v.extend(crate::dealer::text_to_words(&e.to_string()));
                v
            }
        };
        net.send(PartyId::Alice, answer)
    }

    /// Alice: bob's outcome of a step both must agree on; a failure says `what` and bob's reason.
    fn hear_bob(&self, net: &mut StreamTransport, what: &str) -> Result<()> {
        net.meter().set_step("commit");
        let r = net.recv(PartyId::Bob)?;
        match r.first() {
            Some(&STATUS_OK) => Ok(()),
            _ => Err(EngineError::PartyFailed {
                party: PartyId::Bob,
                detail: format!("{what}: {}", words_to_text(r.get(1..).unwrap_or(&[]))),
            }),
        }
    }

    /// Write a model's record (see the module documentation).
    fn save(&self, m: &ServedModel, path: &Path) -> Result<()> {
        let mut w = RecordWriter::create(path, RECORD_KIND)?;
        w.bytes(&[self.index as u8])?;
        w.bytes(&serde_json::to_vec(&m.meta).expect("metadata serialises"))?;
        let be = &self.backend;
        for ws in &m.weights {
            for t in [&ws.weight, &ws.public] {
                // Blocks of whole rows, about 1 MiB each.
                let n = t.shape().get(1).copied().unwrap_or(1).max(1);
                let rows = ((1 << 17) / n).max(1);
                w.words(t.len(), rows * n, &mut |at, out| {
                    Ok(be.read_rows(t, at / n, out)?)
                })?;
            }
            let bias = be.download(&ws.bias)?;
            w.words(bias.len(), bias.len(), &mut |at, out| {
                out.copy_from_slice(&bias[at..at + out.len()]);
                Ok(())
            })?;
        }
        w.commit()
    }

    /// Load a model's record, checked whole.
    fn load(&self, path: &Path) -> Result<ServedModel> {
        let bad = |why: String| EngineError::Format(format!("{}: {why}", path.display()));
        let mut r = RecordReader::open(path, RECORD_KIND)?;
        if r.bytes()? != [self.index as u8] {
            return Err(bad(format!(
                "this record belongs to the other party, not {}",
                self.net.me()
            )));
        }
        let meta: ModelMeta = serde_json::from_slice(r.bytes()?)
            .map_err(|e| bad(format!("damaged metadata: {e}")))?;
        meta.plan.check()?;
        let fx = FixedPoint::new(meta.plan.frac_bits)?;
        if meta.ids.len() != meta.plan.layers.len() {
            return Err(bad("layer ids do not match the plan".into()));
        }
        let be = &self.backend;
        let mut layers = Vec::new();
        let mut weights = Vec::new();
        for (li, ids) in meta.ids.iter().enumerate() {
            let layer = meta.plan.assemble_layer(li, ids, &fx)?;
            layers.push(layer);
            if ids.len() != 3 {
                continue;
            }
            let (k, out_n) = meta.plan.layers[li]
                .weight_shape()
                .ok_or_else(|| bad(format!("layer {li} has no parameters but 3 store ids")))?;
            let operand = |r: &mut RecordReader| -> Result<kernels::Tensor> {
                let words = r.words()?;
                if words.len() != k * out_n {
                    return Err(bad(format!(
                        "layer {li}: {} weight words, expected {}",
                        words.len(),
                        k * out_n
                    )));
                }
                Ok(
                    be.right_operand_from_rows(k, out_n, block_rows(out_n), &mut |p0, out| {
                        out.copy_from_slice(&words[p0 * out_n..p0 * out_n + out.len()])
                    })?,
                )
            };
            let weight = operand(&mut r)?;
            let public = operand(&mut r)?;
            let bias = r.words()?;
            if bias.len() != out_n {
                return Err(bad(format!(
                    "layer {li}: {} bias words, expected {out_n}",
                    bias.len()
                )));
            }
            let bias = be.upload(&[out_n], bias)?;
            weights.push(WeightShares {
                ids: [ids[0], ids[1], ids[2]],
                weight,
                public,
                bias,
            });
        }
        r.finish()?;
        Ok(ServedModel {
            model: meta.plan.model(layers, &fx),
            meta,
            weights,
            fx,
        })
    }

    // ---- classify ----

    #[allow(clippy::too_many_arguments)]
    fn classify(
        self: &Arc<Self>,
        request: u64,
        name: &str,
        rows: u64,
        batch: u64,
        labels: bool,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<()> {
        let checked = (|| {
            let m = self.model(name)?;
            let width = m.model.in_features() as u64;
            let max_words = self.net.options().max_frame_words;
            if rows == 0 || batch == 0 {
                return Err(EngineError::Invalid("no rows, or a batch of 0 rows".into()));
            }
            let batch = batch.min(rows);
            if batch.checked_mul(width).is_none_or(|w| w + 16 > max_words) {
                return Err(EngineError::Invalid(format!(
                    "a batch of {batch} rows of {width} values exceeds the frame limit of \
                     {max_words} words"
                )));
            }
            Ok((m, batch))
        })();
        let (m, batch) = self.checked_or_cancel(request, checked)?;
        // Batches, and per batch the material made ahead that alice offers.
        let sizes: Vec<usize> = (0..rows)
            .step_by(batch as usize)
            .map(|lo| (rows - lo).min(batch) as usize)
            .collect();
        let job = |r: usize| PrepareJob {
            model: name.to_string(),
            uid: m.meta.uid,
            rows: r as u64,
            labels,
        };
        let mut mine: Vec<Option<(u64, PreparedEntry)>> = if self.index == 0 {
            sizes.iter().map(|&r| self.pop_ready(&job(r))).collect()
        } else {
            Vec::new()
        };
        let offered: Vec<Option<u64>> = mine.iter().map(|e| e.as_ref().map(|x| x.0)).collect();
        let dealer_join = DealerJoin {
            request,
            party: self.index as u8,
            model: name.to_string(),
            kind: JoinKind::Classify,
            frac_bits: m.meta.plan.frac_bits,
        };
        // Alice joins the dealer at once when she lacks material for a batch.
        let early = if self.index == 0 && offered.iter().any(Option::is_none) {
            let sent = self.send_join(net, &dealer_join);
            Some(self.checked_or_cancel(request, sent)?)
        } else {
            None
        };
        let Joined {
            have, held: bobs, ..
        } = self.join_peer(request, digest, &offered, None, net)?;
        let mut entries: Vec<Option<PreparedEntry>> = if self.index == 0 {
            mine.iter_mut()
                .zip(&have)
                .map(|(e, &h)| e.take().filter(|_| h).map(|x| x.1))
                .collect()
        } else {
            bobs
        };
        entries.resize_with(sizes.len(), || None);
        tracing::debug!(
            me = %self.net.me(),
            request,
            ahead = entries.iter().filter(|e| e.is_some()).count(),
            batches = sizes.len(),
            "batches with material made ahead"
        );
        let seed = if entries.iter().any(Option::is_none) {
            let reused = match early {
                Some(r) => r,
                None => self.send_join(net, &dealer_join)?,
            };
            Some(self.seed_answer(net, &dealer_join, reused)?)
        } else {
            None
        };
        let frac = m.fx.frac_bits();
        let share = self.with_party(net, m.fx, seed, |p| {
            for w in &m.weights {
                p.install_weight_shares(w);
            }
            let mut acc = None;
            for (entry, &rows_here) in entries.iter_mut().zip(&sizes) {
                let specs = match entry.take() {
                    Some(e) => {
                        p.queue_prepared(e.items);
                        Vec::new()
                    }
                    None => batch_specs(&m.model, rows_here, labels, frac),
                };
                let step = BatchStep {
                    rows: rows_here,
                    labels,
                    reveal: true,
                    acc,
                };
                acc = step.run(p, &m.model, None, &specs)?.0;
            }
            match acc {
                Some(id) => Ok(Some(p.own_words(&p.kept(id)?)?[0])),
                None => Ok(None),
            }
        })?;
        if self.index == 0 {
            let mut shapes = sizes.clone();
            shapes.dedup();
            for r in shapes {
                self.refill(job(r));
            }
        }
        if let Some(share) = share {
            self.scores.keep(request, &m.meta.owner, share)?;
        }
        self.release_peer(net);
        self.end_dealer_later(net);
        Ok(())
    }

    // ---- material made ahead of requests ----

    /// Alice: the oldest ready material for `job`, if any (expired entries are dropped).
    fn pop_ready(&self, job: &PrepareJob) -> Option<(u64, PreparedEntry)> {
        let mut ready = self.ready.lock().ok()?;
        let q = ready.get_mut(job)?;
        while let Some((id, e)) = q.pop_front() {
            if e.made.elapsed() < PREPARED_LIFETIME {
                return Some((id, e));
            }
        }
        None
    }

    /// Bob: take his half of material `id`, if he holds it.
    fn take_held(&self, id: u64) -> Option<PreparedEntry> {
        let (_, e) = self.held.lock().ok()?.remove(&id)?;
        (e.made.elapsed() < PREPARED_LIFETIME).then_some(e)
    }

    /// Alice: make material for `job` in the background until `limits.pool` entries are
    /// ready (one producer per shape; nothing when the pool size is 0).
    fn refill(self: &Arc<Self>, job: PrepareJob) {
        let target = self.net.deployment().limits.pool;
        if target == 0
            || !self
                .producing
                .lock()
                .is_ok_and(|mut p| p.insert(job.clone()))
        {
            return;
        }
        let me = self.clone();
        let mine = job.clone();
        self.background.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("party-prepare".into())
            .spawn(move || {
                let _busy = Slot(&me.background);
                let job = mine;
                loop {
                    let have = me
                        .ready
                        .lock()
                        .map(|r| r.get(&job).map_or(0, |q| q.len()))
                        .unwrap_or(usize::MAX);
                    if have >= target || me.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    match me.prepare(&job) {
                        Ok((id, entry)) => {
                            if let Ok(mut r) = me.ready.lock() {
                                r.entry(job.clone()).or_default().push_back((id, entry));
                            }
                        }
                        Err(e) if me.stopping.load(Ordering::SeqCst) => {
                            tracing::debug!(model = %job.model, error = %e, "material ahead stopped by the shutdown");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(model = %job.model, rows = job.rows, error = %e, "could not make material ahead");
                            break;
                        }
                    }
                }
                if let Ok(mut p) = me.producing.lock() {
                    p.remove(&job);
                }
            });
        if spawned.is_err() {
            self.background.fetch_sub(1, Ordering::SeqCst);
            if let Ok(mut p) = self.producing.lock() {
                p.remove(&job);
            }
        }
    }

    /// Alice: make one batch's material for `job` with bob and the dealer (a request of its
    /// own, whose id names the material).
    fn prepare(self: &Arc<Self>, job: &PrepareJob) -> Result<(u64, PreparedEntry)> {
        let m = self.model(&job.model)?;
        if m.meta.uid != job.uid {
            return Err(EngineError::Invalid(format!(
                "model '{}' was replaced",
                job.model
            )));
        }
        let request = fresh_id();
        let mut net = StreamTransport::new(self.me(), self.net.options());
        net.set_request(request);
        let dealer_join = DealerJoin {
            request,
            party: 0,
            model: job.model.clone(),
            kind: JoinKind::Classify,
            frac_bits: m.meta.plan.frac_bits,
        };
        // Alice's join must be paired at the dealer before bob can hear of the material: bob
        // makes his half without a word from alice and may end his part at the dealer before
        // a join of hers still in flight arrives, which the dealer would then refuse (it
        // never issues a request's seeds twice). So her seed first, then bob.
        let seed = {
            let reused = self.send_join(&mut net, &dealer_join)?;
            self.seed_answer(&mut net, &dealer_join, reused)?
        };
        let answer = self.peer_round(
            &mut net,
            encode(&PeerJoin {
                request,
                digest: Vec::new(),
                prepared: Vec::new(),
                prepare: Some(job.clone()),
            }),
        )?;
        if let Some(reason) = answer.refused {
            return Err(EngineError::PartyFailed {
                party: PartyId::Bob,
                detail: reason,
            });
        }
        let items = self.make_material(&mut net, &m, job, seed)?;
        // Bob confirms he stored his half.
        self.hear_bob(&mut net, "the material was not kept")?;
        self.release(&mut net);
        Ok((
            request,
            PreparedEntry {
                items,
                made: Instant::now(),
            },
        ))
    }

    /// Both parties: run the preprocessing of one batch of `job` and take the material out.
    fn make_material(
        &self,
        net: &mut StreamTransport,
        m: &ServedModel,
        job: &PrepareJob,
        seed: SeedGrant,
    ) -> Result<Vec<Prepared>> {
        let specs = batch_specs(&m.model, job.rows as usize, job.labels, m.fx.frac_bits());
        self.with_party(net, m.fx, Some(seed), |p| {
            for w in &m.weights {
                p.install_weight_shares(w);
            }
            p.preprocess(&specs)?;
            Ok(p.take_prepared())
        })
    }

    /// Bob: make material with alice for `job` under id `request`, on the link her join came
    /// on, and keep his half.
    fn serve_prepare(self: &Arc<Self>, request: u64, job: PrepareJob, link: Link) {
        self.background.fetch_add(1, Ordering::SeqCst);
        let _busy = Slot(&self.background);
        let mut net = StreamTransport::new(PartyId::Bob, self.net.options());
        net.set_request(request);
        net.resume_link(PartyId::Alice, link, 0, 1);
        net.meter().set_step(JOIN_STEP);
        let model = self.model(&job.model).and_then(|m| {
            let rows_ok = job.rows >= 1
                && job
                    .rows
                    .checked_mul(m.model.in_features() as u64)
                    .is_some_and(|w| w + 16 <= self.net.options().max_frame_words);
            if m.meta.uid == job.uid && rows_ok {
                Ok(m)
            } else {
                Err(EngineError::Invalid(format!(
                    "no model '{}' of that upload, or no such batch",
                    job.model
                )))
            }
        });
        let answer = JoinAnswer {
            refused: model.as_ref().err().map(|e| e.to_string()),
            have: Vec::new(),
        };
        if net.send(PartyId::Alice, encode(&answer)).is_err() {
            return;
        }
        let Ok(m) = model else {
            if let Some(l) = net.take_link(PartyId::Alice) {
                self.spawn_peer_link(l);
            }
            return;
        };
        let made = (|| -> Result<Vec<Prepared>> {
            let join = DealerJoin {
                request,
                party: 1,
                model: job.model.clone(),
                kind: JoinKind::Classify,
                frac_bits: m.meta.plan.frac_bits,
            };
            let seed = {
                let reused = self.send_join(&mut net, &join)?;
                self.seed_answer(&mut net, &join, reused)?
            };
            let items = self.make_material(&mut net, &m, &job, seed)?;
            self.end_dealer(&mut net, false, "")?;
            Ok(items)
        })();
        match made {
            Ok(items) => {
                if let Ok(mut h) = self.held.lock() {
                    h.retain(|_, (_, e)| e.made.elapsed() < PREPARED_LIFETIME);
                    if h.len() >= MAX_HELD {
                        if let Some(oldest) =
                            h.iter().min_by_key(|(_, (_, e))| e.made).map(|(k, _)| *k)
                        {
                            h.remove(&oldest);
                        }
                    }
                    h.insert(
                        request,
                        (
                            job,
                            PreparedEntry {
                                items,
                                made: Instant::now(),
                            },
                        ),
                    );
                }
                if self.tell_alice(&mut net, &Ok(())).is_ok() {
                    self.release(&mut net);
                }
            }
            Err(e) if self.stopping.load(Ordering::SeqCst) => {
                tracing::debug!(request, error = %e, "bob: material ahead stopped by the shutdown")
            }
            Err(e) => tracing::warn!(request, error = %e, "bob: could not make material ahead"),
        }
    }

    /// Bob: end a classify request at the dealer after the reply to the owner is out (nothing
    /// waits for the dealer's acknowledgement; its link returns to the pool once it arrives).
    /// Alice: return her dealer link.
    fn end_dealer_later(self: &Arc<Self>, net: &mut StreamTransport) {
        if self.index == 0 {
            self.release_dealer(net);
            return;
        }
        let Some((link, sent, received)) = net.take_link_state(PartyId::Dealer) else {
            return;
        };
        let mut t = StreamTransport::new(PartyId::Bob, self.net.options());
        t.set_request(net.request());
        t.resume_link(PartyId::Dealer, link, sent, received);
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("party-dealer-end".into())
            .spawn(move || {
                if me.end_dealer(&mut t, false, "").is_ok() {
                    me.release_dealer(&mut t);
                }
            });
    }
}

fn dealer_refused(reply: &[u64]) -> EngineError {
    EngineError::PartyFailed {
        party: PartyId::Dealer,
        detail: format!("refused: {}", words_to_text(reply.get(1..).unwrap_or(&[]))),
    }
}

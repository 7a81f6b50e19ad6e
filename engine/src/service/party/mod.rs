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
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kernels::Backend;

use crate::deploy::Role;
use crate::error::{EngineError, ErrorKind, Result};
use crate::service::net::{LinkPool, Listener, Net};
use crate::service::scores::ScoreBook;
use crate::transport::{step_code, Link, PartyId, StreamTransport, Transport};
use crate::wire::control::{
    decode, digest, encode, ModelInfo, PrepareJob, Reply, Request, REPLY_STEP, REQUEST_STEP,
};
use crate::wire::dealer::words_to_text;

mod ahead;
mod classify;
mod compute;
mod links;
mod models;
mod names;

pub(crate) use compute::{Attached, Job, JobOutcome, ProgramSlot};

use ahead::PreparedEntry;
use links::{Joined, Rendezvous};
use models::ServedModel;
use names::{NameClaim, NameUse};

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
    /// Custom computations' programs, registered in-process before their requests arrive.
    programs: Mutex<HashMap<u64, ProgramSlot>>,
    /// Computations that a second data owner may join, by computation id.
    attach_to: Mutex<HashMap<u64, std::sync::mpsc::Sender<Attached>>>,
}

pub(super) fn poisoned() -> EngineError {
    EngineError::Protocol("party state poisoned".into())
}

/// Decrement a count of work in progress (requests, material made ahead) when the work ends,
/// however it ends.
pub(super) struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn dealer_refused(reply: &[u64]) -> EngineError {
    EngineError::PartyFailed {
        party: PartyId::Dealer,
        detail: format!("refused: {}", words_to_text(reply.get(1..).unwrap_or(&[]))),
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
            programs: Mutex::new(HashMap::new()),
            attach_to: Mutex::new(HashMap::new()),
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

    pub(super) fn me(&self) -> PartyId {
        PartyId::compute(self.index)
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

    /// Serve a data owner's connection: request after request, until it closes or fails.
    pub(super) fn serve_owner(self: &Arc<Self>, role: Role, mut link: Link) {
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
                        kind: ErrorKind::Internal,
                    },
                    false,
                )
            });
            let stats = net.meter_ref().stats().total();
            match &reply {
                Reply::Failed { reason, .. } => tracing::warn!(
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
    pub(super) fn dispatch(
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
                    kind: ErrorKind::Refused,
                },
                false,
            );
        }
        let light = matches!(
            request,
            Request::List { .. }
                | Request::Score { .. }
                | Request::Delete { .. }
                | Request::Attach { .. }
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
                .map(|ahead| self.done_ahead(ahead, net)),
            Request::Compute {
                request,
                frac_bits,
                attach,
            } => self
                .compute(*request, *frac_bits, *attach, digest, net)
                .map(|()| self.done(None, net)),
            Request::Attach { to, .. } => {
                self.attach(role, *to, net).map(|()| self.done(None, net))
            }
        };
        match r {
            Ok(reply) => (reply, true),
            Err(e) => {
                if !matches!(
                    request,
                    Request::List { .. } | Request::Score { .. } | Request::Attach { .. }
                ) {
                    self.refuse_peer_join(request.id(), "failed");
                }
                (Reply::failed(&e), false)
            }
        }
    }

    pub(super) fn done(&self, share: Option<u64>, net: &StreamTransport) -> Reply {
        let t = net.meter_ref().stats().total();
        Reply::Done {
            share,
            models: self.models(),
            rounds: t.rounds,
            messages: t.messages,
            bytes: t.bytes_sent,
            ahead: 0,
        }
    }

    /// [`Self::done`] for a classify request, `ahead` of whose batches ran on material made
    /// ahead.
    fn done_ahead(&self, ahead: u64, net: &StreamTransport) -> Reply {
        match self.done(None, net) {
            Reply::Done {
                share,
                models,
                rounds,
                messages,
                bytes,
                ..
            } => Reply::Done {
                share,
                models,
                rounds,
                messages,
                bytes,
                ahead,
            },
            other => other,
        }
    }
}

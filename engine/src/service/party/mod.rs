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
use crate::transport::{
    step_code, Envelope, Link, PartyId, StreamOptions, StreamTransport, Transport,
};
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
    /// Requests running now, per data owner.
    owner_active: Mutex<HashMap<Role, usize>>,
    /// Per client: when its hour began and the batches it ran on range-checked models since.
    range_budget: Mutex<HashMap<Role, (Instant, u64)>>,
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
            owner_active: Mutex::new(HashMap::new()),
            range_budget: Mutex::new(HashMap::new()),
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

    /// The models served, with every detail (this service's own view; data owners see what
    /// [`Self::models_for`] gives them).
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut v: Vec<ModelInfo> = self
            .models
            .read()
            .map(|m| m.values().map(|s| s.meta.info()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The models data owner `role` may see: a client every model's name and what it needs to
    /// classify; a model owner its own models only, with their owner, parameter count and this
    /// party's share of their out-of-range count.
    pub(super) fn models_for(&self, role: &Role) -> Vec<ModelInfo> {
        let mut v: Vec<ModelInfo> = self
            .models
            .read()
            .map(|m| {
                m.values()
                    .filter_map(|s| match role {
                        Role::ModelOwner(o) if *o == s.meta.owner => Some(s.owner_info()),
                        Role::ModelOwner(_) => None,
                        _ => Some(s.public_info()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Accept connections on `listener` until the process ends: data owners' (and, on bob,
    /// alice's), each served on its own thread.
    pub fn serve(self: &Arc<Self>, listener: Listener) -> Result<()> {
        self.serve_until(listener, &AtomicBool::new(false))
    }

    /// The roles that may connect now: the data owners of the deployment file as last read
    /// (under TLS the file is followed like the revocation list, so an owner added with
    /// `keygen --add` connects without a restart), and alice on bob.
    fn allowed_now(&self) -> Vec<Role> {
        let mut allowed = self
            .net
            .revocations()
            .and_then(|r| r.data_owners())
            .unwrap_or_else(|| self.net.deployment().data_owners.clone());
        if self.index == 1 {
            allowed.push(Role::Alice);
        }
        allowed
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
        while let Some(stream) = listener.accept() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let (me, other) = (self.clone(), self.clone());
            self.net.admit_on_thread(
                stream,
                self.allowed_now(),
                move |role, link, slot| {
                    match role {
                        Role::Alice => me.serve_peer_link(link),
                        role => me.serve_owner(role, link),
                    }
                    drop(slot);
                },
                move |role, link, why| other.refuse_connection(role, link, &why),
            );
        }
        Ok(())
    }

    /// A data owner over its connection limits: its first request is answered "busy" with the
    /// reason (and alice tells bob at once), then the connection closes.
    fn refuse_connection(self: &Arc<Self>, role: Role, mut link: Link, why: &str) {
        let owner = role.party_id();
        let options = StreamOptions {
            max_wait: self.net.options().timeout,
            ..self.net.options()
        };
        let Ok((env, msg)) = link.recv(self.me(), owner, &options) else {
            return;
        };
        let Ok(request) = decode::<Request>(&msg, "request") else {
            return;
        };
        if env.request != request.id() || env.seq != 0 {
            return;
        }
        self.refuse_peer_join(request.id(), "busy");
        self.cancel_peer(request.id());
        let reply = Reply::Failed {
            reason: format!("busy: {why}; try again later"),
            kind: ErrorKind::Busy,
            peer: None,
        };
        let env = Envelope {
            request: request.id(),
            seq: 0,
            step: step_code(REPLY_STEP),
        };
        let _ = link.send(env, encode(&reply));
        drain(&mut link, self.me(), owner, &self.net.options());
    }

    /// Serve a data owner's connection: request after request, until it closes, fails, or
    /// stays without a request for `limits.idle_secs`.
    pub(super) fn serve_owner(self: &Arc<Self>, role: Role, mut link: Link) {
        let owner = role.party_id();
        let options = self.net.options();
        loop {
            let (env, msg) = match link.recv(self.me(), owner, &self.net.owner_idle_options()) {
                Ok(m) => m,
                Err(EngineError::Disconnected { .. }) => return,
                Err(EngineError::Stalled { after, .. }) => {
                    tracing::debug!(me = %self.net.me(), peer = %role, ?after, "closed an idle data owner's link");
                    return;
                }
                Err(e) => {
                    self.net.log_refusal(
                        "dropped a data owner's link",
                        &role.to_string(),
                        &e.to_string(),
                    );
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
                    self.net.log_refusal(
                        "refused a request out of step",
                        &role.to_string(),
                        &format!("{env:?}"),
                    );
                    return;
                }
                Err(e) => {
                    self.net
                        .log_refusal("refused a request", &role.to_string(), &e.to_string());
                    return;
                }
            };
            let mut net = StreamTransport::new(self.me(), options);
            net.set_request(request.id());
            net.resume_link(owner, link, 0, 1);
            let started = Instant::now();
            let (kind, id) = (request.kind(), request.id());
            let (model, rows, batch) = request.subject();
            let (reply, keep) = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.dispatch(&role, &request, &digest(&msg), &mut net)
            }))
            .unwrap_or_else(|_| {
                (
                    Reply::Failed {
                        reason: "internal error (panic) in the request".into(),
                        kind: ErrorKind::Internal,
                        peer: None,
                    },
                    false,
                )
            });
            if !keep {
                use EngineError::Remote;
                // The other compute party hears why first (it fails at once with this reason,
                // e.g. the dealer's refusal, rather than only seeing the link close).
                if let Some(Remote {
                    kind,
                    detail,
                    about,
                    ..
                }) = reply.as_error(self.me())
                {
                    let _ = net.send_failure(self.other(), kind, about, &detail);
                }
                // The survivors of a failed request drop its links to the other services at
                // once (they notice now, not after a timeout).
                for p in [PartyId::Alice, PartyId::Bob, PartyId::Dealer] {
                    if p != self.me() {
                        drop(net.take_link(p));
                    }
                }
            }
            let stats = net.meter_ref().stats().total();
            self.log_request(
                &role,
                id,
                kind,
                model,
                (rows, batch),
                &reply,
                started,
                stats,
            );
            net.meter().set_step(REPLY_STEP);
            let sent = net.send(owner, encode(&reply));
            match (sent, keep, net.take_link(owner)) {
                (Ok(()), true, Some(l)) => link = l,
                // After a failure the owner's link is out of step (it may still be sending the
                // rest of the request): read and drop what arrives until the owner, having read
                // the reply, closes (closing at once would make TCP reset the connection and
                // discard the reply before the owner reads it); at most one timeout in all.
                (Ok(()), false, Some(mut l)) => {
                    drain(&mut l, self.me(), owner, &options);
                    return;
                }
                _ => return,
            }
        }
    }

    /// One line per request: done at info level; failures and refusals as warnings,
    /// rate-limited per data owner and kind of failure (an owner can repeat them at will).
    #[allow(clippy::too_many_arguments)]
    fn log_request(
        &self,
        role: &Role,
        id: u64,
        kind: &str,
        model: &str,
        (rows, batch): (u64, u64),
        reply: &Reply,
        started: Instant,
        stats: crate::transport::StepStats,
    ) {
        let me = self.net.me();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let loud = |what: &str| self.net.rate_log().admit(&format!("{what} for {role}"));
        match reply {
            Reply::Failed {
                reason, kind: why, ..
            } => {
                if loud(&format!("request failed ({why:?})")) {
                    tracing::warn!(%me, request = id, kind, model, owner = %role, reason, "request failed")
                } else {
                    tracing::debug!(%me, request = id, kind, model, owner = %role, reason, "request failed")
                }
            }
            Reply::Busy { limit } => {
                if loud("busy") {
                    tracing::warn!(%me, request = id, kind, owner = %role, limit, "busy: request refused")
                }
            }
            Reply::Done { .. } => tracing::info!(
                %me, request = id, kind, model, rows, batch, owner = %role,
                rounds = stats.rounds, bytes = stats.bytes_sent, ms, "request done"
            ),
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
                    peer: None,
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
        let _slot = if light {
            None
        } else {
            match self.take_request_slot(role) {
                Ok(slot) => Some(slot),
                Err(reply) => {
                    self.refuse_peer_join(request.id(), "busy");
                    self.cancel_peer(request.id());
                    return (reply, false);
                }
            }
        };
        let r = match request {
            Request::List { .. } => Ok(self.listing(role, net)),
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
                .classify(role, *request, model, (*rows, *batch), *labels, digest, net)
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

    /// A place among the requests running now: at most `limits.max_requests` in all and
    /// `limits.max_requests_per_owner` for `role`; otherwise the "busy" reply to send.
    fn take_request_slot(&self, role: &Role) -> std::result::Result<RequestSlot<'_>, Reply> {
        let limits = &self.net.deployment().limits;
        let limit = limits.max_requests;
        if self.active.fetch_add(1, Ordering::SeqCst) >= limit {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return Err(Reply::Busy { limit });
        }
        let total = Slot(&self.active);
        let per_owner = limits.requests_per_owner();
        let mut running = self
            .owner_active
            .lock()
            .map_err(|_| Reply::Busy { limit })?;
        let mine = running.entry(role.clone()).or_insert(0);
        if *mine >= per_owner {
            return Err(Reply::Failed {
                reason: format!(
                    "busy: {role} runs {per_owner} requests at once \
                     (limits.max_requests_per_owner); try again later"
                ),
                kind: ErrorKind::Busy,
                peer: None,
            });
        }
        *mine += 1;
        Ok(RequestSlot {
            _total: total,
            owners: &self.owner_active,
            role: role.clone(),
        })
    }

    pub(super) fn done(&self, share: Option<u64>, net: &StreamTransport) -> Reply {
        let t = net.meter_ref().stats().total();
        Reply::Done {
            share,
            models: Vec::new(),
            rounds: t.rounds,
            messages: t.messages,
            bytes: t.bytes_sent,
            ahead: 0,
        }
    }

    /// The reply to a list request: the models `role` may see.
    fn listing(&self, role: &Role, net: &StreamTransport) -> Reply {
        match self.done(None, net) {
            Reply::Done {
                share,
                rounds,
                messages,
                bytes,
                ahead,
                ..
            } => Reply::Done {
                share,
                models: self.models_for(role),
                rounds,
                messages,
                bytes,
                ahead,
            },
            other => other,
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

/// A data owner's request counted among those running (in all and for its owner) until dropped.
struct RequestSlot<'a> {
    _total: Slot<'a>,
    owners: &'a Mutex<HashMap<Role, usize>>,
    role: Role,
}

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut o) = self.owners.lock() {
            if let Some(n) = o.get_mut(&self.role) {
                *n -= 1;
                if *n == 0 {
                    o.remove(&self.role);
                }
            }
        }
    }
}

/// Read and drop what a data owner still sends on a link out of step (after a failure or a
/// refusal), until it closes; at most one timeout in all, heartbeats or not.
fn drain(link: &mut Link, me: PartyId, owner: PartyId, options: &StreamOptions) {
    let until = Instant::now() + options.timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let wait = StreamOptions {
            timeout: left.min(options.timeout),
            max_wait: left,
            ..*options
        };
        if link.recv(me, owner, &wait).is_err() {
            return;
        }
    }
}

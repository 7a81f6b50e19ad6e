//! The dealer as a service: for every request, two fresh seeds (one per compute party) and bob's
//! corrections, with the same stream assignment and parameter checks as in-process
//! ([`crate::dealer`]); for every uploaded model, its fixed masks, persisted.
//!
//! Each party joins a request on one of its links with a [`DealerJoin`]; the dealer pairs the
//! two joins by request id (the second must agree with the first on model, kind and fractional
//! bits) and answers each with its seed. On bob's link it then serves material requests, each
//! stream once and in order, until bob ends the request ([`DealerEnd`]). For an upload that
//! both parties completed, bob's end commits the model: the dealer writes the seeds and mask
//! records of the upload to `DATA_DIR/<name>.dealer` (atomically, checksummed) and draws the
//! masks again from them when it restarts.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::dealer::{Dealer, DealerPolicy, FixedMasks, MaskRecord, StreamSpace};
use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::service::hooks::{HookPoint, Hooks};
use crate::service::net::{Listener, Net};
use crate::service::store::{RecordReader, RecordWriter};
use crate::transport::{step_code, Link, PartyId, StreamTransport, Transport};
use crate::wire::control::{decode, DealerEnd, DealerJoin, JoinKind};
use crate::wire::dealer::{
    text_to_words, SeedGrant, DEALER_STEP, OP_BATCH, OP_END, STATUS_ERROR, STATUS_OK,
};

const RECORD_KIND: &[u8; 8] = b"dealer\0\0";
/// Pending joins kept at most (a request whose second party never joins is forgotten when
/// bob's part of it ends, or else after two timeouts).
const MAX_PENDING: usize = 1 << 16;

/// What the dealer persists for an uploaded model.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ModelRecord {
    name: String,
    owner: String,
    frac_bits: u32,
    seeds: [[u8; 32]; 2],
    masks: Vec<MaskRecord>,
}

struct DealerModel {
    record: ModelRecord,
    masks: Arc<RwLock<FixedMasks>>,
}

/// Requests whose seeds were issued and must never be issued again: paired (both joined),
/// ended by bob before alice joined, or expired half-joined. A late or replayed join of one is
/// refused instead of getting fresh seeds that the other party never had, which would make the
/// two halves of the request's material unrelated (a silently wrong answer). Kept for four
/// timeouts, at most [`MAX_CLOSED`] (the oldest forgotten first).
#[derive(Default)]
struct Closed {
    ids: HashMap<u64, Instant>,
    order: VecDeque<u64>,
}

/// Closed requests remembered at most.
const MAX_CLOSED: usize = 1 << 20;

impl Closed {
    fn insert(&mut self, request: u64, keep: Duration) {
        while let Some(&old) = self.order.front() {
            let stale = self.ids.get(&old).is_none_or(|t| t.elapsed() > keep);
            if !stale && self.order.len() < MAX_CLOSED {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        if self.ids.insert(request, Instant::now()).is_none() {
            self.order.push_back(request);
        }
    }

    fn contains(&self, request: u64) -> bool {
        self.ids.contains_key(&request)
    }
}

/// A request one or both parties joined.
struct Pending {
    join: DealerJoin,
    seeds: [[u8; 32]; 2],
    /// The request's material tag (both parties get it with their seed).
    tag: u64,
    masks: Arc<RwLock<FixedMasks>>,
    joined: [bool; 2],
    since: Instant,
}

/// The dealer service (see the module documentation).
pub struct DealerService {
    net: Arc<Net>,
    dir: PathBuf,
    models: RwLock<HashMap<String, Arc<DealerModel>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    closed: Mutex<Closed>,
    rng: Mutex<ChaCha20Rng>,
    /// Where tests hold the dealer's workers.
    pub(crate) hooks: Hooks,
}

/// The policy of a request of a session with `frac_bits` fractional bits, under the
/// deployment's word limit (`limits.max_material_words`).
fn policy(frac_bits: u32, net: &Net) -> DealerPolicy {
    DealerPolicy {
        max_request_words: net.deployment().limits.max_material_words,
        ..DealerPolicy::for_session(frac_bits)
    }
}

impl DealerService {
    /// A dealer with its models in `dir` (created if missing); every record there is loaded and
    /// checked now, and a damaged or foreign one is an error naming the file.
    pub fn open(net: Net, dir: &Path) -> Result<Arc<DealerService>> {
        Self::open_with(net, dir, ChaCha20Rng::from_entropy())
    }

    /// [`Self::open`] drawing every seed from `rng` (a fixed seed in tests only).
    pub(crate) fn open_with(net: Net, dir: &Path, rng: ChaCha20Rng) -> Result<Arc<DealerService>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", dir.display())))?;
        let mut models = HashMap::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("dealer") {
                continue;
            }
            let mut r = RecordReader::open(&path, RECORD_KIND)?;
            let record: ModelRecord = serde_json::from_slice(r.bytes()?).map_err(|e| {
                EngineError::Format(format!("{}: damaged record: {e}", path.display()))
            })?;
            r.finish()?;
            let masks = FixedMasks::regenerate(
                record.seeds,
                &record.masks,
                policy(record.frac_bits, &net),
            )?;
            tracing::info!(model = %record.name, masks = record.masks.len(), "dealer: loaded model");
            models.insert(record.name.clone(), Arc::new(DealerModel { record, masks }));
        }
        Ok(Arc::new(DealerService {
            net: Arc::new(net),
            dir: dir.to_path_buf(),
            models: RwLock::new(models),
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(Closed::default()),
            rng: Mutex::new(rng),
            hooks: Hooks::default(),
        }))
    }

    /// Names of the models whose masks the dealer holds.
    pub fn models(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .models
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Accept alice's and bob's connections on `listener` until the process ends; each
    /// connection is served on its own thread.
    pub fn serve(self: &Arc<Self>, listener: Listener) -> Result<()> {
        self.serve_until(listener, &AtomicBool::new(false))
    }

    /// [`Self::serve`] until `stop` is set (checked after each accepted connection).
    pub fn serve_until(self: &Arc<Self>, listener: Listener, stop: &AtomicBool) -> Result<()> {
        tracing::info!(
            addr = %listener.describe(),
            tls = self.net.is_tls(),
            "dealer: serving"
        );
        while let Some(stream) = listener.accept() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let me = self.clone();
            self.net.admit_on_thread(
                stream,
                vec![Role::Alice, Role::Bob],
                move |role, link, _| me.serve_link(role.party_id(), link),
                // Only data owners are counted against connection limits; none connects here.
                |_, _, _| {},
            );
        }
        Ok(())
    }

    /// Serve one party's link: request after request, until it closes or fails.
    fn serve_link(&self, party: PartyId, mut link: Link) {
        let options = self.net.options();
        loop {
            let (env, msg) = match link.recv(PartyId::Dealer, party, &self.net.idle_options()) {
                Ok(m) => m,
                Err(EngineError::Disconnected { .. }) => return,
                Err(e) => {
                    tracing::warn!(%party, error = %e, "dealer: link dropped");
                    return;
                }
            };
            let mut net = StreamTransport::new(PartyId::Dealer, options);
            net.set_request(env.request);
            net.resume_link(party, link, 0, 1);
            net.meter().set_step(DEALER_STEP);
            if env.seq != 0 || env.step != step_code(DEALER_STEP) {
                tracing::warn!(%party, ?env, "dealer: refused a message that is no join");
                return;
            }
            let started = Instant::now();
            let served = self.serve_request(party, env.request, &msg, &mut net);
            match &served {
                Ok(()) => tracing::info!(
                    request = env.request,
                    %party,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    bytes = net.meter_ref().stats().total().bytes_sent,
                    "dealer: request served"
                ),
                Err(e) => {
                    tracing::warn!(request = env.request, %party, error = %e, "dealer: request failed")
                }
            }
            match (served, net.take_link(party)) {
                (Ok(()), Some(l)) => link = l,
                _ => return,
            }
        }
    }

    fn refuse(net: &mut StreamTransport, party: PartyId, e: &EngineError) -> Result<()> {
        let mut r = vec![STATUS_ERROR];
        r.extend(text_to_words(&e.to_string()));
        net.send(party, r)
    }

    /// One request on one party's link: the join, then (bob) material until the end.
    fn serve_request(
        &self,
        party: PartyId,
        request: u64,
        msg: &[u64],
        net: &mut StreamTransport,
    ) -> Result<()> {
        self.hooks.at(HookPoint::DealerJoin {
            request,
            party: party_index(party),
        });
        let joined =
            decode::<DealerJoin>(msg, "dealer join").and_then(|j| self.join(party, request, j));
        let (join, seeds, tag, masks) = match joined {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(request, %party, error = %e, "dealer: join refused");
                Self::refuse(net, party, &e)?;
                return Ok(());
            }
        };
        if join.kind == JoinKind::Delete {
            let r = self.delete(&join.model);
            return match r {
                Ok(()) => net.send(party, vec![STATUS_OK]),
                Err(e) => Self::refuse(net, party, &e),
            };
        }
        let mut reply = vec![STATUS_OK];
        let grant = SeedGrant {
            seed: seeds[party_index(party)],
            tag,
        };
        reply.extend(grant.to_words());
        net.send(party, reply)?;
        if party == PartyId::Alice {
            return Ok(());
        }
        let served = self.serve_bob(&join, seeds, &masks, net);
        self.forget_half_joined(request, party);
        self.hooks.at(HookPoint::DealerEnded { request });
        served
    }

    /// Bob's request after his join: material until he ends it.
    fn serve_bob(
        &self,
        join: &DealerJoin,
        seeds: [[u8; 32]; 2],
        masks: &Arc<RwLock<FixedMasks>>,
        net: &mut StreamTransport,
    ) -> Result<()> {
        let (party, request) = (PartyId::Bob, join.request);
        let dealer = Dealer::new(seeds, masks.clone(), policy(join.frac_bits, &self.net));
        let mut space = StreamSpace::new();
        if join.kind == JoinKind::Compute {
            // A computation's programs come when its owner runs them: bob's link may stay
            // quiet (heartbeats only) for as long as the computation lives.
            net.set_options(self.net.idle_options());
        }
        loop {
            let msg = net.recv(party)?;
            let reply = match msg.first() {
                Some(&OP_BATCH) => dealer.serve_batch(&mut space, &msg[1..]),
                Some(&OP_END) => {
                    let end = decode::<DealerEnd>(&msg[1..], "dealer end")?;
                    let r = match end {
                        DealerEnd::Finish {
                            commit: true,
                            owner,
                        } if join.kind == JoinKind::Upload => {
                            self.commit(join, seeds, masks, owner)
                        }
                        DealerEnd::Finish { .. } => Ok(()),
                    };
                    return match r {
                        Ok(()) => net.send(party, vec![STATUS_OK]),
                        Err(e) => Self::refuse(net, party, &e),
                    };
                }
                _ => Err(EngineError::Protocol("unknown dealer opcode".into())),
            };
            let reply = reply.unwrap_or_else(|e| {
                tracing::warn!(request, error = %e, "dealer refused a request");
                let mut r = vec![STATUS_ERROR];
                // The reason itself (a policy refusal is a `Protocol` error only here).
                let reason = match &e {
                    EngineError::Protocol(m) => m.clone(),
                    e => e.to_string(),
                };
                r.extend(text_to_words(&reason));
                r
            });
            net.send(party, reply)?;
        }
    }

    /// Once bob's part of a request ended (however it ended), a join alice never sent will not
    /// come: forget the half-joined request now rather than after two timeouts.
    fn forget_half_joined(&self, request: u64, party: PartyId) {
        if let Ok(mut pending) = self.pending.lock() {
            let i = party_index(party);
            if pending
                .get(&request)
                .is_some_and(|p| p.joined[i] && !p.joined[1 - i])
            {
                pending.remove(&request);
                // A join of the other party still in flight is refused, never given new seeds.
                self.close(request);
            }
        }
    }

    /// Remember that `request`'s seeds were issued for good (see [`Closed`]).
    fn close(&self, request: u64) {
        if let Ok(mut c) = self.closed.lock() {
            c.insert(request, self.net.options().timeout * 4);
        }
    }

    /// Pair a party's join with the other's (or open the request); returns the join as
    /// agreed, the request's seeds and the masks its fixed operands use.
    #[allow(clippy::type_complexity)]
    fn join(
        &self,
        party: PartyId,
        request: u64,
        join: DealerJoin,
    ) -> Result<(DealerJoin, [[u8; 32]; 2], u64, Arc<RwLock<FixedMasks>>)> {
        let refuse = |m: String| Err(EngineError::Protocol(m));
        match join.kind {
            JoinKind::Compute if !join.model.is_empty() => {
                return refuse("a computation names no model".into())
            }
            JoinKind::Compute => {}
            _ => crate::wire::control::check_model_name(&join.model)?,
        }
        if join.request != request || usize::from(join.party) != party_index(party) {
            return refuse(format!(
                "join for request {} as party {} on {party}'s link for request {request}",
                join.request, join.party
            ));
        }
        let model = self
            .models
            .read()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?
            .get(&join.model)
            .cloned();
        match (&join.kind, &model) {
            // A record the parties lack (an upload whose commit failed after the dealer kept
            // it) is replaced by the next upload of the name by the same owner (checked at
            // commit); the parties refuse an upload of a name they serve before it gets here.
            (JoinKind::Upload, Some(_)) => {}
            (JoinKind::Classify, None) => return refuse(format!("no model '{}' here", join.model)),
            (JoinKind::Classify, Some(m)) if m.record.frac_bits != join.frac_bits => {
                return refuse(format!(
                    "model '{}' has {} fractional bits, the join says {}",
                    join.model, m.record.frac_bits, join.frac_bits
                ))
            }
            _ => {}
        }
        if join.kind == JoinKind::Delete {
            if party != PartyId::Bob {
                return refuse("only bob deletes a model's masks".into());
            }
            return Ok((join, [[0; 32]; 2], 0, Arc::default()));
        }
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
        // A party joins at most a timeout after the other (it waits that long for its peer).
        let expiry = self.net.options().timeout * 2;
        pending.retain(|&id, p| {
            let live = p.since.elapsed() < expiry;
            if !live {
                self.close(id);
            }
            live
        });
        if self.closed.lock().map_or(true, |c| c.contains(request)) {
            return refuse(format!(
                "request {request} was already joined by both parties or ended at the dealer \
                 (a request's seeds are issued once)"
            ));
        }
        let i = party_index(party);
        if let Some(p) = pending.get_mut(&request) {
            if p.join.model != join.model
                || p.join.kind != join.kind
                || p.join.frac_bits != join.frac_bits
            {
                return refuse(format!(
                    "request {request}: {party} joined for {:?} of '{}' ({} bits), the other party for {:?} of '{}' ({} bits)",
                    join.kind, join.model, join.frac_bits, p.join.kind, p.join.model, p.join.frac_bits
                ));
            }
            if p.joined[i] {
                return refuse(format!("{party} already joined request {request}"));
            }
            p.joined[i] = true;
            let out = (join, p.seeds, p.tag, p.masks.clone());
            if p.joined == [true, true] {
                pending.remove(&request);
                self.close(request);
            }
            return Ok(out);
        }
        if pending.len() >= MAX_PENDING {
            return refuse("busy: too many requests waiting for their second party".into());
        }
        let mut seeds = [[0u8; 32]; 2];
        let tag = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
            for s in &mut seeds {
                rng.fill_bytes(s);
            }
            rng.next_u64()
        };
        let masks = match (&model, join.kind) {
            (Some(m), JoinKind::Classify) => m.masks.clone(),
            _ => Arc::new(RwLock::new(FixedMasks::default())),
        };
        let mut joined = [false; 2];
        joined[i] = true;
        pending.insert(
            request,
            Pending {
                join: join.clone(),
                seeds,
                tag,
                masks: masks.clone(),
                joined,
                since: Instant::now(),
            },
        );
        Ok((join, seeds, tag, masks))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.dealer"))
    }

    /// Keep an uploaded model's masks: persist, then serve.
    fn commit(
        &self,
        join: &DealerJoin,
        seeds: [[u8; 32]; 2],
        masks: &Arc<RwLock<FixedMasks>>,
        owner: String,
    ) -> Result<()> {
        let records = masks
            .read()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?
            .records()
            .to_vec();
        let record = ModelRecord {
            name: join.model.clone(),
            owner,
            frac_bits: join.frac_bits,
            seeds,
            masks: records,
        };
        let mut models = self
            .models
            .write()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
        if let Some(old) = models.get(&join.model) {
            if old.record.owner != record.owner {
                return Err(EngineError::Protocol(format!(
                    "model '{}' exists, owned by '{}'",
                    join.model, old.record.owner
                )));
            }
            tracing::warn!(model = %join.model, "dealer: replacing a record the parties lacked");
        }
        let mut w = RecordWriter::create(&self.record_path(&join.model), RECORD_KIND)?;
        w.bytes(&serde_json::to_vec(&record).expect("records serialise"))?;
        w.commit()?;
        tracing::info!(model = %join.model, masks = record.masks.len(), "dealer: model committed");
        models.insert(
            join.model.clone(),
            Arc::new(DealerModel {
                record,
                masks: masks.clone(),
            }),
        );
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<()> {
        let mut models = self
            .models
            .write()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
        models.remove(name);
        let path = self.record_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            // Already gone (a delete retried after a party crashed in the middle of one).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(model = name, "dealer: deleting a model it does not hold")
            }
            Err(e) => return Err(EngineError::Invalid(format!("{}: {e}", path.display()))),
        }
        tracing::info!(model = name, "dealer: model deleted");
        Ok(())
    }
}

fn party_index(p: PartyId) -> usize {
    usize::from(p == PartyId::Bob)
}

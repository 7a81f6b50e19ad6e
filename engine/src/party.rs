//! One compute party: its own backend, transport, dealer stream and share store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use kernels::{Backend, BinaryOp, Storage, Tensor};

use crate::dealer::{expand_with, fold_identity, material_identity, material_stream, MaterialSpec};
use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;
use crate::fixed::TRUNC_OFFSET_BITS;
use crate::share::Share;
use crate::transport::{PartyId, TrafficStats, Transport};
use crate::wire::dealer::{encode_material_request, words_to_text, SeedGrant, STATUS_OK};

/// One layer's weight as a party holds it between requests: its share of the weight (product
/// layout), the public masked value `F = W - b` of the weight as a fixed operand, and its share
/// of the bias. Held by the party's own service (one process is one party) and installed into
/// each request's [`Party`]; the tensors are plain backend tensors so that the service's request
/// threads can share them, and become [`Share`]s again only inside a party.
#[derive(Clone, Debug)]
pub struct WeightShares {
    /// `[weight, fixed operand, bias]` store ids.
    pub ids: [u64; 3],
    /// This party's share of the weight `[depth, out]`.
    pub weight: Tensor,
    /// The public `F = W - b` `[depth, out]`.
    pub public: Tensor,
    /// This party's share of the bias `[out]`.
    pub bias: Tensor,
}

/// Words every message between alice and bob carries besides its payload: the fingerprint of
/// the material the sender consumed so far (see [`Party::exchange`]).
pub const CHECK_WORDS_PER_MESSAGE: u64 = 1;

/// Material fetched ahead of use, in the order the protocols will consume it.
pub(crate) struct Prepared {
    pub(crate) spec: MaterialSpec,
    pub(crate) parts: Vec<Tensor>,
    /// Its identity ([`material_identity`] of its grant's tag, stream and spec).
    pub(crate) identity: u64,
}

/// Where a party takes its next chunk of material when its queue runs dry (a service's
/// producer of a request's material, made a bounded chunk at a time; see
/// [`Party::set_material_feed`]). `Ok(None)`: the feed has no more.
pub(crate) type MaterialFeed = Box<dyn FnMut() -> Result<Option<Vec<Prepared>>>>;

/// A compute party (alice = 0, bob = 1) inside one request: its transport, dealer grant,
/// material queue and share store. A service builds one per request (see
/// [`crate::service::party`]).
pub struct Party {
    index: usize,
    net: Box<dyn Transport>,
    backend: Arc<dyn Backend>,
    fixed: FixedPoint,
    /// This party's seed and the material tag, from the dealer (a service party that runs on
    /// preprocessed material only has none, and fetches nothing).
    grant: Option<SeedGrant>,
    next_stream: u64,
    /// The fingerprint of every piece of material this party has consumed, in order
    /// ([`fold_identity`]); sent with every message to the peer and checked against the
    /// peer's (see [`Party::exchange`]).
    consumed: u64,
    queue: VecDeque<Prepared>,
    /// Where the next chunk of material comes from when the queue runs dry (`None`: fetched
    /// on demand, if this party has a grant).
    feed: Option<MaterialFeed>,
    store: HashMap<u64, Share>,
    /// The public masked value `F = W - b` of each fixed operand, by id.
    fixed_public: HashMap<u64, Tensor>,
    /// The weight share each fixed operand was registered with (its storage, not kept alive).
    fixed_weights: HashMap<u64, Weak<dyn Storage>>,
    next_id: u64,
    /// When `Some`, every message received from the peer is kept (for audits and tests).
    transcript: Option<Vec<Vec<u64>>>,
    /// Shared counts of values that failed an in-protocol range check since the last
    /// [`Party::finish_range_checks`], each with the layer it belongs to.
    range_failures: Vec<(String, Share)>,
    /// The layer the next recorded failures belong to.
    range_site: String,
}

/// Ask the dealer for bob's corrections of `specs`, numbered from stream `first`. The reply is
/// `[STATUS_OK, first, corrections...]`; the echoed first stream is checked here.
pub(crate) fn request_corrections(
    net: &mut dyn Transport,
    first: u64,
    specs: &[MaterialSpec],
) -> Result<Vec<u64>> {
    let req = encode_material_request(first, specs);
    let prev = net.meter().set_step("dealer");
    net.send(PartyId::Dealer, req)?;
    let reply = net.recv(PartyId::Dealer);
    net.meter().set_step(prev);
    let reply = reply?;
    if reply.first() != Some(&STATUS_OK) {
        // The dealer's own reason, as a failure of the dealer: the request stops at once and
        // every report of it names the dealer first.
        return Err(EngineError::Remote {
            party: PartyId::Dealer,
            kind: crate::error::ErrorKind::Refused,
            detail: format!(
                "refused {} piece(s) of material from stream {first}: {}",
                specs.len(),
                words_to_text(reply.get(1..).unwrap_or(&[]))
            ),
            about: None,
        });
    }
    // The dealer assigns streams; the other party expands at `first` from its own counter, so
    // bob must have been served exactly those (see `dealer::service`).
    if reply.get(1) != Some(&first) {
        return Err(EngineError::Protocol(format!(
            "dealer assigned streams from {:?}, expected {first}",
            reply.get(1)
        )));
    }
    Ok(reply)
}

/// What a party needs to expand and prepare material, shareable with background workers.
#[derive(Clone)]
pub(crate) struct MaterialMaker {
    pub(crate) index: usize,
    pub(crate) seed: [u8; 32],
    /// The material tag of the grant the seed came with.
    pub(crate) tag: u64,
    pub(crate) backend: Arc<dyn Backend>,
}

impl MaterialMaker {
    /// Expand this party's share of `specs` (streams `first ..`) from its seed and, for bob, the
    /// dealer's `corrections` reply; then run the input-independent precomputation.
    pub(crate) fn make(
        &self,
        first: u64,
        specs: &[MaterialSpec],
        corrections: Option<&[u64]>,
        fixed_public: &HashMap<u64, Tensor>,
    ) -> Result<Vec<Prepared>> {
        let mut off = 2;
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let stream = first + i as u64;
            let need: usize = spec.parts().derived.iter().sum();
            let corr = corrections.map(|c| {
                let s = &c[off.min(c.len())..(off + need).min(c.len())];
                off += need;
                s
            });
            // Random parts (and alice's derived parts) are expanded from the seed by the
            // backend (on the GPU, on the device); only bob's corrections are uploaded.
            let be = self.backend.clone();
            let seed = self.seed;
            let mut pos = 0u128;
            let parts = expand_with(
                spec,
                self.index,
                corr,
                |len| {
                    let t = be.chacha12(&seed, stream, pos, len)?;
                    pos += 2 * len as u128;
                    Ok(t)
                },
                |c| Ok(be.upload(&[c.len()], c)?),
            )?;
            let parts = self.prepare(spec, parts, fixed_public)?;
            out.push(Prepared {
                spec: *spec,
                parts,
                identity: material_identity(self.tag, stream, spec),
            });
        }
        Ok(out)
    }

    /// Input-independent precomputation on fetched material.
    ///
    /// For a fixed-operand product `X·W` the per-call material `(a, c = a·b)` becomes
    /// `(a, M = a·F + c)` where `F = W - b` is the operand's public masked value: `M` is a share
    /// of `a·W`, so the online phase needs only `E·W_i + M_i` (one product per party). A
    /// convolution's material `(a, c = im2col(a)·b)` likewise becomes `(a, im2col(a)·F + c)`.
    ///
    /// For truncation, alice folds the public offset `2^62` into her share of the mask `r`, so
    /// the online masking `x + 2^62 + r` is a single addition.
    fn prepare(
        &self,
        spec: &MaterialSpec,
        mut parts: Vec<Tensor>,
        fixed_public: &HashMap<u64, Tensor>,
    ) -> Result<Vec<Tensor>> {
        if let (MaterialSpec::Trunc { .. }, 0) = (spec, self.index) {
            parts[0] = self.backend.scalar(
                kernels::ScalarOp::Add,
                &parts[0],
                1u64 << TRUNC_OFFSET_BITS,
            )?;
        }
        if let MaterialSpec::FixedTriple { fixed_id, m, k, n } = *spec {
            let f = fixed_public.get(&fixed_id).ok_or_else(|| {
                EngineError::Invalid(format!("fixed operand {fixed_id} is not registered"))
            })?;
            let a = parts[0]
                .reshaped(vec![m, k])
                .ok_or_else(|| shape_err("fixed", "a"))?;
            let c = parts[1]
                .reshaped(vec![m, n])
                .ok_or_else(|| shape_err("fixed", "c"))?;
            let mm = self.backend.matmul(&a, f, Some(&c))?;
            parts = vec![a, mm];
        }
        if let MaterialSpec::FixedConv { fixed_id, conv } = *spec {
            let f = fixed_public.get(&fixed_id).ok_or_else(|| {
                EngineError::Invalid(format!("fixed operand {fixed_id} is not registered"))
            })?;
            let (pixels, n) = (conv.pixels(), conv.out_channels());
            let cols = self
                .backend
                .gather(&parts[0], &conv.im2col(), &[pixels, conv.depth()])?;
            let c = parts[1]
                .reshaped(vec![pixels, n])
                .ok_or_else(|| shape_err("fixed conv", "c"))?;
            parts[1] = self.backend.matmul(&cols, f, Some(&c))?;
        }
        Ok(parts)
    }
}

impl Party {
    /// Set up party `index` with a dealer seed already received (a service joins each request
    /// at the dealer itself), or with none: then it runs on material queued with
    /// [`Party::queue_prepared`] only, and any other material request is an error.
    pub(crate) fn with_seed(
        index: usize,
        net: Box<dyn Transport>,
        backend: Arc<dyn Backend>,
        fixed: FixedPoint,
        grant: Option<SeedGrant>,
    ) -> Party {
        Party {
            index,
            net,
            backend,
            fixed,
            grant,
            next_stream: 0,
            consumed: 0,
            queue: VecDeque::new(),
            feed: None,
            store: HashMap::new(),
            fixed_public: HashMap::new(),
            fixed_weights: HashMap::new(),
            next_id: 1,
            transcript: None,
            range_failures: Vec::new(),
            range_site: String::new(),
        }
    }

    /// End this party, handing back its transport (a service returns the links of a finished
    /// request to its pools).
    pub fn into_transport(self) -> Box<dyn Transport> {
        self.net
    }

    /// This party's shares of one layer's weight, as kept under `[weight, fixed operand, bias]`
    /// store ids (for persisting a model, and for installing it in another request's party).
    pub fn weight_shares(&self, ids: [u64; 3]) -> Result<WeightShares> {
        let [w, f, b] = ids;
        let public =
            self.fixed_public.get(&f).cloned().ok_or_else(|| {
                EngineError::Invalid(format!("fixed operand {f} is not registered"))
            })?;
        let weight = self.kept(w)?;
        self.check_fixed_binding(f, weight.tensor())?;
        Ok(WeightShares {
            ids,
            weight: weight.tensor().clone(),
            public,
            bias: self.kept(b)?.tensor().clone(),
        })
    }

    /// Install shares of a layer's weight taken from another party object of this same party
    /// (see [`Party::weight_shares`]), under their ids; later ids are allocated past them.
    pub fn install_weight_shares(&mut self, w: &WeightShares) {
        let [wid, fid, bid] = w.ids;
        self.store.insert(wid, Share::new(w.weight.clone()));
        self.store.insert(bid, Share::new(w.bias.clone()));
        self.register_fixed_public(fid, w.public.clone(), &w.weight);
        self.next_id = self.next_id.max(wid.max(fid).max(bid) + 1);
    }

    /// A material maker for this party (its seed and backend).
    pub(crate) fn maker(&self) -> MaterialMaker {
        let grant = self.grant.unwrap_or(SeedGrant {
            seed: [0; 32],
            tag: 0,
        });
        MaterialMaker {
            index: self.index,
            seed: grant.seed,
            tag: grant.tag,
            backend: self.backend.clone(),
        }
    }

    /// Queue prepared material for the protocol steps that follow.
    pub(crate) fn queue_prepared(&mut self, items: Vec<Prepared>) {
        self.queue.extend(items);
    }

    /// 0 for alice, 1 for bob.
    pub fn index(&self) -> usize {
        self.index
    }

    /// This party's identity.
    pub fn id(&self) -> PartyId {
        PartyId::compute(self.index)
    }

    /// The other compute party.
    pub fn peer(&self) -> PartyId {
        PartyId::compute(1 - self.index)
    }

    /// The compute backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// A shared handle to the compute backend (for protocol steps that also message the peer).
    pub(crate) fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// The fixed-point format.
    pub fn fixed_point(&self) -> FixedPoint {
        self.fixed
    }

    /// Traffic counted so far by this party's transport.
    pub fn traffic(&self) -> TrafficStats {
        self.net.meter_ref().stats().clone()
    }

    /// Attribute following traffic to `step`; returns the previous step name.
    pub fn set_step(&mut self, step: &'static str) -> &'static str {
        self.net.meter().set_step(step)
    }

    // ---- share store (persists between session runs) ----

    /// Keep a share under a new id (ids advance identically on both parties).
    pub fn keep(&mut self, share: Share) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.store.insert(id, share);
        id
    }

    /// A kept share.
    pub fn kept(&self, id: u64) -> Result<Share> {
        self.store
            .get(&id)
            .cloned()
            .ok_or_else(|| EngineError::Invalid(format!("no shared tensor with id {id}")))
    }

    /// Drop a kept share.
    pub fn forget(&mut self, id: u64) {
        self.store.remove(&id);
        self.fixed_public.remove(&id);
        self.fixed_weights.remove(&id);
    }

    /// Allocate an id without storing anything (for fixed operands).
    pub(crate) fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// This party's own share values (its own data: for inspection, tests and statistics).
    pub fn own_words(&self, x: &Share) -> Result<Vec<u64>> {
        Ok(self.backend.download(x.tensor())?)
    }

    /// Start keeping every message received from the peer (drops an earlier transcript).
    pub fn record_transcript(&mut self) {
        self.transcript = Some(Vec::new());
    }

    /// Stop recording and return the messages received from the peer since recording began.
    pub fn take_transcript(&mut self) -> Vec<Vec<u64>> {
        self.transcript.take().unwrap_or_default()
    }

    // ---- range checks (see `protocols::range_check`) ----

    /// Attribute the range-check failures recorded from now on to `site` (a layer's index and
    /// name); returns the previous site.
    pub fn set_range_site(&mut self, site: String) -> String {
        std::mem::replace(&mut self.range_site, site)
    }

    /// Record a shared count of values that failed a range check at the current site.
    pub(crate) fn record_range_failures(&mut self, count: Share) {
        let site = self.range_site.clone();
        self.range_failures.push((site, count));
    }

    /// The counts recorded since the last call, in order.
    pub(crate) fn take_range_failures(&mut self) -> Vec<(String, Share)> {
        std::mem::take(&mut self.range_failures)
    }

    // ---- communication with the peer ----

    /// Send `payload` to the peer and receive the peer's message: one round.
    ///
    /// **Material check.** Every message to the peer carries one more word: the fingerprint of
    /// all material this party has consumed so far. The peer's must equal ours before anything
    /// it sent is used: material whose halves were made for different requests, entries,
    /// streams or shapes (a bug that would otherwise give a plausible wrong answer) stops the
    /// request here, at the first opening that uses it. The fingerprint depends on public
    /// values only (the grant's tag, stream numbers, specs), never on a secret, so it tells the
    /// peer nothing it does not know. No extra round; 8 bytes per message.
    pub(crate) fn exchange(
        &mut self,
        step: &'static str,
        mut payload: Vec<u64>,
    ) -> Result<Vec<u64>> {
        let prev = self.set_step(step);
        let peer = self.peer();
        let expected = payload.len();
        payload.push(self.consumed);
        self.net.send(peer, payload)?;
        let mut got = self.net.recv(peer)?;
        self.set_step(prev);
        if got.len() != expected + 1 {
            return Err(EngineError::Protocol(format!(
                "{step}: peer sent {} words, expected {}",
                got.len(),
                expected + 1
            )));
        }
        let theirs = got.pop().expect("one word at least");
        if theirs != self.consumed {
            return Err(EngineError::OutOfStep {
                step,
                detail: format!(
                    "{} and {} hold different preprocessed material (fingerprints {:016x} and \
                     {theirs:016x}); the request was stopped before using it",
                    self.id(),
                    peer,
                    self.consumed
                ),
            });
        }
        if let Some(t) = self.transcript.as_mut() {
            t.push(got.clone());
        }
        Ok(got)
    }

    /// Send raw words to any endpoint (reveal to an owner).
    pub(crate) fn send_to(
        &mut self,
        step: &'static str,
        to: PartyId,
        payload: Vec<u64>,
    ) -> Result<()> {
        let prev = self.set_step(step);
        self.net.send(to, payload)?;
        self.set_step(prev);
        Ok(())
    }

    /// Receive raw words from any endpoint (shares from an owner).
    pub(crate) fn recv_from(&mut self, step: &'static str, from: PartyId) -> Result<Vec<u64>> {
        let prev = self.set_step(step);
        let r = self.net.recv(from);
        self.set_step(prev);
        r
    }

    /// Open masked values: both parties learn the sum of the shares of every tensor, in one round.
    ///
    /// Only ever called on values masked with fresh dealer randomness (Beaver differences,
    /// truncation masks), so the opened values are uniform.
    pub(crate) fn open(&mut self, step: &'static str, mine: &[&Tensor]) -> Result<Vec<Tensor>> {
        // One download of everything opened this round and one upload of the peer's words.
        let joined = match mine {
            [one] => (*one).clone(),
            _ => self.backend.concat(mine)?,
        };
        let theirs = self.exchange(step, self.backend.download(&joined)?)?;
        let sum = self.backend.binary_host(BinaryOp::Add, &joined, &theirs)?;
        if let [one] = mine {
            return Ok(vec![sum
                .reshaped(one.shape().to_vec())
                .expect("same length")]);
        }
        let mut out = Vec::with_capacity(mine.len());
        let mut off = 0;
        for t in mine {
            let part = self.backend.slice(&sum, off, t.len())?;
            out.push(part.reshaped(t.shape().to_vec()).expect("same length"));
            off += t.len();
        }
        Ok(out)
    }

    // ---- dealer material ----

    /// Fetch material for `specs` now (one dealer round trip for bob, none for alice) and queue
    /// it for the protocol steps that follow, in order. This is the offline phase.
    pub fn preprocess(&mut self, specs: &[MaterialSpec]) -> Result<()> {
        let fetched = self.fetch(specs)?;
        self.queue.extend(fetched);
        Ok(())
    }

    /// Take material from `feed`, a chunk at a time, whenever the queue runs dry (a service's
    /// classify request streams a batch's material so; see `service::prep`). A feed that
    /// has no more when material is needed is an error, never an on-demand fetch.
    pub(crate) fn set_material_feed(&mut self, feed: MaterialFeed) {
        self.feed = Some(feed);
    }

    /// Number of queued material items.
    pub fn queued_material(&self) -> usize {
        self.queue.len()
    }

    /// Drop queued material (e.g. after an aborted run).
    pub fn clear_material(&mut self) {
        self.queue.clear();
    }

    /// The next backend-resident material item: from the queue if preprocessed, else fetched
    /// on demand.
    pub(crate) fn material(&mut self, spec: MaterialSpec) -> Result<Vec<Tensor>> {
        let item = match self.queue.pop_front() {
            Some(front) if front.spec != spec => {
                return Err(EngineError::OutOfStep {
                    step: self.net.meter_ref().current_step(),
                    detail: format!(
                        "preprocessed material out of order: queued {:?}, protocol needs {spec:?}",
                        front.spec
                    ),
                })
            }
            Some(front) => front,
            None if self.feed.is_some() => {
                let chunk = self.feed.as_mut().map_or(Ok(None), |f| f())?;
                match chunk {
                    Some(items) if !items.is_empty() => {
                        self.queue.extend(items);
                        return self.material(spec);
                    }
                    _ => {
                        return Err(EngineError::OutOfStep {
                            step: self.net.meter_ref().current_step(),
                            detail: format!(
                                "the request's material ran out: the protocol needs {spec:?}"
                            ),
                        })
                    }
                }
            }
            None => self.fetch(&[spec])?.pop().expect("one item fetched"),
        };
        self.consumed = fold_identity(self.consumed, item.identity);
        Ok(item.parts)
    }

    /// The fingerprint of the material consumed so far (see [`Party::exchange`]).
    pub fn material_fingerprint(&self) -> u64 {
        self.consumed
    }

    fn fetch(&mut self, specs: &[MaterialSpec]) -> Result<Vec<Prepared>> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.reserve_streams(specs.len())?;
        let corrections = if self.index == 1 {
            Some(request_corrections(self.net.as_mut(), first, specs)?)
        } else {
            None
        };
        self.maker()
            .make(first, specs, corrections.as_deref(), &self.fixed_public)
    }

    /// Take the next `count` on-demand stream numbers (both parties advance in lock-step).
    pub(crate) fn reserve_streams(&mut self, count: usize) -> Result<u64> {
        if self.grant.is_none() {
            return Err(EngineError::Protocol(
                "this request runs on preprocessed material only and has no dealer seed".into(),
            ));
        }
        let first = self.next_stream;
        self.next_stream += count as u64;
        Ok(first)
    }

    /// Take the queued material out (a service keeps it for a later request).
    pub(crate) fn take_prepared(&mut self) -> Vec<Prepared> {
        self.queue.drain(..).collect()
    }

    /// Send bob's request for `specs` (which must have no derived parts, e.g. fixed masks) on
    /// stream numbers reserved now, and return the first; alice only reserves the numbers.
    pub(crate) fn announce(&mut self, specs: &[MaterialSpec]) -> Result<u64> {
        let first = self.reserve_streams(specs.len())?;
        if self.index == 1 {
            request_corrections(self.net.as_mut(), first, specs)?;
        }
        let tag = self.grant.map_or(0, |g| g.tag);
        for (i, spec) in specs.iter().enumerate() {
            let id = material_identity(tag, first + i as u64, spec);
            self.consumed = fold_identity(self.consumed, id);
        }
        Ok(first)
    }

    /// This party's material stream number `stream`.
    pub(crate) fn stream(&self, stream: u64) -> crate::dealer::MaterialRng {
        material_stream(self.grant.map_or([0; 32], |g| g.seed), stream)
    }

    /// Check that fixed operand `id` is registered and was registered with the weight share `w`
    /// (the same storage: any other share, even of equal shape, would give a silently wrong
    /// product, since the opened `W - b` belongs to the registered weight).
    pub(crate) fn check_fixed_binding(&self, id: u64, w: &Tensor) -> Result<()> {
        let (Some(f), Some(bound)) = (self.fixed_public.get(&id), self.fixed_weights.get(&id))
        else {
            return Err(EngineError::Invalid(format!(
                "fixed operand {id} is not registered"
            )));
        };
        let same = bound
            .upgrade()
            .is_some_and(|s| std::ptr::addr_eq(Arc::as_ptr(&s), Arc::as_ptr(w.storage())));
        if !same || f.shape() != w.shape() {
            return Err(EngineError::Invalid(format!(
                "fixed operand {id} was registered with another weight share than the {:?} share given",
                w.shape()
            )));
        }
        Ok(())
    }

    /// Remember the public masked value of a fixed operand and the weight it belongs to.
    pub(crate) fn register_fixed_public(&mut self, id: u64, f: Tensor, w: &Tensor) {
        self.fixed_public.insert(id, f);
        self.fixed_weights.insert(id, Arc::downgrade(w.storage()));
    }
}

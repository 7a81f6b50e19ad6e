//! A data owner's side of a deployment across hosts: a model owner uploads, lists, deletes and
//! fetches correct counts; a client classifies. The owner's computation (splitting into
//! shares, reconstructing what is revealed to it) is the same code as in-process
//! ([`crate::owner`], [`crate::nn::classify`]); only the transport differs.
//!
//! One [`RemoteOwner`] keeps one connection to alice and one to bob and runs its requests one
//! after another on them; run several owners for concurrent requests. After a failed request
//! the connections are dropped and the next request connects afresh.

use std::collections::HashMap;
use std::time::Instant;

use rand_core::SeedableRng;

use crate::dealer::MaterialRng;
use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::classify::{check_labels, receive_predictions, send_batch};
use crate::nn::plan::ModelPlan;
use crate::nn::range::{check_inputs, ModelBounds};
use crate::nn::source::ModelSource;
use crate::owner::DataOwner;
use crate::service::net::Net;
use crate::transport::{step_code, Link, PartyId, StreamOptions, StreamTransport, Transport};
use crate::wire::control::{
    decode, encode, fresh_id, ModelInfo, Reply, Request, REPLY_STEP, REQUEST_STEP,
};

/// What a request cost, as the data owner saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestStats {
    /// The request id.
    pub request: u64,
    /// Wall time in seconds, from sending the request to both replies.
    pub seconds: f64,
    /// Bytes the owner sent (to both parties).
    pub bytes_sent: u64,
    /// Bytes the owner received.
    pub bytes_received: u64,
    /// Rounds each party counted in the request (alice, bob).
    pub party_rounds: [u64; 2],
    /// Messages each party sent in the request (alice, bob).
    pub party_messages: [u64; 2],
    /// Bytes each party sent in the request (alice, bob).
    pub party_bytes: [u64; 2],
    /// Batches that ran on material made ahead of the request (classify requests).
    pub batches_ahead: u64,
}

/// A classification's outcome at the client.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteClassification {
    /// The predicted class of every input (revealed to this client only).
    pub predictions: Vec<i64>,
    /// Cost; with labels, `stats.request` is the id the model owner fetches the count with.
    pub stats: RequestStats,
}

/// A data owner connected to alice and bob (see the module documentation).
pub struct RemoteOwner {
    net: Net,
    /// Where the randomness that splits this owner's values into shares comes from: the OS,
    /// or (tests only) a fixed seed.
    rng: Option<MaterialRng>,
    links: Option<(Link, Link)>,
    /// When the links last carried a request (the parties close a link idle for
    /// `limits.idle_secs`; this owner reconnects well before).
    last_used: Instant,
    infos: HashMap<String, ModelInfo>,
}

impl RemoteOwner {
    /// A data owner of the deployment `net` describes (its role is `net`'s); connects on the
    /// first request.
    pub fn new(net: Net) -> Result<RemoteOwner> {
        if !net.me().party_id().is_data_owner() {
            return Err(EngineError::Invalid(format!(
                "{} is not a data owner",
                net.me()
            )));
        }
        Ok(RemoteOwner {
            net,
            rng: None,
            links: None,
            last_used: Instant::now(),
            infos: HashMap::new(),
        })
    }

    /// Split values into shares with randomness from `seed` instead of the OS (tests that
    /// compare runs bit for bit only).
    pub(crate) fn use_test_seed(&mut self, seed: u64) {
        self.rng = Some(MaterialRng::seed_from_u64(seed));
    }

    /// A fresh request id: from the OS (from the test seed in tests that compare runs bit
    /// for bit, so that every message has the same length in both runs).
    pub(crate) fn fresh_request_id(&mut self) -> u64 {
        match self.rng.as_mut() {
            Some(r) => loop {
                let id = rand_core::RngCore::next_u64(r);
                if id != 0 {
                    return id;
                }
            },
            None => fresh_id(),
        }
    }

    /// This owner's role.
    pub fn role(&self) -> &Role {
        self.net.me()
    }

    /// Connect to alice and bob now (otherwise the first request does). Links left idle for
    /// half of `limits.idle_secs` are replaced (the parties close them at the limit).
    pub fn connect(&mut self) -> Result<()> {
        if self.last_used.elapsed() >= self.net.deployment().limits.idle() / 2 {
            self.links = None;
        }
        if self.links.is_none() {
            let a = self.net.connect(&Role::Alice)?;
            let b = self.net.connect(&Role::Bob)?;
            self.links = Some((a, b));
        }
        Ok(())
    }

    /// Close the connections to alice and bob (the next request connects again).
    pub fn disconnect(&mut self) {
        self.links = None;
    }

    /// Send `request` to both parties; returns the owner endpoint of the request.
    pub(crate) fn begin(&mut self, request: &Request) -> Result<DataOwner> {
        self.connect()?;
        self.last_used = Instant::now();
        let (a, b) = self.links.take().expect("connected");
        let me = self.net.me().party_id();
        let mut t = StreamTransport::new(me, self.net.options());
        t.set_request(request.id());
        t.add_link(PartyId::Alice, a);
        t.add_link(PartyId::Bob, b);
        t.meter().set_step(REQUEST_STEP);
        let msg = encode(request);
        t.send(PartyId::Alice, msg.clone())?;
        t.send(PartyId::Bob, msg)?;
        let rng = match self.rng.as_mut() {
            Some(r) => MaterialRng::from_rng(r).expect("a ChaCha generator seeds another"),
            None => MaterialRng::from_entropy(),
        };
        Ok(DataOwner::new(Box::new(t), rng))
    }

    /// Receive both parties' replies; keeps the links for the next request when both are done.
    /// A failure names the service that failed first, as far as the replies tell (see
    /// [`blame`]).
    pub(crate) fn finish(
        &mut self,
        mut owner: DataOwner,
        stats: &mut RequestStats,
    ) -> Result<[Reply; 2]> {
        owner.net().meter().set_step(REPLY_STEP);
        let outcomes = [PartyId::Alice, PartyId::Bob].map(|party| {
            owner
                .receive_from(party)
                .and_then(|m| decode::<Reply>(&m, "reply"))
                .and_then(|r| match r.as_error(party) {
                    Some(e) => Err(e),
                    None => Ok(r),
                })
        });
        let traffic = owner.net().meter_ref().stats().total();
        stats.bytes_sent = traffic.bytes_sent;
        stats.bytes_received = traffic.bytes_received;
        let [a, b] = outcomes;
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                self.links = None;
                return Err(blame([a.err(), b.err()]).expect("a failure"));
            }
        };
        let mut t = owner
            .into_transport()
            .into_stream()
            .expect("a stream transport");
        if let (Some(a), Some(b)) = (t.take_link(PartyId::Alice), t.take_link(PartyId::Bob)) {
            self.links = Some((a, b));
        }
        for (i, r) in [&a, &b].into_iter().enumerate() {
            if let Reply::Done {
                rounds,
                messages,
                bytes,
                ahead,
                ..
            } = r
            {
                stats.party_rounds[i] = *rounds;
                stats.party_messages[i] = *messages;
                stats.party_bytes[i] = *bytes;
                stats.batches_ahead = *ahead;
            }
        }
        Ok([a, b])
    }

    /// A request failed in the middle with `e`: drop the links, but first, where `e` is a
    /// party's failure or a lost party, hear the other party's reply (it skips what the other
    /// party still sent of the request; at most one timeout), so the error names the service
    /// that failed first.
    fn failed_midway(&mut self, owner: DataOwner, e: EngineError) -> EngineError {
        self.links = None;
        let Some(first) = [PartyId::Alice, PartyId::Bob].into_iter().find(|&p| {
            e.peer() == Some(p) || matches!(&e, EngineError::Remote { party, .. } if *party == p)
        }) else {
            return e;
        };
        let other = if first == PartyId::Alice {
            PartyId::Bob
        } else {
            PartyId::Alice
        };
        let Some(mut t) = owner.into_transport().into_stream() else {
            return e;
        };
        let timeout = self.net.options().timeout;
        t.set_options(StreamOptions {
            max_wait: timeout,
            ..self.net.options()
        });
        let until = Instant::now() + timeout;
        let mut heard = None;
        while Instant::now() < until && t.has_link(other) {
            match t.recv_tagged(other) {
                Ok((tag, msg)) if tag == step_code(REPLY_STEP) => {
                    heard = decode::<Reply>(&msg, "reply")
                        .ok()
                        .and_then(|r| r.as_error(other));
                    break;
                }
                Ok(_) => {}
                Err(lost) => {
                    heard = Some(lost);
                    break;
                }
            }
        }
        let pair = if first == PartyId::Alice {
            [Some(e), heard]
        } else {
            [heard, Some(e)]
        };
        blame(pair).expect("a failure")
    }

    /// Run a request without a body: send it, take both replies.
    fn simple(&mut self, request: Request) -> Result<([Reply; 2], RequestStats)> {
        let start = Instant::now();
        let mut stats = RequestStats {
            request: request.id(),
            ..Default::default()
        };
        let owner = self.begin(&request)?;
        let replies = self.finish(owner, &mut stats)?;
        stats.seconds = start.elapsed().as_secs_f64();
        Ok((replies, stats))
    }

    /// The models the parties serve (both must list the same).
    pub fn models(&mut self) -> Result<Vec<ModelInfo>> {
        let request = self.fresh_request_id();
        let ([a, b], _) = self.simple(Request::List { request })?;
        let (Reply::Done { models: mut ma, .. }, Reply::Done { models: mb, .. }) = (a, b) else {
            return Err(EngineError::Protocol("unexpected reply to a list".into()));
        };
        // A model owner's out-of-range counts come as one share per party: add them up.
        let shares_b: Vec<Option<u64>> = mb.iter().map(|m| m.out_of_range).collect();
        let strip = |v: &[ModelInfo]| -> Vec<ModelInfo> {
            v.iter()
                .map(|m| ModelInfo {
                    out_of_range: None,
                    ..m.clone()
                })
                .collect()
        };
        let same = strip(&ma) == strip(&mb);
        if same {
            for (m, b) in ma.iter_mut().zip(shares_b) {
                m.out_of_range = match (m.out_of_range, b) {
                    (Some(x), Some(y)) => Some(x.wrapping_add(y)),
                    _ => None,
                };
            }
        }
        if !same {
            return Err(EngineError::Protocol(format!(
                "alice and bob serve different models: {:?} vs {:?}",
                ma.iter().map(|m| &m.name).collect::<Vec<_>>(),
                mb.iter().map(|m| &m.name).collect::<Vec<_>>()
            )));
        }
        self.infos = ma.iter().map(|m| (m.name.clone(), m.clone())).collect();
        Ok(ma)
    }

    /// What the parties serve under `name` (its input shape, classes, input bound and
    /// encoding): from this owner's last listing, or listed now.
    pub fn model_info(&mut self, name: &str) -> Result<ModelInfo> {
        if !self.infos.contains_key(name) {
            self.models()?;
        }
        self.infos
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownModel {
                name: name.to_string(),
            })
    }

    /// Upload `model` under `name` (model owners only): the range analysis runs here first and
    /// refuses a model that could overflow for inputs within `bounds`; then each layer's shares
    /// are streamed to the parties, which store them persistently.
    pub fn upload(
        &mut self,
        name: &str,
        model: &dyn ModelSource,
        fx: &FixedPoint,
        bounds: &ModelBounds,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(ModelPlan, RequestStats)> {
        if !matches!(self.net.me(), Role::ModelOwner(_)) {
            return Err(EngineError::Refused(format!(
                "only a model owner uploads models, not {}",
                self.net.me()
            )));
        }
        crate::wire::control::check_model_name(name)?;
        let plan = ModelPlan::of(model, fx, bounds)?;
        let request = Request::Upload {
            request: self.fresh_request_id(),
            name: name.to_string(),
            plan: plan.clone(),
        };
        let start = Instant::now();
        let mut stats = RequestStats {
            request: request.id(),
            ..Default::default()
        };
        let mut owner = self.begin(&request)?;
        let total = model.parameter_count();
        let mut done = 0;
        let sent = (|| -> Result<()> {
            for li in 0..plan.layers.len() {
                plan.send_layer(model, li, fx, &mut |shape, fill| {
                    owner.send_shares_with(shape, fill)
                })?;
                done += plan.layer_parameters(li);
                on_progress(done.min(total), total);
            }
            Ok(())
        })();
        if let Err(e) = sent {
            return Err(self.failed_midway(owner, e));
        }
        self.finish(owner, &mut stats)?;
        stats.seconds = start.elapsed().as_secs_f64();
        Ok((plan, stats))
    }

    /// Classify `data` (rows of the model's input width) with model `name`, in batches of
    /// `batch` rows; the predictions are revealed to this client only. With `labels`, the
    /// correct count is kept by the parties for the model owner under the returned request id.
    pub fn classify(
        &mut self,
        name: &str,
        data: &[f64],
        labels: Option<&[i64]>,
        batch: usize,
    ) -> Result<RemoteClassification> {
        self.classify_observed(name, data, labels, batch, &mut |_, _| {})
    }

    /// [`Self::classify`], calling `on_progress(rows_done, rows_total)` after each batch's
    /// predictions arrived (for progress bars).
    pub fn classify_observed(
        &mut self,
        name: &str,
        data: &[f64],
        labels: Option<&[i64]>,
        batch: usize,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<RemoteClassification> {
        let info = self.model_info(name)?;
        let width: usize = info.input_shape.iter().product();
        if width == 0 || data.is_empty() || !data.len().is_multiple_of(width) {
            return Err(EngineError::Invalid(format!(
                "{} input values are not rows of {width} features (model '{name}' takes {:?})",
                data.len(),
                info.input_shape
            )));
        }
        if batch == 0 {
            return Err(EngineError::Invalid("batch size must be at least 1".into()));
        }
        let n = data.len() / width;
        let limits = &self.net.deployment().limits;
        if n as u64 > limits.max_rows || (n.div_ceil(batch) as u64) > limits.max_batches {
            return Err(EngineError::Invalid(format!(
                "{n} rows in batches of {batch} exceed the deployment's limits \
                 (limits.max_rows = {}, limits.max_batches = {}): split the input or use larger \
                 batches",
                limits.max_rows, limits.max_batches
            )));
        }
        // The client checks its own rows (and labels) before anything is shared.
        check_inputs(data, width, info.input_bound)?;
        if let Some(l) = labels {
            check_labels(l, n, info.classes)?;
        }
        let fx = FixedPoint::new(info.frac_bits)?;
        let request = Request::Classify {
            request: self.fresh_request_id(),
            model: name.to_string(),
            rows: n as u64,
            batch: batch as u64,
            labels: labels.is_some(),
        };
        let start = Instant::now();
        let mut stats = RequestStats {
            request: request.id(),
            ..Default::default()
        };
        let mut owner = self.begin(&request)?;
        let mut predictions = Vec::with_capacity(n);
        let mut withheld = 0usize;
        let ran = (|| -> Result<()> {
            // Every batch is sent even after one was withheld: the parties must not learn
            // which batch failed from when this client stops.
            for lo in (0..n).step_by(batch) {
                let hi = (lo + batch).min(n);
                send_batch(
                    &mut owner,
                    &fx,
                    width,
                    &data[lo * width..hi * width],
                    labels.map(|l| &l[lo..hi]),
                )?;
                match receive_predictions(
                    &mut owner,
                    &fx,
                    hi - lo,
                    info.classes,
                    info.range_checked,
                )? {
                    Some(p) => predictions.extend(p),
                    None => withheld += 1,
                }
                on_progress(hi, n);
            }
            Ok(())
        })();
        if let Err(e) = ran {
            return Err(self.failed_midway(owner, e));
        }
        self.finish(owner, &mut stats)?;
        stats.seconds = start.elapsed().as_secs_f64();
        if withheld > 0 {
            return Err(EngineError::Refused(format!(
                "the parties withheld the predictions of {withheld} of {} batches of request {}: \
                 the model owner's check of the model failed on them (the model owner is told \
                 how many; nothing else is revealed to anyone)",
                n.div_ceil(batch),
                request.id()
            )));
        }
        Ok(RemoteClassification { predictions, stats })
    }

    /// Fetch the correct count of classify request `of` (the model's owner only): each party
    /// sends its share of the count to this owner alone.
    pub fn score(&mut self, of: u64) -> Result<u64> {
        let request = self.fresh_request_id();
        let ([a, b], _) = self.simple(Request::Score { request, of })?;
        match (a, b) {
            (Reply::Done { share: Some(x), .. }, Reply::Done { share: Some(y), .. }) => {
                let fx_count = x.wrapping_add(y);
                Ok(fx_count)
            }
            _ => Err(EngineError::Protocol(
                "a party sent no share of the count".into(),
            )),
        }
    }

    /// Delete model `name` (its owner only) on both parties and at the dealer.
    pub fn delete(&mut self, name: &str) -> Result<()> {
        let request = self.fresh_request_id();
        self.simple(Request::Delete {
            request,
            name: name.to_string(),
        })?;
        self.infos.remove(name);
        Ok(())
    }
}

/// The error a data owner reports for a failed request, from what it heard of each party
/// (alice's outcome, bob's): a party's own refusal (bad input, a limit, busy, ...) first; else
/// the service a lost-peer failure points to, followed from party to party — bob's account when
/// alice says she lost bob and bob says he lost the dealer, this owner's own view of a party it
/// could not hear from at all. `None` when both were fine.
pub(crate) fn blame(outcomes: [Option<EngineError>; 2]) -> Option<EngineError> {
    use crate::error::ErrorKind;
    let index = |p: PartyId| match p {
        PartyId::Alice => Some(0),
        PartyId::Bob => Some(1),
        _ => None,
    };
    let reported = |e: &EngineError| matches!(e, EngineError::Remote { .. });
    // A deliberate refusal by a party is the root of everything else.
    if let Some(e) = outcomes
        .iter()
        .flatten()
        .find(|e| reported(e) && e.kind() != ErrorKind::PeerLost)
    {
        return Some(clone_error(e));
    }
    let start = outcomes
        .iter()
        .position(|o| o.as_ref().is_some_and(reported))
        .or_else(|| outcomes.iter().position(Option::is_some))?;
    let mut at = start;
    for _ in 0..2 {
        let e = outcomes[at].as_ref().expect("a failure");
        if !reported(e) {
            // This owner lost the party itself: it is the one that failed.
            return Some(clone_error(e));
        }
        match e.peer().and_then(index) {
            Some(next) if next != at && outcomes[next].is_some() => at = next,
            _ => return Some(clone_error(e)),
        }
    }
    Some(clone_error(outcomes[start].as_ref().expect("a failure")))
}

/// A copy of a failure as this owner reports it (the error types hold no handles).
fn clone_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::Remote {
            party,
            kind,
            detail,
            about,
        } => EngineError::Remote {
            party: *party,
            kind: *kind,
            detail: detail.clone(),
            about: *about,
        },
        EngineError::Timeout { me, peer, after } => EngineError::Timeout {
            me: *me,
            peer: *peer,
            after: *after,
        },
        EngineError::Stalled { me, peer, after } => EngineError::Stalled {
            me: *me,
            peer: *peer,
            after: *after,
        },
        EngineError::Disconnected { me, peer } => EngineError::Disconnected {
            me: *me,
            peer: *peer,
        },
        other => EngineError::Remote {
            party: other.peer().unwrap_or(PartyId::Alice),
            kind: other.kind(),
            detail: other.to_string(),
            about: None,
        },
    }
}

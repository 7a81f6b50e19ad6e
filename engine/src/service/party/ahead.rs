//! Material made ahead of requests: after a classify request, alice and bob make the dealer
//! material of more batches of its shapes in the background (each batch a request of its own
//! with the dealer, made in the same bounded chunks as a request's own material); later
//! requests of those shapes run without a dealer round trip. A batch whose material exceeds
//! `limits.max_material_words` is not kept ahead (its requests stream it chunk by chunk).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::dealer::{chunk_bound, split_into_chunks, total_words, MaterialSpec};
use crate::error::{EngineError, Result};
use crate::nn::classify::withholding_batch_specs;
use crate::party::Prepared;
use crate::transport::{Link, PartyId, StreamTransport, Transport};
use crate::wire::control::{
    encode, fresh_id, DealerJoin, JoinAnswer, JoinKind, PeerJoin, PrepareJob, JOIN_STEP,
};
use crate::wire::dealer::SeedGrant;

use super::ServedModel;
use super::{PartyService, Slot};

/// One batch's dealer material, made by both parties together ahead of a request (each holds
/// its own half, under the same id).
pub(super) struct PreparedEntry {
    pub(super) items: Vec<Prepared>,
    pub(super) made: Instant,
}

/// Preprocessed material older than this is dropped unused.
pub(super) const PREPARED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bob holds at most this many entries (the oldest are dropped first).
pub(super) const MAX_HELD: usize = 1024;

impl PartyService {
    /// Alice: the oldest ready material for `job`, if any (expired entries are dropped).
    pub(super) fn pop_ready(&self, job: &PrepareJob) -> Option<(u64, PreparedEntry)> {
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
    pub(super) fn take_held(&self, id: u64) -> Option<PreparedEntry> {
        let (_, e) = self.held.lock().ok()?.remove(&id)?;
        (e.made.elapsed() < PREPARED_LIFETIME).then_some(e)
    }

    /// Alice: make material for `job` in the background until `limits.pool` entries are
    /// ready (one producer per shape; nothing when the pool size is 0).
    pub(super) fn refill(self: &Arc<Self>, job: PrepareJob) {
        let target = self.net.deployment().limits.pool;
        if target == 0 {
            return;
        }
        // A batch too large to keep whole is not kept ahead: its requests stream it in chunks.
        if let Err(e) = self
            .model(&job.model)
            .and_then(|m| self.ahead_specs(&m, &job))
        {
            tracing::debug!(model = %job.model, rows = job.rows, reason = %e, "no material kept ahead for this shape");
            return;
        }
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
    pub(super) fn prepare(self: &Arc<Self>, job: &PrepareJob) -> Result<(u64, PreparedEntry)> {
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
    pub(super) fn make_material(
        &self,
        net: &mut StreamTransport,
        m: &ServedModel,
        job: &PrepareJob,
        seed: SeedGrant,
    ) -> Result<Vec<Prepared>> {
        let specs = self.ahead_specs(m, job)?;
        let bound = chunk_bound(self.net.deployment().limits.max_material_words);
        self.with_party(net, m.fx, Some(seed), |p| {
            for w in &m.weights {
                p.install_weight_shares(w);
            }
            // In the same bounded chunks as a request's own material (each one dealer
            // request, below the dealer's limit).
            for chunk in split_into_chunks(specs, bound) {
                p.preprocess(&chunk)?;
            }
            Ok(p.take_prepared())
        })
    }

    /// The material list of one batch of `job`, if a whole batch may be kept ahead: at most
    /// `limits.max_material_words` words per party (what one batch kept ahead may hold; a
    /// larger batch is streamed in chunks inside its requests instead).
    pub(super) fn ahead_specs(
        &self,
        m: &ServedModel,
        job: &PrepareJob,
    ) -> Result<Vec<MaterialSpec>> {
        let limit = self.net.deployment().limits.max_material_words;
        let specs =
            withholding_batch_specs(&m.model, job.rows as usize, job.labels, m.fx.frac_bits());
        match total_words(&specs) {
            Some(w) if w <= limit => Ok(specs),
            words => Err(EngineError::Refused(format!(
                "a batch of {} rows needs {} words of material per party, more than \
                 limits.max_material_words = {limit} allows to keep ahead",
                job.rows,
                words.map_or_else(|| "overflowing".to_string(), |w| w.to_string())
            ))),
        }
    }

    /// Bob: make material with alice for `job` under id `request`, on the link her join came
    /// on, and keep his half.
    pub(super) fn serve_prepare(self: &Arc<Self>, request: u64, job: PrepareJob, link: Link) {
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
        // Bob checks the batch's size as alice did before asking (a deployment file both read).
        let model = model.and_then(|m| self.ahead_specs(&m, &job).map(|_| m));
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

    /// Alice: batches of material ready ahead, over all shapes (for tests).
    #[cfg(test)]
    pub(crate) fn ready_batches(&self) -> usize {
        self.ready
            .lock()
            .map(|r| r.values().map(std::collections::VecDeque::len).sum())
            .unwrap_or(0)
    }

    /// Words per party of one batch of `rows` rows of model `name`: all of its material and
    /// its largest single piece (for tests that set the dealer's limit between the two).
    #[cfg(test)]
    pub(crate) fn batch_material_words(&self, name: &str, rows: u64, labels: bool) -> (u64, u64) {
        let m = self.model(name).expect("a model of that name");
        let specs = withholding_batch_specs(&m.model, rows as usize, labels, m.fx.frac_bits());
        let total = total_words(&specs).expect("sizes fit");
        let largest = specs.iter().filter_map(|s| s.checked_words()).max();
        (total, largest.unwrap_or(0))
    }

    /// Bob: entries he holds (for tests).
    #[cfg(test)]
    pub(crate) fn held_batches(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
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
}

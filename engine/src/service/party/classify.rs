//! A client's classify request at a party: the batches, their material (made ahead where both
//! parties hold it, else fetched in the request), the batch step, and the correct count kept for
//! the model owner.
//!
//! A request's size comes from the client: rows and batches are checked against
//! `limits.max_rows` and `limits.max_batches`, and a batch's words against the frame limit
//! (checked arithmetic), before anything is allocated for them; batch sizes and their material
//! lists are produced batch by batch as the request runs, each batch's in chunks of bounded
//! size (see `service::prep`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dealer::{chunk_bound, split_into_chunks};
use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::nn::classify::{withholding_batch_specs, BatchStep};
use crate::party::MaterialMaker;
use crate::service::prep::Producer;
use crate::transport::{PartyId, StreamTransport, Transport};
use crate::wire::control::{DealerJoin, JoinKind, PrepareJob};

use super::{poisoned, PartyService, ServedModel};
use super::{Joined, PreparedEntry};

/// The batches of a classify request: `rows` rows in batches of `batch` (the last one shorter).
#[derive(Clone, Copy, Debug)]
pub(super) struct Batches {
    rows: u64,
    batch: u64,
}

impl Batches {
    /// How many batches.
    pub(super) fn count(&self) -> u64 {
        self.rows.div_ceil(self.batch)
    }

    /// Rows of batch `i`.
    pub(super) fn rows_of(&self, i: u64) -> u64 {
        (self.rows - i * self.batch).min(self.batch)
    }

    /// The distinct batch sizes (one or two).
    fn shapes(&self) -> Vec<u64> {
        let mut v = vec![self.batch];
        let last = self.rows_of(self.count() - 1);
        if last != self.batch {
            v.push(last);
        }
        v
    }
}

/// How long a client's range-checked batches are counted against its limit.
const RANGE_WINDOW: Duration = Duration::from_secs(3600);

impl PartyService {
    /// Check a classify request's size against the limits and the model before anything is
    /// allocated for it.
    fn check_classify(
        &self,
        role: &Role,
        name: &str,
        rows: u64,
        batch: u64,
    ) -> Result<(Arc<ServedModel>, Batches)> {
        let m = self.model(name)?;
        let limits = &self.net.deployment().limits;
        if rows == 0 || batch == 0 {
            return Err(EngineError::Invalid("no rows, or a batch of 0 rows".into()));
        }
        if rows > limits.max_rows {
            return Err(EngineError::Refused(format!(
                "{rows} rows in one request exceed limits.max_rows = {}",
                limits.max_rows
            )));
        }
        let batches = Batches {
            rows,
            batch: batch.min(rows),
        };
        if batches.count() > limits.max_batches {
            return Err(EngineError::Refused(format!(
                "{} batches of {} rows in one request exceed limits.max_batches = {}",
                batches.count(),
                batches.batch,
                limits.max_batches
            )));
        }
        let width = m.model.in_features() as u64;
        let max_words = self.net.options().max_frame_words;
        let words = batches
            .batch
            .checked_mul(width)
            .and_then(|w| w.checked_add(16));
        if words.is_none_or(|w| w > max_words) {
            return Err(EngineError::Invalid(format!(
                "a batch of {} rows of {width} values exceeds the frame limit of {max_words} \
                 words",
                batches.batch
            )));
        }
        if m.model.range_checked() {
            self.spend_range_budget(role, batches.count())?;
        }
        Ok((m, batches))
    }

    /// Count `batches` against the client's hourly budget of batches on range-checked models
    /// (each tells the client whether its batch stayed in range; see
    /// `limits.range_checked_batches_per_hour`).
    fn spend_range_budget(&self, role: &Role, batches: u64) -> Result<()> {
        let limit = self.net.deployment().limits.range_checked_batches_per_hour;
        let mut budget = self.range_budget.lock().map_err(|_| poisoned())?;
        budget.retain(|_, (since, _)| since.elapsed() < RANGE_WINDOW);
        let (_, used) = budget
            .entry(role.clone())
            .or_insert_with(|| (Instant::now(), 0));
        if used.saturating_add(batches) > limit {
            return Err(EngineError::Refused(format!(
                "{role} may run {limit} batches an hour on models whose bounds are checked at \
                 run time (limits.range_checked_batches_per_hour); {used} used, this request \
                 has {batches}"
            )));
        }
        *used += batches;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn classify(
        self: &Arc<Self>,
        role: &Role,
        request: u64,
        name: &str,
        (rows, batch): (u64, u64),
        labels: bool,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<u64> {
        let checked = self.check_classify(role, name, rows, batch);
        let (m, batches) = self.checked_or_cancel(request, checked)?;
        // Bounded by limits.max_batches, checked above.
        let count = batches.count() as usize;
        let job = |r: u64| PrepareJob {
            model: name.to_string(),
            uid: m.meta.uid,
            rows: r,
            labels,
        };
        // Per batch, the material made ahead that alice offers.
        let mut mine: Vec<Option<(u64, PreparedEntry)>> = if self.index == 0 {
            (0..count as u64)
                .map(|i| self.pop_ready(&job(batches.rows_of(i))))
                .collect()
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
        entries.resize_with(count, || None);
        let ahead = entries.iter().filter(|e| e.is_some()).count();
        tracing::debug!(me = %self.net.me(), request, ahead, batches = count, "batches with material made ahead");
        let grant = if entries.iter().any(Option::is_none) {
            let reused = match early {
                Some(r) => r,
                None => self.send_join(net, &dealer_join)?,
            };
            Some(self.seed_answer(net, &dealer_join, reused)?)
        } else {
            None
        };
        let frac = m.fx.frac_bits();
        // Batches without material made ahead get theirs from a producer, one bounded chunk
        // ahead of the online phase (see `service::prep`); the party object itself fetches
        // nothing.
        let mut producer = match grant {
            Some(g) => {
                let dealer = match self.index {
                    1 => net
                        .take_link_state(PartyId::Dealer)
                        .map(|(l, sent, received)| {
                            let mut t = StreamTransport::new(PartyId::Bob, net.options());
                            t.set_request(request);
                            t.resume_link(PartyId::Dealer, l, sent, received);
                            t
                        }),
                    _ => None,
                };
                let fixed_public = m
                    .weights
                    .iter()
                    .map(|w| (w.ids[1], w.public.clone()))
                    .collect();
                let needed: Vec<u64> = (0..count)
                    .filter(|&i| entries[i].is_none())
                    .map(|i| batches.rows_of(i as u64))
                    .collect();
                let model = m.clone();
                // Each batch's material in bounded chunks, cut identically at both parties.
                let bound = chunk_bound(self.net.deployment().limits.max_material_words);
                let specs = needed.into_iter().flat_map(move |r| {
                    let specs = withholding_batch_specs(&model.model, r as usize, labels, frac);
                    split_into_chunks(specs, bound)
                });
                let maker = MaterialMaker {
                    index: self.index,
                    seed: g.seed,
                    tag: g.tag,
                    backend: self.backend.clone(),
                };
                Some(Producer::start(
                    maker,
                    dealer,
                    fixed_public,
                    Box::new(specs),
                    self.net.deployment().limits.max_material_words,
                )?)
            }
            None => None,
        };
        let ran = self.with_party(net, m.fx, None, |p| {
            for w in &m.weights {
                p.install_weight_shares(w);
            }
            // A batch made ahead runs on its queued material; the others take their chunks
            // from the producer as the queue runs dry.
            if let Some(pr) = producer.as_mut() {
                p.set_material_feed(pr.feed());
            }
            let mut acc = None;
            let mut flags = 0u64;
            for (i, entry) in entries.iter_mut().enumerate() {
                if let Some(e) = entry.take() {
                    p.queue_prepared(e.items);
                }
                let step = BatchStep {
                    rows: batches.rows_of(i as u64) as usize,
                    labels,
                    reveal: true,
                    acc,
                };
                let (next, flag) = step.run_withholding(p, &m.model, &[])?;
                acc = next;
                if let Some(f) = flag {
                    flags = flags.wrapping_add(p.own_words(&f)?[0]);
                }
            }
            let share = match acc {
                Some(id) => Some(p.own_words(&p.kept(id)?)?[0]),
                None => None,
            };
            Ok((share, flags))
        });
        if let Some(mut d) = producer.and_then(Producer::finish) {
            net.meter().absorb(d.meter_ref().stats());
            if let Some((l, sent, received)) = d.take_link_state(PartyId::Dealer) {
                net.resume_link(PartyId::Dealer, l, sent, received);
            }
        }
        let (share, flags) = ran?;
        // This party's share of the batches that left their range, for the model owner.
        let _ = m
            .out_of_range
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.wrapping_add(flags))
            });
        if self.index == 0 {
            for r in batches.shapes() {
                self.refill(job(r));
            }
        }
        if let Some(share) = share {
            self.scores.keep(request, &m.meta.owner, share)?;
        }
        self.release_peer(net);
        self.end_dealer_later(net);
        Ok(ahead as u64)
    }
}

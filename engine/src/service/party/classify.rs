//! A client's classify request at a party: the batches, their material (made ahead where both
//! parties hold it, else fetched in the request), the batch step, and the correct count kept for
//! the model owner.

use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::nn::classify::{batch_specs, BatchStep};
use crate::party::MaterialMaker;
use crate::service::prep::Producer;
use crate::transport::{PartyId, StreamTransport, Transport};
use crate::wire::control::{DealerJoin, JoinKind, PrepareJob};

use super::PartyService;
use super::{Joined, PreparedEntry};

impl PartyService {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn classify(
        self: &Arc<Self>,
        request: u64,
        name: &str,
        rows: u64,
        batch: u64,
        labels: bool,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<u64> {
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
        let ahead = entries.iter().filter(|e| e.is_some()).count();
        tracing::debug!(
            me = %self.net.me(),
            request,
            ahead,
            batches = sizes.len(),
            "batches with material made ahead"
        );
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
        // Batches without material made ahead get theirs from a producer, one batch ahead of
        // the online phase (see `service::prep`); the party object itself fetches nothing.
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
                let batches = entries
                    .iter()
                    .zip(&sizes)
                    .filter(|(e, _)| e.is_none())
                    .map(|(_, &r)| batch_specs(&m.model, r, labels, frac))
                    .collect();
                let maker = MaterialMaker {
                    index: self.index,
                    seed: g.seed,
                    tag: g.tag,
                    backend: self.backend.clone(),
                };
                Some(Producer::start(maker, dealer, fixed_public, batches)?)
            }
            None => None,
        };
        let share = self.with_party(net, m.fx, None, |p| {
            for w in &m.weights {
                p.install_weight_shares(w);
            }
            let mut acc = None;
            for (entry, &rows_here) in entries.iter_mut().zip(&sizes) {
                let items = match (entry.take(), producer.as_mut()) {
                    (Some(e), _) => e.items,
                    (None, Some(pr)) => pr.next_batch()?,
                    (None, None) => unreachable!("a producer makes every batch not made ahead"),
                };
                p.queue_prepared(items);
                let step = BatchStep {
                    rows: rows_here,
                    labels,
                    reveal: true,
                    acc,
                };
                acc = step.run(p, &m.model, &[])?;
            }
            match acc {
                Some(id) => Ok(Some(p.own_words(&p.kept(id)?)?[0])),
                None => Ok(None),
            }
        });
        if let Some(mut d) = producer.and_then(Producer::finish) {
            net.meter().absorb(d.meter_ref().stats());
            if let Some((l, sent, received)) = d.take_link_state(PartyId::Dealer) {
                net.resume_link(PartyId::Dealer, l, sent, received);
            }
        }
        let share = share?;
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
        Ok(ahead as u64)
    }
}

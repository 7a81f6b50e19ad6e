//! A client's classify request at a party: the batches, their material (made ahead where both
//! parties hold it, else fetched in the request), the batch step, and the correct count kept for
//! the model owner.

use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::nn::classify::{batch_specs, BatchStep};
use crate::transport::StreamTransport;
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
}

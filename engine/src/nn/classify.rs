//! The tutorial's encrypted evaluation: shared model × shared data → encrypted argmax, eq with
//! the shared labels, sum; the correct-count is revealed only to the model owner and the
//! predictions only to the client.

use std::time::Instant;

use std::collections::HashMap;

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::fixed::FixedPoint;
use crate::nn::range::check_inputs;
use crate::nn::shared::SharedModel;
use crate::owner::DataOwner;
use crate::party::Party;
use crate::pool::MaterialPool;
use crate::protocols::compare::{eq_index_specs, tree_max_specs};
use crate::session::Session;
use crate::transport::{PartyId, StepStats};

/// The client's check of its labels before anything is shared: one label per input row, each a
/// class index in `0..classes`.
pub fn check_labels(labels: &[i64], rows: usize, classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(shape_err(
            "classify",
            format!("{} labels for {rows} inputs", labels.len()),
        ));
    }
    let classes = classes as i64;
    match labels
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v >= classes)
    {
        Some((i, bad)) => Err(crate::EngineError::Invalid(format!(
            "label {bad} at index {i} is not a class index in 0..{classes}"
        ))),
        None => Ok(()),
    }
}

/// The client's side of one batch: share the rows `data [m, width]` (fixed-point encoded) and
/// the labels, if any, with alice and bob.
pub(crate) fn send_batch(
    client: &mut DataOwner,
    fx: &FixedPoint,
    width: usize,
    data: &[f64],
    labels: Option<&[i64]>,
) -> Result<()> {
    let m = data.len() / width.max(1);
    let x = fx.encode(data)?;
    client.send_shares_with(&[m, width], &mut |out| {
        out.copy_from_slice(&x);
        Ok(())
    })?;
    if let Some(l) = labels {
        let y: Vec<u64> = l.iter().map(|&v| (v as u64) << fx.frac_bits()).collect();
        client.send_shares_with(&[m], &mut |out| {
            out.copy_from_slice(&y);
            Ok(())
        })?;
    }
    Ok(())
}

/// The client's side of a batch's predictions: reconstruct the class indices revealed to it,
/// `rows` of them, each in `0..classes` at the fixed-point scale exactly. Anything else can only
/// come from parties out of step, and is an error, never an answer.
pub(crate) fn receive_predictions(
    client: &mut DataOwner,
    fx: &FixedPoint,
    rows: usize,
    classes: usize,
) -> Result<Vec<i64>> {
    let (_, ring) = client.receive_reveal()?;
    if ring.len() != rows {
        return Err(crate::EngineError::OutOfStep {
            step: "reveal",
            detail: format!("{} predictions revealed for {rows} rows", ring.len()),
        });
    }
    let f = fx.frac_bits();
    ring.iter()
        .enumerate()
        .map(|(row, &v)| {
            let class = (v as i64) >> f;
            let exact = v & ((1u64 << f) - 1) == 0;
            if exact && (0..classes as i64).contains(&class) {
                Ok(class)
            } else {
                Err(crate::EngineError::OutOfStep {
                    step: "reveal",
                    detail: format!(
                        "the prediction revealed for row {row} is not a class index in \
                         0..{classes} (ring value {v:#x}): the parties are out of step, the \
                         answer was discarded"
                    ),
                })
            }
        })
        .collect()
}

/// A party's side of one batch of a classification, the same in-process and across hosts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchStep {
    /// Rows in the batch.
    pub(crate) rows: usize,
    /// Whether the client shares labels.
    pub(crate) labels: bool,
    /// Whether predictions are revealed to the client.
    pub(crate) reveal: bool,
    /// Store id of the correct count accumulated over earlier batches.
    pub(crate) acc: Option<u64>,
}

impl BatchStep {
    /// Receive the client's shares of the batch (and labels), take the batch's material (from
    /// `pool` when it has some ready, else fetched for `specs` now), run the model, the
    /// encrypted argmax, reveal the predictions to the client and add the batch's correct count
    /// (eq with the labels, sum) to the accumulated one. Returns the new count's store id and
    /// whether the material came from the pool.
    pub(crate) fn run(
        &self,
        p: &mut Party,
        model: &SharedModel,
        pool: Option<&MaterialPool>,
        specs: &[MaterialSpec],
    ) -> Result<(Option<u64>, bool)> {
        let m = self.rows;
        let x = p.receive_share(PartyId::Client, &[m, model.in_features()])?;
        let y = if self.labels {
            Some(p.receive_share(PartyId::Client, &[m])?)
        } else {
            None
        };
        let pooled = match pool {
            Some(pool) => p.preprocess_pooled(pool)?,
            None => {
                p.preprocess(specs)?;
                false
            }
        };
        let logits = model.forward(p, &x)?;
        let pred = p.argmax_last(&logits)?;
        if self.reveal {
            p.reveal_to(PartyId::Client, &pred)?;
        }
        let mut acc = self.acc;
        if let Some(y) = y {
            let correct = p.eq_index(&pred, &y, model.out_features())?;
            let count = p.sum_all(&correct)?;
            let total = match self.acc {
                Some(id) => {
                    let prev = p.kept(id)?;
                    p.forget(id);
                    p.add(&prev, &count)?
                }
                None => count,
            };
            acc = Some(p.keep(total));
        }
        Ok((acc, pooled))
    }
}

/// All material one batch of `m` rows needs, in consumption order.
pub(crate) fn batch_specs(
    model: &SharedModel,
    m: usize,
    labels: bool,
    frac_bits: u32,
) -> Vec<MaterialSpec> {
    let mut specs = model.material_specs(m, frac_bits);
    specs.extend(tree_max_specs(m, model.out_features(), true));
    if labels {
        specs.extend(eq_index_specs(m, model.out_features(), frac_bits));
    }
    specs
}

/// Options of an encrypted evaluation.
#[derive(Clone, Debug)]
pub struct ClassifyOptions {
    /// Rows per batch (preprocessing is streamed per batch).
    pub batch: usize,
    /// Reveal each prediction to the client.
    pub reveal_predictions: bool,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            batch: 64,
            reveal_predictions: false,
        }
    }
}

/// What an encrypted evaluation produced and cost.
#[derive(Clone, Debug)]
pub struct ClassifyReport {
    /// Inputs classified.
    pub inputs: usize,
    /// Correct predictions (revealed to the model owner only), when labels were given.
    pub correct: Option<u64>,
    /// Class indices (revealed to the client only), when asked.
    pub predictions: Option<Vec<i64>>,
    /// Wall time in seconds, preprocessing included.
    pub seconds: f64,
    /// Traffic of alice and bob during the evaluation (sent by each).
    pub traffic: [StepStats; 2],
    /// Batches run.
    pub batches: usize,
    /// Batches whose material came ready from the background pool (the rest was produced on
    /// demand, inside the request).
    pub pooled_batches: usize,
}

impl ClassifyReport {
    /// Accuracy in [0, 1], when labels were given.
    pub fn accuracy(&self) -> Option<f64> {
        self.correct.map(|c| c as f64 / self.inputs.max(1) as f64)
    }
}

/// Material pool entries per party kept ahead by default (see [`SecureClassifier::set_pool`]).
pub const DEFAULT_POOL_ENTRIES: usize = 2;

/// A shared model ready to classify shared data (the PySyft `test(model, data, target)` flow).
///
/// Full batches take their preprocessing from a background [`MaterialPool`] per batch shape
/// (opened on first use, closed when the classifier is dropped), so the preprocessing of batch
/// `i + 1` runs while batch `i` is online; a batch that finds no ready material (the first one,
/// or when the online phase outruns the pool) produces it on demand.
pub struct SecureClassifier<'s> {
    session: &'s mut Session,
    model: SharedModel,
    pool_entries: usize,
    pools: HashMap<(usize, bool), MaterialPool>,
}

impl<'s> SecureClassifier<'s> {
    /// Wrap a session and a model shared in it.
    pub fn new(session: &'s mut Session, model: SharedModel) -> Self {
        SecureClassifier {
            session,
            model,
            pool_entries: DEFAULT_POOL_ENTRIES,
            pools: HashMap::new(),
        }
    }

    /// Keep `entries` requests' worth of material ready per party and batch shape (0: no pool,
    /// all material on demand). Closes pools opened so far.
    pub fn set_pool(&mut self, entries: usize) -> Result<()> {
        self.close_pools()?;
        self.pool_entries = entries;
        Ok(())
    }

    /// The pools opened so far, by (batch rows, with labels).
    pub fn pools(&self) -> impl Iterator<Item = &MaterialPool> {
        self.pools.values()
    }

    fn close_pools(&mut self) -> Result<()> {
        for (_, p) in self.pools.drain() {
            self.session.close_pool(&p)?;
        }
        Ok(())
    }

    /// All material one request of `m` rows needs, in consumption order.
    fn request_specs(&self, m: usize, has_labels: bool) -> Vec<MaterialSpec> {
        let f = self.session.config().fixed.frac_bits();
        batch_specs(&self.model, m, has_labels, f)
    }

    fn pool_for(&mut self, m: usize, has_labels: bool) -> Result<Option<MaterialPool>> {
        if self.pool_entries == 0 {
            return Ok(None);
        }
        if let Some(p) = self.pools.get(&(m, has_labels)) {
            return Ok(Some(p.clone()));
        }
        let specs = self.request_specs(m, has_labels);
        let pool = self.session.open_pool(specs, self.pool_entries)?;
        self.pools.insert((m, has_labels), pool.clone());
        Ok(Some(pool))
    }

    /// The shared model.
    pub fn model(&self) -> &SharedModel {
        &self.model
    }

    /// Classify `data [n, in]` (row-major, the client's plaintext) with optional integer
    /// `labels [n]`. The client shares each batch; everything after runs on shares.
    pub fn classify(
        &mut self,
        data: &[f64],
        labels: Option<&[i64]>,
        opts: &ClassifyOptions,
    ) -> Result<ClassifyReport> {
        self.classify_observed(data, labels, opts, &mut |_, _| {})
    }

    /// [`Self::classify`], calling `on_progress(inputs_done, inputs_total)` after each batch
    /// (for progress bars in applications).
    pub fn classify_observed(
        &mut self,
        data: &[f64],
        labels: Option<&[i64]>,
        opts: &ClassifyOptions,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ClassifyReport> {
        let width = self.model.in_features();
        if width == 0 || !data.len().is_multiple_of(width) {
            return Err(shape_err(
                "classify",
                format!(
                    "{} input values are not rows of {width} features",
                    data.len()
                ),
            ));
        }
        let n = data.len() / width;
        if n == 0 {
            return Err(crate::EngineError::Invalid(
                "no input rows to classify".into(),
            ));
        }
        if opts.batch == 0 {
            return Err(crate::EngineError::Invalid(
                "batch size must be at least 1".into(),
            ));
        }
        // The client checks its own rows against the model's declared bound before sharing.
        check_inputs(data, width, self.model.bounds().input_bound)?;
        if let Some(l) = labels {
            check_labels(l, n, self.model.out_features())?;
        }
        let fx = self.session.config().fixed;
        let start = Instant::now();
        let batches = n.div_ceil(opts.batch);
        let mut predictions = opts.reveal_predictions.then(Vec::new);
        let mut traffic = [StepStats::default(); 2];
        let mut acc_id: Option<u64> = None;
        let mut pooled_batches = 0;
        // Full batches share one shape: with two or more, open their pool now, so it fills
        // during batch 0.
        let full_pool = if n / opts.batch >= 2 {
            self.pool_for(opts.batch, labels.is_some())?
        } else {
            None
        };
        for b in 0..batches {
            let lo = b * opts.batch;
            let hi = (lo + opts.batch).min(n);
            let m = hi - lo;
            // The client shares this batch's inputs (and labels); one session run then receives
            // them, preprocesses, classifies and scores.
            send_batch(
                self.session.owner_mut(PartyId::Client)?,
                &fx,
                width,
                &data[lo * width..hi * width],
                labels.map(|l| &l[lo..hi]),
            )?;
            let model = self.model.clone();
            let step = BatchStep {
                rows: m,
                labels: labels.is_some(),
                reveal: opts.reveal_predictions,
                acc: acc_id,
            };
            let pool = if m == opts.batch {
                full_pool.clone()
            } else {
                None
            };
            let specs = self.request_specs(m, step.labels);
            let [(new_acc, t0, pooled), (bob_acc, t1, _)] = self.session.run(move |p| {
                let before = p.traffic();
                let (acc, pooled) = step.run(p, &model, pool.as_ref(), &specs)?;
                Ok((acc, p.traffic().since(&before).total(), pooled))
            })?;
            pooled_batches += pooled as usize;
            traffic[0].add(&t0);
            traffic[1].add(&t1);
            acc_id = match (new_acc, bob_acc) {
                (Some(a), Some(b)) => Some(crate::session::agreed_id(a, b)?),
                (a, _) => a,
            };
            if let Some(preds) = predictions.as_mut() {
                preds.extend(receive_predictions(
                    self.session.owner_mut(PartyId::Client)?,
                    &fx,
                    m,
                    self.model.out_features(),
                )?);
            }
            on_progress(hi, n);
        }
        // Only the final count is revealed, to the model owner.
        let correct = match acc_id {
            Some(id) => {
                let [t0, t1] = self.session.run(move |p| {
                    let before = p.traffic();
                    let acc = p.kept(id)?;
                    p.forget(id);
                    p.reveal_to(PartyId::ModelOwner, &acc)?;
                    Ok(p.traffic().since(&before).total())
                })?;
                traffic[0].add(&t0);
                traffic[1].add(&t1);
                let (_, v) = self.session.receive_revealed(PartyId::ModelOwner)?;
                Some(v[0])
            }
            None => None,
        };
        Ok(ClassifyReport {
            inputs: n,
            correct,
            predictions,
            seconds: start.elapsed().as_secs_f64(),
            traffic,
            batches,
            pooled_batches,
        })
    }

    /// Encrypted logits `[n, classes]` revealed to the client (the client's own outputs), for
    /// comparing with plaintext evaluation.
    pub fn logits_for_client(&mut self, data: &[f64], batch: usize) -> Result<Vec<f64>> {
        let width = self.model.in_features();
        let n = data.len() / width.max(1);
        check_inputs(data, width, self.model.bounds().input_bound)?;
        let fx: FixedPoint = self.session.config().fixed;
        let mut out = Vec::with_capacity(n * self.model.out_features());
        for lo in (0..n).step_by(batch.max(1)) {
            let hi = (lo + batch.max(1)).min(n);
            let x = self.session.share(
                PartyId::Client,
                &[hi - lo, width],
                &data[lo * width..hi * width],
            )?;
            let model = self.model.clone();
            let xid = x.id();
            self.session.run(move |p| {
                let x = p.kept(xid)?;
                let logits = model.forward(p, &x)?;
                p.forget(xid);
                p.reveal_to(PartyId::Client, &logits)
            })?;
            let (_, ring) = self.session.receive_revealed(PartyId::Client)?;
            out.extend(fx.decode(&ring));
        }
        Ok(out)
    }
}

impl Drop for SecureClassifier<'_> {
    fn drop(&mut self) {
        // Stop the workers and free the material of this classifier's pools.
        let _ = self.close_pools();
    }
}

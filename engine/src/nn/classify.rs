//! The tutorial's encrypted evaluation at a party, batch by batch: shared model × shared data →
//! encrypted argmax, eq with the shared labels, sum; the predictions are revealed to the client
//! only, and the correct count stays shared until its model owner fetches it. The owner's side
//! (sharing a batch, reconstructing predictions) is here too, so both ends live together.

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::fixed::FixedPoint;
use crate::nn::shared::SharedModel;
use crate::owner::DataOwner;
use crate::party::Party;
use crate::protocols::compare::eq_index_specs;
use crate::protocols::range_check::{checked_sites, range_check_specs};
use crate::share::Share;
use crate::transport::PartyId;

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
///
/// For a model whose bounds are checked at run time (`range_checked`), each prediction comes as
/// `class + 1`, and a batch the parties withheld (a hidden value left its calibrated range) as
/// zeros: that is `Ok(None)`, all the client learns.
pub(crate) fn receive_predictions(
    client: &mut DataOwner,
    fx: &FixedPoint,
    rows: usize,
    classes: usize,
    range_checked: bool,
) -> Result<Option<Vec<i64>>> {
    let (_, ring) = client.receive_reveal()?;
    if ring.len() != rows {
        return Err(crate::EngineError::OutOfStep {
            step: "reveal",
            detail: format!("{} predictions revealed for {rows} rows", ring.len()),
        });
    }
    if range_checked && ring.iter().all(|&v| v == 0) {
        return Ok(None);
    }
    let f = fx.frac_bits();
    let offset = i64::from(range_checked);
    ring.iter()
        .enumerate()
        .map(|(row, &v)| {
            let class = ((v as i64) >> f) - offset;
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
        .collect::<Result<Vec<i64>>>()
        .map(Some)
}

/// A party's side of one batch of a classification: what a party service runs for each batch
/// of a classify request, and what a custom computation may run to classify inside it.
#[derive(Clone, Copy, Debug)]
pub struct BatchStep {
    /// Rows in the batch.
    pub rows: usize,
    /// Whether the client shares labels.
    pub labels: bool,
    /// Whether predictions are revealed to the client.
    pub reveal: bool,
    /// Store id of the correct count accumulated over earlier batches.
    pub acc: Option<u64>,
}

impl BatchStep {
    /// Receive the client's shares of the batch (and labels), take the batch's material (queued
    /// already, else fetched for `specs` now), run the model, the encrypted argmax, reveal the
    /// predictions to the client and add the batch's correct count (eq with the labels, sum) to
    /// the accumulated one. Returns the new count's store id.
    pub fn run(
        &self,
        p: &mut Party,
        model: &SharedModel,
        specs: &[MaterialSpec],
    ) -> Result<Option<u64>> {
        let m = self.rows;
        let x = p.receive_share(PartyId::Client, &[m, model.in_features()])?;
        let y = if self.labels {
            Some(p.receive_share(PartyId::Client, &[m])?)
        } else {
            None
        };
        p.preprocess(specs)?;
        let logits = model.forward(p, &x)?;
        p.set_range_site("the argmax".into());
        let pred = p.argmax_in(model.compare(), &logits)?;
        // Nothing of the batch is revealed before its range checks pass.
        p.finish_range_checks()?;
        if self.reveal {
            p.reveal_to(PartyId::Client, &pred)?;
        }
        self.count(p, model, &pred, y)
    }

    /// What a service runs for each batch: [`Self::run`], except that the range check's bit
    /// (a model with calibrated bounds) is never opened. The predictions are revealed to the
    /// client as `(1 - flag) · (class + 1)` — the class plus one, or zeros for a batch that left
    /// its range — so the parties learn nothing and the client only that the batch failed.
    /// Returns the correct count's store id and this party's share of the bit (`None` for a
    /// model without run-time checks). Its material is [`withholding_batch_specs`].
    pub fn run_withholding(
        &self,
        p: &mut Party,
        model: &SharedModel,
        specs: &[MaterialSpec],
    ) -> Result<(Option<u64>, Option<Share>)> {
        let m = self.rows;
        let x = p.receive_share(PartyId::Client, &[m, model.in_features()])?;
        let y = if self.labels {
            Some(p.receive_share(PartyId::Client, &[m])?)
        } else {
            None
        };
        p.preprocess(specs)?;
        let (logits, flag) = model.forward_flagged(p, &x)?;
        p.set_range_site("the argmax".into());
        let pred = p.argmax_in(model.compare(), &logits)?;
        // A model whose comparisons check their inputs (deep networks) opens one bit per check
        // site before anything of the batch is revealed.
        p.finish_range_checks()?;
        if let Some(flag) = &flag {
            let shifted = p.add_public(&pred, 1.0)?;
            let copies: Vec<&Share> = std::iter::repeat_n(flag, m).collect();
            let flags = p.concat(&copies)?.reshape(shifted.shape())?;
            let dropped = p.mul_raw(&flags, &shifted)?;
            let masked = p.sub(&shifted, &dropped)?;
            if self.reveal {
                p.reveal_to(PartyId::Client, &masked)?;
            }
        } else if self.reveal {
            p.reveal_to(PartyId::Client, &pred)?;
        }
        let acc = self.count(p, model, &pred, y)?;
        Ok((acc, flag))
    }

    /// Add the batch's correct count (eq with the labels, sum) to the accumulated one.
    fn count(
        &self,
        p: &mut Party,
        model: &SharedModel,
        pred: &Share,
        y: Option<Share>,
    ) -> Result<Option<u64>> {
        let Some(y) = y else {
            return Ok(self.acc);
        };
        let correct = p.eq_index(pred, &y, model.out_features())?;
        let count = p.sum_all(&correct)?;
        let total = match self.acc {
            Some(id) => {
                let prev = p.kept(id)?;
                p.forget(id);
                p.add(&prev, &count)?
            }
            None => count,
        };
        Ok(Some(p.keep(total)))
    }
}

/// All material one batch of `m` rows needs, in consumption order.
pub fn batch_specs(
    model: &SharedModel,
    m: usize,
    labels: bool,
    frac_bits: u32,
) -> Vec<MaterialSpec> {
    specs_of_batch(model, m, labels, frac_bits, false)
}

/// All material one batch of [`BatchStep::run_withholding`] needs, in consumption order:
/// [`batch_specs`] and, for a model with calibrated bounds, the product that withholds a
/// flagged batch's predictions (before the labels' equality).
pub fn withholding_batch_specs(
    model: &SharedModel,
    m: usize,
    labels: bool,
    frac_bits: u32,
) -> Vec<MaterialSpec> {
    specs_of_batch(model, m, labels, frac_bits, true)
}

fn specs_of_batch(
    model: &SharedModel,
    m: usize,
    labels: bool,
    frac_bits: u32,
    withhold: bool,
) -> Vec<MaterialSpec> {
    let mut specs = model.material_specs(m, frac_bits);
    specs.extend(
        model
            .compare()
            .argmax_specs(m, model.out_features(), frac_bits),
    );
    specs.extend(range_check_specs(checked_sites(&specs)));
    if withhold && model.range_checked() {
        specs.push(MaterialSpec::MulTriple { n: m });
    }
    if labels {
        specs.extend(eq_index_specs(m, model.out_features(), frac_bits));
    }
    specs
}

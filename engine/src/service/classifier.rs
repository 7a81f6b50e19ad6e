//! The tutorial's flow on an in-process deployment, in one object: the model owner uploads a
//! model once, the client classifies batches of its data with their labels, and the model owner
//! learns the correct count (and nothing else); the client learns its predictions.
//!
//! A thin owner-side wrapper over [`LocalDeployment`]'s services (the same requests a data
//! owner sends across hosts with [`RemoteOwner`]): nothing here computes on shares.

use std::time::Instant;

use crate::error::Result;
use crate::fixed::FixedPoint;
use crate::nn::plan::ModelPlan;
use crate::nn::range::ModelBounds;
use crate::nn::source::ModelSource;
use crate::service::client::RemoteOwner;
use crate::service::local::LocalDeployment;
use crate::transport::StepStats;

/// Options of an encrypted evaluation.
#[derive(Clone, Debug)]
pub struct ClassifyOptions {
    /// Rows per batch (the parties run one batch at a time; material of later batches is made
    /// while earlier ones run).
    pub batch: usize,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions { batch: 64 }
    }
}

/// What an encrypted evaluation produced and cost.
#[derive(Clone, Debug)]
pub struct ClassifyReport {
    /// Inputs classified.
    pub inputs: usize,
    /// Correct predictions (revealed to the model owner only), when labels were given.
    pub correct: Option<u64>,
    /// Class indices (revealed to the client only).
    pub predictions: Vec<i64>,
    /// Wall time in seconds, preprocessing included (the classify request; fetching the count
    /// is not counted).
    pub seconds: f64,
    /// Traffic of alice and bob in the classify request (sent by each).
    pub traffic: [StepStats; 2],
    /// Batches run.
    pub batches: usize,
    /// Batches whose material was made ahead of the request (the rest was made in it).
    pub pooled_batches: usize,
    /// The classify request's id (the model owner fetches its count with it).
    pub request: u64,
}

impl ClassifyReport {
    /// Accuracy in [0, 1], when labels were given.
    pub fn accuracy(&self) -> Option<f64> {
        self.correct.map(|c| c as f64 / self.inputs.max(1) as f64)
    }
}

/// A model uploaded to an in-process deployment, ready to classify (the PySyft
/// `test(model, data, target)` flow). See the module documentation.
pub struct SecureClassifier {
    owner: RemoteOwner,
    client: RemoteOwner,
    name: String,
    plan: ModelPlan,
    /// Dropped last: the owners' connections close first.
    deployment: LocalDeployment,
}

impl SecureClassifier {
    /// The model owner uploads `model` at `fixed` precision: the range analysis proves (or
    /// refuses, before anything is shared) that no value can overflow for inputs within
    /// `bounds`; the parties store its shares.
    pub fn upload(
        deployment: &LocalDeployment,
        model: &dyn ModelSource,
        fixed: &FixedPoint,
        bounds: &ModelBounds,
    ) -> Result<SecureClassifier> {
        Self::upload_observed(deployment, model, fixed, bounds, &mut |_, _| {})
    }

    /// [`Self::upload`], calling `on_progress(parameters_done, parameters_total)` after each
    /// layer.
    pub fn upload_observed(
        deployment: &LocalDeployment,
        model: &dyn ModelSource,
        fixed: &FixedPoint,
        bounds: &ModelBounds,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SecureClassifier> {
        let mut owner = deployment.model_owner()?;
        let name = format!("model-{:016x}", owner.fresh_request_id());
        let (plan, _) = owner.upload(&name, model, fixed, bounds, on_progress)?;
        Ok(SecureClassifier {
            owner,
            client: deployment.client()?,
            name,
            plan,
            deployment: deployment.clone(),
        })
    }

    /// The model's public plan (shapes, bounds, the range analysis' report).
    pub fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    /// The deployment the model lives on.
    pub fn deployment(&self) -> &LocalDeployment {
        &self.deployment
    }

    /// The name the model is served under.
    pub fn name(&self) -> &str {
        &self.name
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

    /// [`Self::classify`], calling `on_progress(inputs_done, inputs_total)` after each batch.
    pub fn classify_observed(
        &mut self,
        data: &[f64],
        labels: Option<&[i64]>,
        opts: &ClassifyOptions,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ClassifyReport> {
        let start = Instant::now();
        // This object is the model owner too: where the parties check the model's bounds at
        // run time, it reads the out-of-range count the owner is told, to say why a request
        // failed (the client alone learns only that it did).
        let checked = self.plan.limits.iter().any(Option::is_some);
        let before = if checked { self.out_of_range()? } else { 0 };
        let r =
            match self
                .client
                .classify_observed(&self.name, data, labels, opts.batch, on_progress)
            {
                Ok(r) => r,
                Err(e) if checked && e.kind() == crate::error::ErrorKind::Refused => {
                    let after = self.out_of_range()?;
                    if after == before {
                        return Err(e);
                    }
                    return Err(crate::error::EngineError::Range(format!(
                        "a hidden value left its calibrated range in {} batch(es) of this request \
                     (the model owner is told how many, the client only that the request \
                     failed, the parties nothing); nothing of those batches was revealed; \
                     recalibrate on more representative data or with a larger margin",
                        after.wrapping_sub(before)
                    )));
                }
                Err(e) => return Err(e),
            };
        let seconds = start.elapsed().as_secs_f64();
        let correct = match labels {
            Some(_) => Some(self.owner.score(r.stats.request)?),
            None => None,
        };
        let traffic = [0, 1].map(|i| StepStats {
            rounds: r.stats.party_rounds[i],
            messages: r.stats.party_messages[i],
            bytes_sent: r.stats.party_bytes[i],
            ..Default::default()
        });
        let inputs = r.predictions.len();
        Ok(ClassifyReport {
            inputs,
            correct,
            predictions: r.predictions,
            seconds,
            traffic,
            batches: inputs.div_ceil(opts.batch.max(1)),
            pooled_batches: r.stats.batches_ahead as usize,
            request: r.stats.request,
        })
    }

    /// Batches of this model that left their calibrated range so far (what its owner lists).
    fn out_of_range(&mut self) -> Result<u64> {
        Ok(self
            .owner
            .models()?
            .into_iter()
            .find(|m| m.name == self.name)
            .and_then(|m| m.out_of_range)
            .unwrap_or(0))
    }

    /// Delete the model at the parties and the dealer.
    pub fn delete(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        self.owner.delete(&name)
    }
}

impl std::fmt::Debug for SecureClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureClassifier")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

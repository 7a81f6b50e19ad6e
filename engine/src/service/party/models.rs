//! The models a party serves: uploads (shares received, stored, committed at the dealer), their
//! records on disk (`DATA_DIR/<name>.model`, atomic and checksummed) and deletes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::plan::ModelPlan;
use crate::nn::shared::SharedModel;
use crate::party::WeightShares;
use crate::protocols::matmul::block_rows;
use crate::service::store::{RecordReader, RecordWriter};
use crate::transport::{PartyId, StreamTransport, Transport};
use crate::wire::control::{check_model_name, DealerJoin, JoinKind, ModelInfo};
use crate::wire::dealer::STATUS_OK;

use super::NameUse;
use super::{dealer_refused, poisoned, PartyService};

pub(super) const RECORD_KIND: &[u8; 8] = b"party\0\0\0";

/// A model this party serves.
pub(super) struct ServedModel {
    pub(super) meta: ModelMeta,
    pub(super) model: SharedModel,
    pub(super) weights: Vec<WeightShares>,
    pub(super) fx: FixedPoint,
    /// This party's share of the number of batches that left their calibrated range since the
    /// party started (for the model owner only; this party cannot read it).
    pub(super) out_of_range: AtomicU64,
}

impl ServedModel {
    /// What a client sees of this model: what it needs to classify.
    pub(super) fn public_info(&self) -> ModelInfo {
        ModelInfo {
            owner: None,
            parameters: None,
            out_of_range: None,
            ..self.meta.info()
        }
    }

    /// What the model's owner sees: every detail, and this party's share of the out-of-range
    /// count.
    pub(super) fn owner_info(&self) -> ModelInfo {
        ModelInfo {
            out_of_range: Some(self.out_of_range.load(Ordering::SeqCst)),
            ..self.meta.info()
        }
    }
}

/// What a model's record holds besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ModelMeta {
    pub(super) name: String,
    pub(super) owner: String,
    pub(super) plan: ModelPlan,
    /// Store ids of each layer (`[weight, fixed operand, bias]` for layers with parameters).
    pub(super) ids: Vec<Vec<u64>>,
    /// The upload's request id: material made for this model is never used with another
    /// model uploaded later under the same name.
    pub(super) uid: u64,
}

impl ModelMeta {
    pub(super) fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            owner: Some(self.owner.clone()),
            input_shape: self.plan.input_shape().to_vec(),
            classes: self.plan.out_features(),
            frac_bits: self.plan.frac_bits,
            input_bound: self.plan.input_bound,
            parameters: Some(
                (0..self.plan.layers.len())
                    .map(|l| self.plan.layer_parameters(l))
                    .sum(),
            ),
            range_checked: self.plan.limits.iter().any(Option::is_some),
            out_of_range: None,
        }
    }
}

impl PartyService {
    pub(super) fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.model"))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn upload(
        self: &Arc<Self>,
        role: &Role,
        request: u64,
        name: &str,
        plan: &ModelPlan,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<()> {
        let u = NameUse {
            name,
            serving: None,
        };
        let checked = (|| {
            let Role::ModelOwner(owner) = role else {
                return Err(EngineError::Invalid(format!(
                    "only a model owner uploads models, not {role}"
                )));
            };
            check_model_name(name)?;
            plan.check()?;
            let claim = self.claim_first(u)?;
            Ok((owner, FixedPoint::new(plan.frac_bits)?, claim))
        })();
        let (owner, fx, _claim) = self.checked_or_cancel(request, checked)?;
        let (seed, _bobs_claim) =
            self.join_both(net, digest, u, JoinKind::Upload, plan.frac_bits)?;
        let owner_id = role.party_id();
        let (layers, ids) = self.with_party(net, fx, Some(seed), |p| {
            let mut layers = Vec::new();
            let mut ids = Vec::new();
            for li in 0..plan.layers.len() {
                let (l, i) = plan.build_layer(p, li, owner_id)?;
                layers.push(l);
                ids.push(i);
            }
            let weights = ids
                .iter()
                .filter(|i| i.len() == 3)
                .map(|i| p.weight_shares([i[0], i[1], i[2]]))
                .collect::<Result<Vec<_>>>()?;
            Ok(((layers, weights), ids))
        })?;
        let (layers, weights) = layers;
        let served = ServedModel {
            meta: ModelMeta {
                name: name.to_string(),
                owner: owner.clone(),
                plan: plan.clone(),
                ids,
                uid: request,
            },
            model: plan.model(layers, &fx),
            weights,
            fx,
            out_of_range: AtomicU64::new(0),
        };
        // The record is written under a name of this request's own and takes the model's name
        // only once the upload is committed everywhere.
        let pending = self.dir.join(format!("{name}.{request}.pending"));
        self.save(&served, &pending)?;
        // Both parties stored their shares: bob commits at the dealer, then tells alice.
        let committed = self
            .commit_upload(net, owner)
            .and_then(|()| crate::service::store::rename_record(&pending, &self.record_path(name)));
        if let Err(e) = committed {
            let _ = std::fs::remove_file(&pending);
            return Err(e);
        }
        self.models
            .write()
            .map_err(|_| poisoned())?
            .insert(name.to_string(), Arc::new(served));
        self.release(net);
        Ok(())
    }

    /// After both parties stored an upload: alice tells bob, bob commits at the dealer and
    /// tells alice the outcome.
    pub(super) fn commit_upload(&self, net: &mut StreamTransport, owner: &str) -> Result<()> {
        net.meter().set_step("commit");
        if self.index == 0 {
            net.send(PartyId::Bob, vec![STATUS_OK])?;
            return self.hear_bob(net, "the upload was not committed");
        }
        let alice = net.recv(PartyId::Alice)?;
        let r = if alice.first() == Some(&STATUS_OK) {
            self.end_dealer(net, true, owner)
        } else {
            Err(EngineError::PartyFailed {
                party: PartyId::Alice,
                detail: "alice did not store the upload".into(),
            })
        };
        // Once the dealer kept the model, bob keeps it too, even if alice is gone by now.
        let _ = self.tell_alice(net, &r);
        r
    }

    /// Write a model's record (see the module documentation).
    pub(super) fn save(&self, m: &ServedModel, path: &Path) -> Result<()> {
        let mut w = RecordWriter::create(path, RECORD_KIND)?;
        w.bytes(&[self.index as u8])?;
        w.bytes(&serde_json::to_vec(&m.meta).expect("metadata serialises"))?;
        let be = &self.backend;
        for ws in &m.weights {
            for t in [&ws.weight, &ws.public] {
                // Blocks of whole rows, about 1 MiB each.
                let n = t.shape().get(1).copied().unwrap_or(1).max(1);
                let rows = ((1 << 17) / n).max(1);
                w.words(t.len(), rows * n, &mut |at, out| {
                    Ok(be.read_rows(t, at / n, out)?)
                })?;
            }
            let bias = be.download(&ws.bias)?;
            w.words(bias.len(), bias.len(), &mut |at, out| {
                out.copy_from_slice(&bias[at..at + out.len()]);
                Ok(())
            })?;
        }
        w.commit()
    }

    /// Load a model's record, checked whole.
    pub(super) fn load(&self, path: &Path) -> Result<ServedModel> {
        let bad = |why: String| EngineError::Format(format!("{}: {why}", path.display()));
        let mut r = RecordReader::open(path, RECORD_KIND)?;
        if r.bytes()? != [self.index as u8] {
            return Err(bad(format!(
                "this record belongs to the other party, not {}",
                self.net.me()
            )));
        }
        let meta: ModelMeta = serde_json::from_slice(r.bytes()?)
            .map_err(|e| bad(format!("damaged metadata: {e}")))?;
        meta.plan.check()?;
        let fx = FixedPoint::new(meta.plan.frac_bits)?;
        if meta.ids.len() != meta.plan.layers.len() {
            return Err(bad("layer ids do not match the plan".into()));
        }
        let be = &self.backend;
        let mut layers = Vec::new();
        let mut weights = Vec::new();
        for (li, ids) in meta.ids.iter().enumerate() {
            let layer = meta.plan.assemble_layer(li, ids, &fx)?;
            layers.push(layer);
            if ids.len() != 3 {
                continue;
            }
            let (k, out_n) = meta.plan.layers[li]
                .weight_shape()
                .ok_or_else(|| bad(format!("layer {li} has no parameters but 3 store ids")))?;
            let operand = |r: &mut RecordReader| -> Result<kernels::Tensor> {
                let words = r.words()?;
                if words.len() != k * out_n {
                    return Err(bad(format!(
                        "layer {li}: {} weight words, expected {}",
                        words.len(),
                        k * out_n
                    )));
                }
                Ok(
                    be.right_operand_from_rows(k, out_n, block_rows(out_n), &mut |p0, out| {
                        out.copy_from_slice(&words[p0 * out_n..p0 * out_n + out.len()])
                    })?,
                )
            };
            let weight = operand(&mut r)?;
            let public = operand(&mut r)?;
            let bias = r.words()?;
            if bias.len() != out_n {
                return Err(bad(format!(
                    "layer {li}: {} bias words, expected {out_n}",
                    bias.len()
                )));
            }
            let bias = be.upload(&[out_n], bias)?;
            weights.push(WeightShares {
                ids: [ids[0], ids[1], ids[2]],
                weight,
                public,
                bias,
            });
        }
        r.finish()?;
        Ok(ServedModel {
            model: meta.plan.model(layers, &fx),
            meta,
            weights,
            fx,
            out_of_range: AtomicU64::new(0),
        })
    }

    /// Delete a model on both parties and at the dealer: the parties join (so both check the
    /// owner first), bob has the dealer forget the masks and tells alice; only then does each
    /// party remove its record.
    pub(super) fn delete(
        self: &Arc<Self>,
        role: &Role,
        name: &str,
        digest: &[u8],
        net: &mut StreamTransport,
    ) -> Result<()> {
        let checked = self.model(name).and_then(|m| {
            self.check_owner(role, &m)?;
            let u = NameUse {
                name,
                serving: Some(m.meta.uid),
            };
            Ok((m, u, self.claim_first(u)?))
        });
        let (m, u, _claim) = self.checked_or_cancel(net.request(), checked)?;
        let _bobs_claim = self
            .join_peer(net.request(), digest, &[], Some(u), net)?
            .claim;
        if self.index == 1 {
            let join = DealerJoin {
                request: net.request(),
                party: 1,
                model: name.to_string(),
                kind: JoinKind::Delete,
                frac_bits: m.meta.plan.frac_bits,
            };
            let r = self.dealer_round(net, &join).and_then(|reply| {
                if reply.first() == Some(&STATUS_OK) {
                    Ok(())
                } else {
                    Err(dealer_refused(&reply))
                }
            });
            let _ = self.tell_alice(net, &r);
            r?;
        } else {
            self.hear_bob(net, "the model was not deleted")?;
        }
        self.models.write().map_err(|_| poisoned())?.remove(name);
        if let Ok(mut r) = self.ready.lock() {
            r.retain(|job, _| job.model != name);
        }
        if let Ok(mut h) = self.held.lock() {
            h.retain(|_, (job, _)| job.model != name);
        }
        let path = self.record_path(name);
        std::fs::remove_file(&path)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?;
        tracing::info!(me = %self.net.me(), model = name, "model deleted");
        self.release(net);
        Ok(())
    }
}

//! The preprocessing engine: a request's dealer material, made batch by batch on a thread of
//! its own while earlier batches run online.
//!
//! A classify request of `b` batches needs the material of each batch in order. The party's
//! request thread runs batch `i` online while a [`Producer`] expands batch `i + 1`'s material
//! from the party's seed (bob: with the dealer's corrections, on the request's dealer link) and
//! precomputes the fixed-operand products; at most one batch waits ready, so memory holds two
//! batches' material at most, whatever the number of batches. Both parties' producers assign
//! the same streams in the same order (from 0, in batch order), so their halves match; every
//! item carries its identity ([`crate::dealer::material_identity`]) and the parties check them
//! at every opening.
//!
//! Material made *between* requests (after a request of a shape, for the next ones) is the
//! other half of the engine: see [`crate::service::party`]'s `ahead` module, which makes each
//! batch a request of its own with the dealer and keeps it, used once, until a request of the
//! same model, batch size and label use takes it.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use kernels::Tensor;

use crate::dealer::MaterialSpec;
use crate::error::{EngineError, Result};
use crate::party::{request_corrections, MaterialMaker, Prepared};
use crate::transport::{PartyId, StreamTransport};

/// A thread making a request's material, batch after batch (see the module documentation).
pub(crate) struct Producer {
    batches: Receiver<Result<Vec<Prepared>>>,
    worker: Option<JoinHandle<Option<StreamTransport>>>,
}

impl Producer {
    /// Start making `batches` (each a list of specs, in consumption order, produced as the
    /// thread gets to it) with `maker`;
    /// `dealer` is bob's endpoint for the dealer's corrections (`None` for alice);
    /// `fixed_public` the public masked values of the fixed operands the specs use.
    pub(crate) fn start(
        maker: MaterialMaker,
        dealer: Option<StreamTransport>,
        fixed_public: HashMap<u64, Tensor>,
        batches: Box<dyn Iterator<Item = Vec<MaterialSpec>> + Send>,
    ) -> Result<Producer> {
        let (tx, rx) = sync_channel(1);
        let worker = std::thread::Builder::new()
            .name("party-prep".into())
            .spawn(move || {
                let mut dealer = dealer;
                let mut next = 0u64;
                for specs in batches {
                    let made = (|| {
                        let corrections = match dealer.as_mut() {
                            Some(d) => Some(request_corrections(d, next, &specs)?),
                            None => None,
                        };
                        maker.make(next, &specs, corrections.as_deref(), &fixed_public)
                    })();
                    next += specs.len() as u64;
                    let failed = made.is_err();
                    if tx.send(made).is_err() || failed {
                        break;
                    }
                }
                dealer
            })
            .map_err(|e| EngineError::Invalid(format!("cannot start a material thread: {e}")))?;
        Ok(Producer {
            batches: rx,
            worker: Some(worker),
        })
    }

    /// The next batch's material (waits until it is made).
    pub(crate) fn next_batch(&mut self) -> Result<Vec<Prepared>> {
        match self.batches.recv() {
            Ok(made) => made,
            Err(_) => Err(EngineError::PartyFailed {
                party: PartyId::Dealer,
                detail: "the material of a batch was not made".into(),
            }),
        }
    }

    /// Wait for the thread to end (after the last batch was taken, or to stop it early: the
    /// queue is dropped first) and take back bob's dealer endpoint.
    pub(crate) fn finish(mut self) -> Option<StreamTransport> {
        drop(std::mem::replace(&mut self.batches, sync_channel(0).1));
        self.worker.take().and_then(|w| w.join().ok()).flatten()
    }
}

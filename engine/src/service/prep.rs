//! The preprocessing engine: a request's dealer material, made a bounded chunk at a time on a
//! thread of its own while earlier chunks are consumed online.
//!
//! A classify request of `b` batches needs the material of each batch in order. Each batch's
//! material list (in consumption order) is cut into chunks of consecutive specs of at most
//! [`crate::dealer::chunk_bound`] words ([`crate::dealer::split_into_chunks`]): one dealer
//! request each, far below the dealer's limit (`limits.max_material_words`), whatever the
//! network and the batch size. A [`Producer`] expands the chunks one after another from the
//! party's seed (bob: with the dealer's corrections, on the request's dealer link) and
//! precomputes the fixed-operand products; the party's request thread takes the next chunk when
//! its material queue runs dry ([`Producer::feed`], `Party::set_material_feed`). The hand-over
//! is a rendezvous: the thread makes chunk `k + 1` while chunk `k` is consumed and waits with it
//! until it is needed, so memory holds two chunks of material at most, whatever the number and
//! size of the batches. Both parties cut the same lists with the same bound (the deployment
//! file's) and their producers assign the same streams in the same order (from 0, in chunk
//! order), so their halves match; every item carries its identity
//! ([`crate::dealer::material_identity`]) and the parties check them at every opening. A chunk
//! the dealer refuses (a single piece of material above its limit) fails the request at once
//! with the dealer's reason; alice, who never asks the dealer, refuses such a chunk by the same
//! limit before expanding it.
//!
//! Material made *between* requests (after a request of a shape, for the next ones) is the
//! other half of the engine: see [`crate::service::party`]'s `ahead` module, which makes each
//! batch a request of its own with the dealer and keeps it, used once, until a request of the
//! same model, batch size and label use takes it.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use kernels::Tensor;

use crate::dealer::total_words;
use crate::dealer::MaterialSpec;
use crate::error::{EngineError, ErrorKind, Result};
use crate::party::{request_corrections, MaterialFeed, MaterialMaker, Prepared};
use crate::transport::{PartyId, StreamTransport};

/// Alice's check of a chunk against the dealer's limit before she expands it (bob's chunks are
/// checked by the dealer itself before he receives anything): the same refusal, by the
/// deployment's `limits.max_material_words`, so she never allocates what the dealer refuses.
fn over_the_limit(first: u64, specs: &[MaterialSpec], max_words: u64) -> Result<()> {
    match total_words(specs) {
        Some(w) if w <= max_words => Ok(()),
        w => Err(EngineError::Remote {
            party: PartyId::Dealer,
            kind: ErrorKind::Refused,
            detail: format!(
                "request needs more than {max_words} words of material per party (the dealer's \
                 limit, limits.max_material_words): {} piece(s) from stream {first} need {} \
                 (alice did not make them)",
                specs.len(),
                w.map_or_else(|| "an overflowing number of".into(), |w| w.to_string())
            ),
            about: None,
        }),
    }
}

/// A thread making a request's material, chunk after chunk (see the module documentation).
pub(crate) struct Producer {
    chunks: Option<Receiver<Result<Vec<Prepared>>>>,
    worker: Option<JoinHandle<Option<StreamTransport>>>,
}

impl Producer {
    /// Start making `chunks` (each a list of specs, in consumption order, produced as the
    /// thread gets to it) with `maker`;
    /// `dealer` is bob's endpoint for the dealer's corrections (`None` for alice);
    /// `fixed_public` the public masked values of the fixed operands the specs use;
    /// `max_words` the dealer's limit on one request (`limits.max_material_words`), which
    /// alice applies herself (see [`over_the_limit`]).
    pub(crate) fn start(
        maker: MaterialMaker,
        dealer: Option<StreamTransport>,
        fixed_public: HashMap<u64, Tensor>,
        chunks: Box<dyn Iterator<Item = Vec<MaterialSpec>> + Send>,
        max_words: u64,
    ) -> Result<Producer> {
        // A rendezvous: the thread holds the chunk it made until the party needs it.
        let (tx, rx) = sync_channel(0);
        let worker = std::thread::Builder::new()
            .name("party-prep".into())
            .spawn(move || {
                let mut dealer = dealer;
                let mut next = 0u64;
                for specs in chunks {
                    let made = (|| {
                        let corrections = match dealer.as_mut() {
                            Some(d) => Some(request_corrections(d, next, &specs)?),
                            None => {
                                over_the_limit(next, &specs, max_words)?;
                                None
                            }
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
            chunks: Some(rx),
            worker: Some(worker),
        })
    }

    /// The party's end of the chunks (taken once; later calls give a feed with no material):
    /// each call waits for the next chunk; `Ok(None)` once all were taken.
    pub(crate) fn feed(&mut self) -> MaterialFeed {
        let rx = self.chunks.take();
        Box::new(move || match rx.as_ref().map(Receiver::recv) {
            Some(Ok(made)) => made.map(Some),
            Some(Err(_)) | None => Ok(None),
        })
    }

    /// Wait for the thread to end (after the last chunk was taken, or to stop it early: the
    /// party's end, and with it the feed, must be dropped first) and take back bob's dealer
    /// endpoint.
    pub(crate) fn finish(mut self) -> Option<StreamTransport> {
        drop(self.chunks.take());
        self.worker.take().and_then(|w| w.join().ok()).flatten()
    }
}

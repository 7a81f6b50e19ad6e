//! The one entry point through which untrusted bytes reach the wire decoders, shared by the
//! cargo-fuzz target (`fuzz/`) and the corpus test (`tests/fuzz_corpus.rs`).
//!
//! Bytes are split into frames exactly as a stream transport reads them, and every frame is
//! handed to each message decoder that may see a peer's words: the dealer's request decoder,
//! material specs, seed messages, error texts and framed tensors, and, after a frame's message
//! envelope, every control message of the services (hellos, requests, replies, joins). None may
//! panic, hang or allocate more than the frame limit allows.

use crate::dealer::MaterialSpec;
use crate::transport::Envelope;
use crate::wire::control::{decode, DealerEnd, DealerJoin, JoinAnswer, PeerJoin, Reply, Request};
use crate::wire::dealer::{decode_material_request, words_to_text, SeedGrant};
use crate::wire::frame::decode_frames;
use crate::wire::tensor::unpack;

/// Frame limit used when fuzzing (2^16 words): small, so runs stay fast.
pub const FUZZ_MAX_FRAME_WORDS: u64 = 1 << 16;

/// What the decoders made of some bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Frames read before the end or the first framing error.
    pub frames: usize,
    /// Whether framing stopped with an error (oversized or truncated frame).
    pub frame_error: bool,
    /// Frames that decoded as a well-formed material request (framing of the request only).
    pub material_requests: usize,
    /// Frames that decoded as a tensor (`[rank, dims..., values...]`).
    pub tensors: usize,
    /// Frames that decoded as a dealer seed.
    pub seeds: usize,
    /// Frames whose words after the message envelope decoded as a service control message.
    pub control: usize,
}

/// Whether `words` decode as any control message of the services.
fn control_message(words: &[u64]) -> bool {
    decode::<Request>(words, "request").is_ok()
        | decode::<Reply>(words, "reply").is_ok()
        | decode::<PeerJoin>(words, "peer join").is_ok()
        | decode::<JoinAnswer>(words, "join answer").is_ok()
        | decode::<DealerJoin>(words, "dealer join").is_ok()
        | decode::<DealerEnd>(words, "dealer end").is_ok()
        | decode::<String>(words, "hello").is_ok()
}

/// Run every wire decoder over `data`. Never panics.
pub fn decode_untrusted(data: &[u8]) -> DecodeSummary {
    let (frames, err) = decode_frames(data, FUZZ_MAX_FRAME_WORDS);
    let mut s = DecodeSummary {
        frames: frames.len(),
        frame_error: err.is_some(),
        ..Default::default()
    };
    for f in &frames {
        if let [_op, body @ ..] = f.as_slice() {
            if let Ok((_, specs)) = decode_material_request(body) {
                s.material_requests += 1;
                for spec in specs {
                    // Only specs whose sizes fit are expanded into shapes (as the dealer does).
                    if spec
                        .checked_words()
                        .is_some_and(|w| w <= FUZZ_MAX_FRAME_WORDS)
                    {
                        let _ = spec.parts();
                    }
                }
            }
            let _ = words_to_text(body);
        }
        for chunk in f.chunks(MaterialSpec::ENCODED_WORDS) {
            let _ = MaterialSpec::decode(chunk).map(|spec| spec.checked_words());
        }
        if unpack(f).is_ok() {
            s.tensors += 1;
        }
        if SeedGrant::from_words(f).is_ok() {
            s.seeds += 1;
        }
        if Envelope::decode(f).is_some() && control_message(&f[Envelope::WORDS..]) {
            s.control += 1;
        }
    }
    s
}

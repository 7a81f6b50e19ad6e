//! The envelope every message on a stream link carries: which request it belongs to, its
//! sequence number on the link, and the protocol step that sent it.

/// What every message on a stream link carries ahead of its payload: the request it belongs
/// to, its sequence number on this link within that request, and the protocol step that sent
/// it. The receiver checks all three against what it expects, so two requests' messages can
/// never be confused and a message that arrives out of step is an error, never data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The request id (0 outside a service request).
    pub request: u64,
    /// Messages sent before this one on this link within the request.
    pub seq: u64,
    /// [`step_code`] of the sender's protocol step.
    pub step: u64,
}

impl Envelope {
    /// Words an envelope takes at the front of a frame.
    pub const WORDS: usize = 3;

    /// The envelope as frame words.
    pub fn words(&self) -> [u64; 3] {
        [self.request, self.seq, self.step]
    }

    /// Decode the first [`Envelope::WORDS`] words of a frame.
    pub fn decode(words: &[u64]) -> Option<Envelope> {
        match words {
            [request, seq, step, ..] => Some(Envelope {
                request: *request,
                seq: *seq,
                step: *step,
            }),
            _ => None,
        }
    }
}

/// A protocol step's name as a word (FNV-1a), for envelopes.
pub fn step_code(step: &str) -> u64 {
    step.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

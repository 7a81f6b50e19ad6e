//! The wire format of every stream transport (TCP, TLS): length-prefixed frames of
//! little-endian u64 words.
//!
//! A frame is the word count as a little-endian u64, then the words. The reader checks the
//! count against a limit *before* allocating anything, and then grows its buffer only as bytes
//! actually arrive, so a peer that claims a huge frame and sends little costs little memory.

use std::io::{self, ErrorKind, Read, Write};

/// Default largest frame accepted: 2^27 words (1 GiB). The largest message of the built-in
/// models (a VGG16-head weight share, 25088 x 4096 words = 822 MB) fits; raise it with the
/// transport's options for larger models.
pub const DEFAULT_MAX_FRAME_WORDS: u64 = 1 << 27;

/// Largest step (in words) by which the receive buffer grows ahead of the data (8 MiB).
const GROW_WORDS: usize = 1 << 20;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// Nothing arrived within the read timeout; the stream is still in step and usable.
    Idle,
    /// The stream ended cleanly between two frames.
    Closed,
    /// The header claims more words than the limit allows (nothing was allocated).
    TooLarge {
        /// Words the header claims.
        words: u64,
        /// The limit.
        max_words: u64,
    },
    /// The stream ended, stalled or failed inside a frame (header or body); it is out of step.
    Truncated {
        /// Bytes of the frame (header included) that did arrive.
        got: u64,
        /// Bytes the frame needed (8 for an incomplete header).
        expected: u64,
        /// What stopped the read.
        cause: ErrorKind,
    },
    /// Any other I/O failure between frames.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Idle => write!(f, "no frame within the timeout"),
            FrameError::Closed => write!(f, "stream closed"),
            FrameError::TooLarge { words, max_words } => write!(
                f,
                "frame of {words} words, over the limit of {max_words} words"
            ),
            FrameError::Truncated {
                got,
                expected,
                cause,
            } => write!(
                f,
                "frame cut short after {got} of {expected} bytes ({cause})"
            ),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn is_timeout(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Write one frame: the word count, then the words, little-endian.
pub fn write_frame(w: &mut impl Write, words: &[u64]) -> io::Result<()> {
    write_frame_parts(w, &[], words)
}

/// Fill `buf` completely; returns how many bytes arrived before an error.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Err((done, ErrorKind::UnexpectedEof.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// Read one frame of at most `max_words` words.
///
/// A timeout or clean end before the first header byte is [`FrameError::Idle`] or
/// [`FrameError::Closed`]; anything that stops the read later is [`FrameError::Truncated`].
pub fn read_frame(r: &mut impl Read, max_words: u64) -> Result<Vec<u64>, FrameError> {
    read_frame_parts(r, max_words, 0).map(|(_, body)| body)
}

/// Write one frame whose words are `head` followed by `body` (no copy of `body` is made).
pub fn write_frame_parts(w: &mut impl Write, head: &[u64], body: &[u64]) -> io::Result<()> {
    w.write_all(&((head.len() + body.len()) as u64).to_le_bytes())?;
    const CHUNK: usize = 1 << 16;
    let mut buf = Vec::with_capacity(CHUNK * 8);
    for chunk in std::iter::once(head).chain(body.chunks(CHUNK)) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()
}

/// Read one frame of at most `max_words` words, split into its first `head` words and the
/// rest (a frame shorter than `head` comes back whole in the first part, with an empty rest).
/// The rest is read straight into its own buffer, so splitting copies nothing.
pub fn read_frame_parts(
    r: &mut impl Read,
    max_words: u64,
    head: usize,
) -> Result<(Vec<u64>, Vec<u64>), FrameError> {
    let mut header = [0u8; 8];
    if let Err((got, e)) = fill(r, &mut header) {
        return Err(match (got, e.kind()) {
            (0, k) if is_timeout(k) => FrameError::Idle,
            (0, ErrorKind::UnexpectedEof) => FrameError::Closed,
            (0, _) => FrameError::Io(e),
            (got, cause) => FrameError::Truncated {
                got: got as u64,
                expected: 8,
                cause,
            },
        });
    }
    let words = u64::from_le_bytes(header);
    if words > max_words {
        return Err(FrameError::TooLarge { words, max_words });
    }
    let words = words as usize;
    let head_len = head.min(words);
    let mut first = vec![0u64; head_len];
    if let Err((got, e)) = fill(r, bytemuck::cast_slice_mut(&mut first)) {
        return Err(FrameError::Truncated {
            got: 8 + got as u64,
            expected: 8 + 8 * words as u64,
            cause: e.kind(),
        });
    }
    let body_words = words - head_len;
    let done_bytes = 8 + 8 * head_len as u64;
    let mut out: Vec<u64> = Vec::with_capacity(body_words.min(GROW_WORDS));
    while out.len() < body_words {
        let start = out.len();
        let end = body_words.min(start + GROW_WORDS.max(start));
        out.reserve_exact(end - start);
        out.resize(end, 0);
        if let Err((got, e)) = fill(r, bytemuck::cast_slice_mut(&mut out[start..end])) {
            return Err(FrameError::Truncated {
                got: done_bytes + 8 * start as u64 + got as u64,
                expected: 8 + 8 * words as u64,
                cause: e.kind(),
            });
        }
    }
    for w in first.iter_mut().chain(out.iter_mut()) {
        *w = u64::from_le(*w);
    }
    Ok((first, out))
}

/// Decode every complete frame in `bytes` (at most `max_words` each), stopping at the first
/// error, which is returned beside the frames decoded before it (`None` at a clean end).
///
/// The pure entry point the fuzz target and the corpus test drive.
pub fn decode_frames(bytes: &[u8], max_words: u64) -> (Vec<Vec<u64>>, Option<FrameError>) {
    let mut cursor = bytes;
    let mut frames = Vec::new();
    loop {
        match read_frame(&mut cursor, max_words) {
            Ok(f) => frames.push(f),
            Err(FrameError::Closed) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[Vec<u64>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            write_frame(&mut out, f).unwrap();
        }
        out
    }

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            vec![],
            vec![0, u64::MAX, 1],
            (0..3 * GROW_WORDS as u64 + 7).collect(),
        ];
        let (got, err) = decode_frames(&encode(&frames), DEFAULT_MAX_FRAME_WORDS);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_header_is_refused_before_allocating() {
        // Claims 2^61 words (16 EiB): refused from the header alone.
        let bytes = (1u64 << 61).to_le_bytes();
        let (got, err) = decode_frames(&bytes, DEFAULT_MAX_FRAME_WORDS);
        assert!(got.is_empty());
        let e = err.unwrap();
        assert!(
            matches!(e, FrameError::TooLarge { words, max_words } if words == 1 << 61 && max_words == DEFAULT_MAX_FRAME_WORDS),
            "{e:?}"
        );
        assert!(e.to_string().contains("over the limit"), "{e}");
    }

    #[test]
    fn the_limit_is_inclusive_and_configurable() {
        let bytes = encode(&[vec![5; 4]]);
        assert!(decode_frames(&bytes, 4).1.is_none());
        assert!(matches!(
            decode_frames(&bytes, 3).1,
            Some(FrameError::TooLarge {
                words: 4,
                max_words: 3
            })
        ));
    }

    #[test]
    fn truncated_frames_say_how_much_arrived() {
        let bytes = encode(&[vec![1, 2], vec![3, 4, 5]]);
        // Every cut inside the second frame: the first frame survives, the second is truncated.
        for cut in 24 + 1..bytes.len() {
            let (got, err) = decode_frames(&bytes[..cut], 100);
            assert_eq!(got, vec![vec![1, 2]]);
            match err {
                Some(FrameError::Truncated { got, expected, .. }) => {
                    assert_eq!(got, cut as u64 - 24);
                    assert_eq!(expected, if cut < 32 { 8 } else { 32 });
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        // A huge claimed (but allowed) size with few bytes: truncated, small allocation.
        let mut lying = (DEFAULT_MAX_FRAME_WORDS).to_le_bytes().to_vec();
        lying.extend([7u8; 20]);
        let (_, err) = decode_frames(&lying, DEFAULT_MAX_FRAME_WORDS);
        assert!(
            matches!(err, Some(FrameError::Truncated { got: 28, .. })),
            "{err:?}"
        );
    }
}

//! A transport over byte streams (plain TCP or TLS): one framed connection per peer.
//!
//! Sends never block on the peer: each link has a writer thread fed by a queue, so two parties
//! that send large openings to each other at the same time cannot deadlock on full socket
//! buffers. Receives wait at most the timeout; a closed peer is reported as such; a frame larger
//! than the limit or cut short is refused with a precise error and the link is dropped (its
//! stream is out of step).

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use super::frame::{read_frame, write_frame, FrameError, DEFAULT_MAX_FRAME_WORDS};
use super::{Meter, PartyId, Transport};
use crate::error::{EngineError, Result};

/// The receiving half of a byte stream.
pub(crate) trait ReadHalf: Read + Send {
    /// Set how long a read may wait (`None`: forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

/// The sending half of a byte stream.
pub(crate) trait WriteHalf: Write + Send + 'static {
    /// Flush and close the sending direction (best effort).
    fn close(&mut self);
}

/// Settings shared by the stream transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// How long a receive waits for a message (and a handshake for its peer).
    pub timeout: Duration,
    /// The largest frame accepted from a peer, in u64 words.
    pub max_frame_words: u64,
}

impl StreamOptions {
    /// The default frame limit with the given timeout.
    pub fn with_timeout(timeout: Duration) -> StreamOptions {
        StreamOptions {
            timeout,
            max_frame_words: DEFAULT_MAX_FRAME_WORDS,
        }
    }
}

/// One framed connection to a peer: a queue to its writer thread and a buffered reader.
///
/// Dropping a link closes the queue; its writer thread then flushes what was queued and exits
/// (or exits at once if the peer has closed), without anyone waiting for it.
pub struct Link {
    queue: Sender<Vec<u64>>,
    reader: BufReader<Box<dyn ReadHalf>>,
}

impl Link {
    /// A link over the two halves of one stream; spawns the writer thread.
    pub(crate) fn new(
        reader: Box<dyn ReadHalf>,
        mut writer: Box<dyn WriteHalf>,
    ) -> io::Result<Link> {
        let (tx, rx) = channel::<Vec<u64>>();
        std::thread::Builder::new()
            .name("link-writer".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    if write_frame(&mut writer, &msg).is_err() {
                        break;
                    }
                }
                writer.close();
            })?;
        Ok(Link {
            queue: tx,
            reader: BufReader::with_capacity(1 << 20, reader),
        })
    }
}

/// An endpoint connected to its peers by framed byte streams (see [`super::tcp_mesh`] and
/// [`super::tls`]).
pub struct StreamTransport {
    me: PartyId,
    links: HashMap<PartyId, Link>,
    options: StreamOptions,
    meter: Meter,
}

fn io_err(me: PartyId, peer: PartyId, e: io::Error) -> EngineError {
    EngineError::Protocol(format!("{me}: connection to {peer} failed: {e}"))
}

impl StreamTransport {
    /// An endpoint with no links yet.
    pub fn new(me: PartyId, options: StreamOptions) -> StreamTransport {
        StreamTransport {
            me,
            links: HashMap::new(),
            options,
            meter: Meter::default(),
        }
    }

    /// Talk to `peer` over `link` (replacing an earlier link to it).
    pub fn add_link(&mut self, peer: PartyId, link: Link) {
        self.links.insert(peer, link);
    }

    /// Whether this endpoint has a usable link to `peer`.
    pub fn has_link(&self, peer: PartyId) -> bool {
        self.links.contains_key(&peer)
    }

    fn link(&mut self, peer: PartyId) -> Result<&mut Link> {
        let me = self.me;
        self.links
            .get_mut(&peer)
            .ok_or_else(|| EngineError::Invalid(format!("{me} has no link to {peer}")))
    }
}

impl Transport for StreamTransport {
    fn me(&self) -> PartyId {
        self.me
    }

    fn send(&mut self, to: PartyId, payload: Vec<u64>) -> Result<()> {
        let (me, bytes) = (self.me, 8 * payload.len() as u64);
        self.link(to)?
            .queue
            .send(payload)
            .map_err(|_| EngineError::Disconnected { me, peer: to })?;
        self.meter.on_send(bytes);
        Ok(())
    }

    fn recv(&mut self, from: PartyId) -> Result<Vec<u64>> {
        let (me, options) = (self.me, self.options);
        let link = self.link(from)?;
        link.reader
            .get_ref()
            .set_read_timeout(Some(options.timeout))
            .map_err(|e| io_err(me, from, e))?;
        match read_frame(&mut link.reader, options.max_frame_words) {
            Ok(msg) => {
                self.meter.on_recv(8 * msg.len() as u64);
                Ok(msg)
            }
            Err(e) => {
                let err = match e {
                    FrameError::Idle => {
                        return Err(EngineError::Timeout {
                            me,
                            peer: from,
                            after: options.timeout,
                        })
                    }
                    FrameError::Closed => EngineError::Disconnected { me, peer: from },
                    FrameError::Io(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                        ) =>
                    {
                        EngineError::Disconnected { me, peer: from }
                    }
                    FrameError::Io(e) => io_err(me, from, e),
                    FrameError::TooLarge { .. } => {
                        tracing::warn!(%me, peer = %from, error = %e, "refused frame");
                        EngineError::Protocol(format!("{me}: {from} sent a {e}"))
                    }
                    FrameError::Truncated { cause, .. } if is_stall(cause) => {
                        EngineError::Protocol(format!(
                            "{me}: {from} stalled for {:?} in the middle of a message ({e})",
                            options.timeout
                        ))
                    }
                    FrameError::Truncated { .. } => {
                        EngineError::Protocol(format!("{me}: message from {from}: {e}"))
                    }
                };
                // The stream is no longer in step: drop the link for good, so later receives
                // fail at once instead of reading garbage.
                self.links.remove(&from);
                Err(err)
            }
        }
    }

    fn meter(&mut self) -> &mut Meter {
        &mut self.meter
    }

    fn meter_ref(&self) -> &Meter {
        &self.meter
    }
}

fn is_stall(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

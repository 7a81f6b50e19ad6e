//! A transport over byte streams (plain TCP or TLS): one framed connection per peer.
//!
//! Sends never block on the peer: each link has a writer thread fed by a queue, so two parties
//! that send large openings to each other at the same time cannot deadlock on full socket
//! buffers. Receives wait at most the timeout; a closed peer is reported as such; a frame larger
//! than the limit or cut short is refused with a precise error and the link is dropped (its
//! stream is out of step).

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use super::{Meter, PartyId, Transport};
use crate::error::{EngineError, Result};
use crate::wire::envelope::{step_code, Envelope};
use crate::wire::frame::{
    read_frame_parts, write_frame_parts, FrameError, DEFAULT_MAX_FRAME_WORDS,
};

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
    /// The longest a receive waits for a message while the peer's heartbeats keep arriving
    /// (a peer that is alive but stuck).
    pub max_wait: Duration,
}

impl StreamOptions {
    /// The default frame limit with the given timeout.
    pub fn with_timeout(timeout: Duration) -> StreamOptions {
        StreamOptions {
            timeout,
            max_frame_words: DEFAULT_MAX_FRAME_WORDS,
            // A peer whose heartbeats arrive but whose message does not is stuck: given up
            // after ten timeouts (at least 5 minutes).
            max_wait: (timeout * 10).max(Duration::from_secs(300)),
        }
    }

    /// The heartbeat interval that keeps a peer with this timeout from timing out while this
    /// side computes: a third of the timeout.
    pub fn heartbeat(&self) -> Duration {
        self.timeout / 3
    }
}

/// A link's connection has closed (its writer thread stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

/// One framed connection to a peer: a queue to its writer thread and a buffered reader.
///
/// The writer thread sends an empty frame (a heartbeat) whenever the link has been quiet for
/// the heartbeat interval, so the receiving side can tell a peer that is computing from one
/// that is gone: it times out only after a whole timeout without any frame.
///
/// Dropping a link closes the queue; its writer thread then flushes what was queued and exits
/// (or exits at once if the peer has closed), without anyone waiting for it.
pub struct Link {
    queue: Sender<(Envelope, Vec<u64>)>,
    incoming: Incoming,
}

/// Where a link's messages arrive from.
enum Incoming {
    /// A byte stream (TCP, TLS, a socket pair), framed ([`crate::wire::frame`]).
    Stream(BufReader<Box<dyn ReadHalf>>),
    /// The other end's queue, inside this process: messages arrive whole, no bytes, no writer
    /// thread (see [`Link::in_process`]).
    Queue(Receiver<(Envelope, Vec<u64>)>),
}

impl Link {
    /// A link over the two halves of one stream; spawns the writer thread, which sends a
    /// heartbeat after each `heartbeat` of silence (none when `None`).
    pub(crate) fn new(
        reader: Box<dyn ReadHalf>,
        mut writer: Box<dyn WriteHalf>,
        heartbeat: Option<Duration>,
    ) -> io::Result<Link> {
        let (tx, rx) = channel::<(Envelope, Vec<u64>)>();
        std::thread::Builder::new()
            .name("link-writer".into())
            .spawn(move || {
                loop {
                    let next = match heartbeat {
                        Some(every) => match rx.recv_timeout(every) {
                            Ok(m) => Some(m),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => break,
                        },
                        None => match rx.recv() {
                            Ok(m) => Some(m),
                            Err(_) => break,
                        },
                    };
                    let written = match next {
                        Some((env, msg)) => write_frame_parts(&mut writer, &env.words(), &msg),
                        None => write_frame_parts(&mut writer, &[], &[]),
                    };
                    if written.is_err() {
                        break;
                    }
                }
                writer.close();
            })?;
        Ok(Link {
            queue: tx,
            incoming: Incoming::Stream(BufReader::with_capacity(1 << 20, reader)),
        })
    }

    /// Two links joined inside this process: each one's messages go straight to the other's
    /// queue (no bytes, no writer thread, no heartbeats: a peer in this process that goes away
    /// drops its end, and a receive notices at once). Frame limits and envelopes are checked
    /// as on a stream.
    pub fn in_process() -> (Link, Link) {
        let (a_tx, a_rx) = channel();
        let (b_tx, b_rx) = channel();
        (
            Link {
                queue: a_tx,
                incoming: Incoming::Queue(b_rx),
            },
            Link {
                queue: b_tx,
                incoming: Incoming::Queue(a_rx),
            },
        )
    }

    /// Queue a message for the writer thread (never blocks on the peer); fails only when the
    /// writer has stopped because the connection closed.
    pub fn send(&self, envelope: Envelope, payload: Vec<u64>) -> std::result::Result<(), Closed> {
        self.queue.send((envelope, payload)).map_err(|_| Closed)
    }

    /// Receive the next message, skipping heartbeats: fails after `options.timeout` without
    /// any frame, or after `options.max_wait` without a message even while heartbeats arrive.
    /// Any error leaves the stream out of step: the caller must drop the link.
    pub fn recv(
        &mut self,
        me: PartyId,
        peer: PartyId,
        options: &StreamOptions,
    ) -> Result<(Envelope, Vec<u64>)> {
        let reader = match &mut self.incoming {
            Incoming::Queue(rx) => return receive_queued(rx, me, peer, options),
            Incoming::Stream(reader) => reader,
        };
        let started = Instant::now();
        reader
            .get_ref()
            .set_read_timeout(Some(options.timeout))
            .map_err(|e| io_err(me, peer, e))?;
        loop {
            match read_frame_parts(reader, options.max_frame_words, Envelope::WORDS) {
                Ok((head, body)) if head.is_empty() => {
                    debug_assert!(body.is_empty());
                    if started.elapsed() > options.max_wait {
                        return Err(EngineError::Stalled {
                            me,
                            peer,
                            after: options.max_wait,
                        });
                    }
                }
                Ok((head, body)) => {
                    return Envelope::decode(&head).map(|e| (e, body)).ok_or_else(|| {
                        tracing::warn!(%me, %peer, "refused frame without an envelope");
                        EngineError::Protocol(format!(
                            "{me}: {peer} sent a malformed frame ({} words, no envelope)",
                            head.len()
                        ))
                    })
                }
                Err(e) => return Err(frame_error(me, peer, options, e)),
            }
        }
    }
}

/// A message from an in-process peer's queue, within the timeout and the frame limit.
fn receive_queued(
    rx: &Receiver<(Envelope, Vec<u64>)>,
    me: PartyId,
    peer: PartyId,
    options: &StreamOptions,
) -> Result<(Envelope, Vec<u64>)> {
    // A peer in this process is alive while its end of the link exists (what heartbeats tell
    // on a stream): the wait goes on in slices of the timeout, up to `max_wait`.
    let started = Instant::now();
    loop {
        match rx.recv_timeout(options.timeout) {
            Ok((env, msg)) => {
                let words = (msg.len() + Envelope::WORDS) as u64;
                if words > options.max_frame_words {
                    let e = FrameError::TooLarge {
                        words,
                        max_words: options.max_frame_words,
                    };
                    return Err(frame_error(me, peer, options, e));
                }
                return Ok((env, msg));
            }
            Err(RecvTimeoutError::Timeout) if started.elapsed() < options.max_wait => {}
            Err(RecvTimeoutError::Timeout) => {
                return Err(EngineError::Stalled {
                    me,
                    peer,
                    after: options.max_wait,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(EngineError::Disconnected { me, peer })
            }
        }
    }
}

/// The error a failed frame read becomes.
fn frame_error(me: PartyId, peer: PartyId, options: &StreamOptions, e: FrameError) -> EngineError {
    match e {
        FrameError::Idle => EngineError::Timeout {
            me,
            peer,
            after: options.timeout,
        },
        FrameError::Closed => EngineError::Disconnected { me, peer },
        FrameError::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
            ) =>
        {
            EngineError::Disconnected { me, peer }
        }
        FrameError::Io(e) => io_err(me, peer, e),
        FrameError::TooLarge { .. } => {
            tracing::warn!(%me, %peer, error = %e, "refused frame");
            EngineError::Protocol(format!("{me}: {peer} sent a {e}"))
        }
        FrameError::Truncated { cause, .. } if is_stall(cause) => EngineError::Protocol(format!(
            "{me}: {peer} stalled for {:?} in the middle of a message ({e})",
            options.timeout
        )),
        FrameError::Truncated {
            cause: ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe,
            ..
        } => {
            tracing::warn!(%me, %peer, error = %e, "peer left in the middle of a message");
            EngineError::Protocol(format!(
                "{me}: lost {peer} in the middle of a message ({e})"
            ))
        }
        FrameError::Truncated { .. } => {
            EngineError::Protocol(format!("{me}: message from {peer}: {e}"))
        }
    }
}

/// An endpoint connected to its peers by framed byte streams (see [`super::tcp_mesh`] and
/// [`super::tls`]).
///
/// Every message carries an [`Envelope`]: the endpoint's current request id, a per-link
/// sequence number and the sender's step; receipt checks all three.
pub struct StreamTransport {
    me: PartyId,
    links: HashMap<PartyId, Link>,
    options: StreamOptions,
    meter: Meter,
    request: u64,
    sent: HashMap<PartyId, u64>,
    received: HashMap<PartyId, u64>,
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
            request: 0,
            sent: HashMap::new(),
            received: HashMap::new(),
        }
    }

    /// Talk to `peer` over `link` (replacing an earlier link to it).
    pub fn add_link(&mut self, peer: PartyId, link: Link) {
        self.sent.remove(&peer);
        self.received.remove(&peer);
        self.links.insert(peer, link);
    }

    /// Talk to `peer` over `link` on which `sent` and `received` messages of the current
    /// request were already exchanged (a service that read a request's first message itself).
    pub fn resume_link(&mut self, peer: PartyId, link: Link, sent: u64, received: u64) {
        self.sent.insert(peer, sent);
        self.received.insert(peer, received);
        self.links.insert(peer, link);
    }

    /// The wait and frame limits.
    pub fn options(&self) -> StreamOptions {
        self.options
    }

    /// Wait and frame limits from now on.
    pub fn set_options(&mut self, options: StreamOptions) {
        self.options = options;
    }

    /// Whether this endpoint has a usable link to `peer`.
    pub fn has_link(&self, peer: PartyId) -> bool {
        self.links.contains_key(&peer)
    }

    /// Take the link to `peer` out with the numbers of messages sent and received on it in the
    /// current request (to go on with it in another endpoint, see [`Self::resume_link`]).
    pub fn take_link_state(&mut self, peer: PartyId) -> Option<(Link, u64, u64)> {
        let sent = self.sent.remove(&peer).unwrap_or(0);
        let received = self.received.remove(&peer).unwrap_or(0);
        self.links.remove(&peer).map(|l| (l, sent, received))
    }

    /// Tag every following message with request `id`, and expect it on every message received;
    /// sequence numbers restart at 0 on every link.
    pub fn set_request(&mut self, id: u64) {
        self.request = id;
        self.sent.clear();
        self.received.clear();
    }

    /// The request id messages are tagged with.
    pub fn request(&self) -> u64 {
        self.request
    }

    fn link(&mut self, peer: PartyId) -> Result<&mut Link> {
        let me = self.me;
        self.links
            .get_mut(&peer)
            .ok_or_else(|| EngineError::Invalid(format!("{me} has no link to {peer}")))
    }
}

impl StreamTransport {
    /// Receive the next message from `from`, checking its request and sequence number, and its
    /// step against `step` when given; returns the sender's step code.
    fn receive(&mut self, from: PartyId, step: Option<&'static str>) -> Result<(u64, Vec<u64>)> {
        let (me, mut options) = (self.me, self.options);
        if from.is_data_owner() {
            // Inside a request a data owner has nothing to compute before its next message:
            // one that keeps its link alive but sends nothing is given up after the timeout.
            options.max_wait = options.max_wait.min(options.timeout);
        }
        let expected = Envelope {
            request: self.request,
            seq: *self.received.get(&from).unwrap_or(&0),
            step: step.map_or(0, step_code),
        };
        let got = self.link(from)?.recv(me, from, &options);
        let checked = got.and_then(|(env, msg)| {
            let step_ok = step.is_none() || env.step == expected.step;
            if env.request == expected.request && env.seq == expected.seq && step_ok {
                return Ok((env.step, msg));
            }
            tracing::warn!(%me, peer = %from, ?env, ?expected, "refused message out of step");
            let what = if env.request != expected.request {
                format!(
                    "request {} (expected request {})",
                    env.request, expected.request
                )
            } else if env.seq != expected.seq {
                format!("message {} (expected message {})", env.seq, expected.seq)
            } else {
                format!("another step than '{}'", step.unwrap_or("?"))
            };
            Err(EngineError::Protocol(format!(
                "{me}: {from} sent a message for {what}: out of step"
            )))
        });
        match checked {
            Ok((tag, msg)) => {
                self.received.insert(from, expected.seq + 1);
                self.meter.on_recv(8 * msg.len() as u64);
                Ok((tag, msg))
            }
            Err(e) => {
                // A timeout with nothing read leaves the stream in step; anything else does
                // not: drop the link for good, so later receives fail at once instead of
                // reading garbage.
                if !matches!(e, EngineError::Timeout { .. }) {
                    self.links.remove(&from);
                }
                Err(e)
            }
        }
    }
}

impl Transport for StreamTransport {
    fn set_request_id(&mut self, id: u64) {
        self.set_request(id);
    }

    fn me(&self) -> PartyId {
        self.me
    }

    fn send(&mut self, to: PartyId, payload: Vec<u64>) -> Result<()> {
        let (me, bytes) = (self.me, 8 * payload.len() as u64);
        let seq = *self.sent.get(&to).unwrap_or(&0);
        let envelope = Envelope {
            request: self.request,
            seq,
            step: step_code(self.meter.current_step()),
        };
        self.link(to)?
            .send(envelope, payload)
            .map_err(|_| EngineError::Disconnected { me, peer: to })?;
        self.sent.insert(to, seq + 1);
        self.meter.on_send(bytes);
        Ok(())
    }

    fn recv(&mut self, from: PartyId) -> Result<Vec<u64>> {
        let step = self.meter.current_step();
        self.receive(from, Some(step)).map(|(_, m)| m)
    }

    fn recv_tagged(&mut self, from: PartyId) -> Result<(u64, Vec<u64>)> {
        self.receive(from, None)
    }

    fn into_stream(self: Box<Self>) -> Option<StreamTransport> {
        Some(*self)
    }

    fn take_link(&mut self, peer: PartyId) -> Option<Link> {
        self.sent.remove(&peer);
        self.received.remove(&peer);
        self.links.remove(&peer)
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

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
pub(crate) trait ReadHalf: Send {
    /// Read at most `buf.len()` bytes, each wait on the socket at most what `pace` allows
    /// ([`Pace::wait`]), noting every byte that arrives ([`Pace::note`]); `Ok(0)` at the end.
    fn read_paced(&mut self, buf: &mut [u8], pace: &mut Pace) -> io::Result<usize>;
}

/// How long a frame may take: a frame's first byte may wait the timeout (the link is idle until
/// then); once it started, the frame must keep arriving at `min_rate` bytes per second after a
/// grace of one timeout — by time `t` after its first byte, `min_rate · (t - timeout)` bytes
/// (issue 18: a per-read timeout alone let a peer sending a byte now and then hold a request
/// 4.5 times the timeout).
#[derive(Debug)]
pub(crate) struct Pace {
    timeout: Duration,
    min_rate: u64,
    started: Option<Instant>,
    got: u64,
    /// The socket timeout set last (set again only when it changes).
    applied: Option<Duration>,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            timeout: Duration::from_secs(30),
            min_rate: 0,
            started: None,
            got: 0,
            applied: None,
        }
    }

    /// Start timing the next frame.
    fn arm(&mut self, options: &StreamOptions) {
        self.timeout = options.timeout;
        self.min_rate = options.min_rate;
        self.started = None;
        self.got = 0;
    }

    /// How long the next wait on the socket may be; an error once the frame is late.
    pub(crate) fn wait(&self) -> io::Result<Duration> {
        let Some(t0) = self.started else {
            return Ok(self.timeout);
        };
        if self.min_rate == 0 {
            return Ok(self.timeout);
        }
        let due =
            t0 + self.timeout + Duration::from_secs_f64(self.got as f64 / self.min_rate as f64);
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "a frame slower than the minimum transfer rate of {} bytes/s after {:?}",
                    self.min_rate, self.timeout
                ),
            ));
        }
        Ok(left.min(self.timeout))
    }

    /// Whether the socket timeout must be set to `wait` (it differs from the last one set).
    pub(crate) fn apply(&mut self, wait: Duration) -> bool {
        if self.applied == Some(wait) {
            return false;
        }
        self.applied = Some(wait);
        true
    }

    /// `n` bytes arrived.
    pub(crate) fn note(&mut self, n: usize) {
        if n > 0 {
            self.started.get_or_insert_with(Instant::now);
            self.got += n as u64;
        }
    }
}

/// A plain socket's paced read: the socket timeout follows [`Pace::wait`].
pub(crate) fn read_socket_paced<S: Read>(
    sock: &mut S,
    set_timeout: impl Fn(&S, Option<Duration>) -> io::Result<()>,
    buf: &mut [u8],
    pace: &mut Pace,
) -> io::Result<usize> {
    let wait = pace.wait()?;
    if pace.apply(wait) {
        set_timeout(sock, Some(wait))?;
    }
    let n = sock.read(buf)?;
    pace.note(n);
    Ok(n)
}

/// A read half with its frame clock, as the link's buffered reader sees it.
struct Paced {
    half: Box<dyn ReadHalf>,
    pace: Pace,
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.half.read_paced(buf, &mut self.pace)
    }
}

/// The sending half of a byte stream.
pub(crate) trait WriteHalf: Write + Send + 'static {
    /// Flush and close the sending direction (best effort).
    fn close(&mut self);
}

/// The default slowest transfer accepted inside a frame: 64 KiB/s.
pub const DEFAULT_MIN_RATE: u64 = 64 << 10;

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
    /// The slowest transfer accepted inside a frame, in bytes per second, after a grace of one
    /// timeout from the frame's first byte (0: none; see [`Link::recv`]).
    pub min_rate: u64,
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
            min_rate: DEFAULT_MIN_RATE,
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
    Stream(BufReader<Paced>),
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
            incoming: Incoming::Stream(BufReader::with_capacity(
                1 << 20,
                Paced {
                    half: reader,
                    pace: Pace::new(),
                },
            )),
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
    /// any frame, or after `options.max_wait` without a message even while heartbeats arrive;
    /// a frame that started arriving must keep coming at `options.min_rate` (see [`Pace`]).
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
        loop {
            reader.get_mut().pace.arm(options);
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
        FrameError::Truncated { cause, .. } if is_stall(cause) => {
            tracing::debug!(%me, %peer, error = %e, "peer too slow in the middle of a message");
            EngineError::Timeout {
                me,
                peer,
                after: options.timeout,
            }
        }
        FrameError::Truncated {
            cause: ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe,
            ..
        } => {
            tracing::debug!(%me, %peer, error = %e, "peer left in the middle of a message");
            EngineError::Disconnected { me, peer }
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

/// The step of a failure notice: a party whose request failed tells the other compute party
/// why before it drops their link (see [`StreamTransport::send_failure`]), so the peer fails at
/// once with the same reason instead of only seeing the link close.
pub const FAILED_STEP: &str = "failed";

/// Who a failure notice is about, as one word (0: nobody else).
fn party_code(p: Option<PartyId>) -> u64 {
    match p {
        None => 0,
        Some(PartyId::Alice) => 1,
        Some(PartyId::Bob) => 2,
        Some(PartyId::Dealer) => 3,
        Some(PartyId::ModelOwner) => 4,
        Some(PartyId::Client) => 5,
    }
}

fn party_of_code(c: u64) -> Option<PartyId> {
    [
        PartyId::Alice,
        PartyId::Bob,
        PartyId::Dealer,
        PartyId::ModelOwner,
        PartyId::Client,
    ]
    .get((c as usize).wrapping_sub(1))
    .copied()
}

/// The error a failure notice from `from` stands for: `from`'s failure, with its kind, reason
/// and the service it is about.
fn failure_notice(me: PartyId, from: PartyId, msg: &[u64]) -> EngineError {
    let bytes: Vec<u8> = msg
        .get(1..)
        .unwrap_or(&[])
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let text = String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string();
    match serde_json::from_str::<(crate::error::ErrorKind, String)>(&text) {
        Ok((kind, detail)) => EngineError::Remote {
            party: from,
            kind,
            detail,
            about: msg
                .first()
                .and_then(|&c| party_of_code(c))
                .filter(|&p| p != from),
        },
        Err(e) => EngineError::Protocol(format!(
            "{me}: {from} failed and sent an unreadable reason ({e})"
        )),
    }
}

impl StreamTransport {
    /// Tell `to` that this request failed here, and why (`kind`, the reason `detail`, and the
    /// service it is about, if another): `to`'s next receive on the link fails with this
    /// failure ([`EngineError::Remote`]) instead of waiting, or of only seeing the link close.
    pub fn send_failure(
        &mut self,
        to: PartyId,
        kind: crate::error::ErrorKind,
        about: Option<PartyId>,
        detail: &str,
    ) -> Result<()> {
        let json = serde_json::to_string(&(kind, detail))
            .map_err(|e| EngineError::Invalid(format!("failure notice: {e}")))?;
        let mut words = vec![party_code(about)];
        words.extend(json.as_bytes().chunks(8).map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        }));
        let prev = self.meter.set_step(FAILED_STEP);
        let sent = self.send(to, words);
        self.meter.set_step(prev);
        sent
    }

    /// Receive the next message from `from`, checking its request and sequence number, and its
    /// step against `step` when given; returns the sender's step code. A failure notice of
    /// this request is `from`'s failure; one of an earlier request (on a link kept for reuse)
    /// means the link was given up: it reads as closed.
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
            if env.step == step_code(FAILED_STEP) {
                return Err(if env.request == expected.request {
                    failure_notice(me, from, &msg)
                } else {
                    EngineError::Disconnected { me, peer: from }
                });
            }
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

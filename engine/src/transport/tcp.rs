//! TCP transport: length-prefixed frames of little-endian u64 words over one stream per pair.
//!
//! Sends never block on the peer: each connection has a writer thread fed by a queue, so two
//! parties that send large openings to each other at the same time cannot deadlock on full
//! socket buffers. Receives wait at most the timeout; a closed peer is reported as such.

use std::collections::HashMap;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use super::{Meter, PartyId, Transport};
use crate::error::{EngineError, Result};

/// One connection: a queue to its writer thread and a buffered reader.
///
/// Dropping a link closes the queue; its writer thread then flushes what was queued and exits
/// (or exits at once if the peer has closed), without anyone waiting for it.
struct Link {
    queue: Sender<Vec<u64>>,
    reader: BufReader<TcpStream>,
}

/// An endpoint connected to its peers over TCP.
pub struct TcpTransport {
    me: PartyId,
    links: HashMap<PartyId, Link>,
    timeout: Duration,
    meter: Meter,
}

fn io_err(me: PartyId, peer: PartyId, e: std::io::Error) -> EngineError {
    EngineError::Protocol(format!("{me}: connection to {peer} failed: {e}"))
}

/// Write one frame: the word count, then the words, little-endian.
fn write_frame(w: &mut impl Write, words: &[u64]) -> std::io::Result<()> {
    w.write_all(&(words.len() as u64).to_le_bytes())?;
    const CHUNK: usize = 1 << 16;
    let mut buf = Vec::with_capacity(CHUNK * 8);
    for chunk in words.chunks(CHUNK) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()
}

impl Link {
    fn new(stream: TcpStream) -> std::io::Result<Link> {
        stream.set_nodelay(true)?;
        let mut write_half = stream.try_clone()?;
        let (tx, rx) = channel::<Vec<u64>>();
        std::thread::Builder::new()
            .name("tcp-writer".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    if write_frame(&mut write_half, &msg).is_err() {
                        break;
                    }
                }
                let _ = write_half.shutdown(std::net::Shutdown::Write);
            })?;
        Ok(Link {
            queue: tx,
            reader: BufReader::with_capacity(1 << 20, stream),
        })
    }
}

/// Connect every endpoint in `ids` to every other over loopback TCP (127.0.0.1).
pub fn tcp_mesh(ids: &[PartyId], timeout: Duration) -> Result<HashMap<PartyId, TcpTransport>> {
    let mut out: HashMap<PartyId, TcpTransport> = ids
        .iter()
        .map(|&id| {
            (
                id,
                TcpTransport {
                    me: id,
                    links: HashMap::new(),
                    timeout,
                    meter: Meter::default(),
                },
            )
        })
        .collect();
    for (i, &a) in ids.iter().enumerate() {
        for &b in &ids[i + 1..] {
            let listener =
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| io_err(a, b, e))?;
            let addr = listener.local_addr().map_err(|e| io_err(a, b, e))?;
            let client = TcpStream::connect(addr).map_err(|e| io_err(b, a, e))?;
            let (server, _) = listener.accept().map_err(|e| io_err(a, b, e))?;
            let link_a = Link::new(server).map_err(|e| io_err(a, b, e))?;
            let link_b = Link::new(client).map_err(|e| io_err(b, a, e))?;
            out.get_mut(&a).expect("endpoint").links.insert(b, link_a);
            out.get_mut(&b).expect("endpoint").links.insert(a, link_b);
        }
    }
    Ok(out)
}

impl TcpTransport {
    fn link(&mut self, peer: PartyId) -> Result<&mut Link> {
        let me = self.me;
        self.links
            .get_mut(&peer)
            .ok_or_else(|| EngineError::Invalid(format!("{me} has no link to {peer}")))
    }

    fn read_exact(&mut self, peer: PartyId, buf: &mut [u8]) -> Result<()> {
        let (me, timeout) = (self.me, self.timeout);
        let link = self.link(peer)?;
        link.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| io_err(me, peer, e))?;
        link.reader.read_exact(buf).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => EngineError::Timeout {
                me,
                peer,
                after: timeout,
            },
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                EngineError::Disconnected { me, peer }
            }
            _ => io_err(me, peer, e),
        })
    }
}

/// Frames larger than this are refused as corrupt (2^33 words = 64 GiB).
const MAX_FRAME_WORDS: u64 = 1 << 33;

impl Transport for TcpTransport {
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
        let mut len = [0u8; 8];
        self.read_exact(from, &mut len)?;
        let words = u64::from_le_bytes(len);
        if words > MAX_FRAME_WORDS {
            return Err(EngineError::Protocol(format!(
                "{}: frame of {words} words from {from} is too large",
                self.me
            )));
        }
        let mut bytes = vec![0u8; words as usize * 8];
        if let Err(e) = self.read_exact(from, &mut bytes) {
            // A frame cut short leaves the stream out of step: drop the link for good.
            self.links.remove(&from);
            return Err(match e {
                EngineError::Timeout { me, peer, after } => EngineError::Protocol(format!(
                    "{me}: {peer} stalled for {after:?} in the middle of a message"
                )),
                other => other,
            });
        }
        let msg: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        self.meter.on_recv(bytes.len() as u64);
        Ok(msg)
    }

    fn meter(&mut self) -> &mut Meter {
        &mut self.meter
    }

    fn meter_ref(&self) -> &Meter {
        &self.meter
    }
}

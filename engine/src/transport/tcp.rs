//! Plain TCP links (no encryption, no authentication): for loopback benchmarks and tests, and
//! for deployments only behind an explicit insecure option. Framing and the transport itself are
//! shared with TLS (see [`super::stream`]).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use super::stream::{
    read_socket_paced, Link, Pace, ReadHalf, StreamOptions, StreamTransport, WriteHalf,
};
use super::PartyId;
use crate::error::{EngineError, Result};

/// An endpoint connected to its peers over plain TCP.
pub type TcpTransport = StreamTransport;

impl ReadHalf for TcpStream {
    fn read_paced(&mut self, buf: &mut [u8], pace: &mut Pace) -> io::Result<usize> {
        read_socket_paced(self, TcpStream::set_read_timeout, buf, pace)
    }
}

impl WriteHalf for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Link {
    /// A plain TCP link over a connected stream, sending a heartbeat after each `heartbeat`
    /// of silence (none when `None`).
    pub fn tcp(stream: TcpStream, heartbeat: Option<Duration>) -> io::Result<Link> {
        stream.set_nodelay(true)?;
        let write_half = stream.try_clone()?;
        Link::new(Box::new(stream), Box::new(write_half), heartbeat)
    }
}

fn io_err(me: PartyId, peer: PartyId, e: io::Error) -> EngineError {
    EngineError::Protocol(format!("{me}: connection to {peer} failed: {e}"))
}

/// Connect every endpoint in `ids` to every other over loopback TCP (127.0.0.1).
pub fn tcp_mesh(ids: &[PartyId], timeout: Duration) -> Result<HashMap<PartyId, TcpTransport>> {
    tcp_mesh_with(ids, StreamOptions::with_timeout(timeout))
}

/// [`tcp_mesh`] with explicit options (frame limit).
pub fn tcp_mesh_with(
    ids: &[PartyId],
    options: StreamOptions,
) -> Result<HashMap<PartyId, TcpTransport>> {
    let mut out: HashMap<PartyId, TcpTransport> = ids
        .iter()
        .map(|&id| (id, StreamTransport::new(id, options)))
        .collect();
    for (i, &a) in ids.iter().enumerate() {
        for &b in &ids[i + 1..] {
            let listener =
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| io_err(a, b, e))?;
            let addr = listener.local_addr().map_err(|e| io_err(a, b, e))?;
            let client = TcpStream::connect(addr).map_err(|e| io_err(b, a, e))?;
            let (server, _) = listener.accept().map_err(|e| io_err(a, b, e))?;
            let link_a =
                Link::tcp(server, Some(options.heartbeat())).map_err(|e| io_err(a, b, e))?;
            let link_b =
                Link::tcp(client, Some(options.heartbeat())).map_err(|e| io_err(b, a, e))?;
            out.get_mut(&a).expect("endpoint").add_link(b, link_a);
            out.get_mut(&b).expect("endpoint").add_link(a, link_b);
        }
    }
    Ok(out)
}

impl ReadHalf for std::os::unix::net::UnixStream {
    fn read_paced(&mut self, buf: &mut [u8], pace: &mut Pace) -> io::Result<usize> {
        read_socket_paced(
            self,
            std::os::unix::net::UnixStream::set_read_timeout,
            buf,
            pace,
        )
    }
}

impl WriteHalf for std::os::unix::net::UnixStream {
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Link {
    /// Two links joined by an in-process socket pair (the same framing as TCP, for
    /// deployments inside one process).
    pub fn pair(heartbeat: Option<Duration>) -> io::Result<(Link, Link)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        let link = |s: std::os::unix::net::UnixStream| -> io::Result<Link> {
            Link::new(Box::new(s.try_clone()?), Box::new(s), heartbeat)
        };
        Ok((link(a)?, link(b)?))
    }
}

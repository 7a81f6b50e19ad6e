//! Plain TCP links (no encryption, no authentication): for loopback benchmarks and tests, and
//! for deployments only behind an explicit insecure option. Framing and the transport itself are
//! shared with TLS (see [`super::stream`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::stream::{
    read_socket_paced, Link, Pace, ReadHalf, StreamOptions, StreamTransport, WriteHalf,
};
use super::PartyId;
use crate::error::{EngineError, Result};

/// The raw form of a socket address, for `bind` and `connect`.
fn raw_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A TCP connection to `addr` within `timeout`, from the local address `source` when given
/// (std cannot bind before connecting; with a source the connect blocks, as on loopback, where
/// it is used: load tools and tests giving a flood a source of its own).
pub fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let Some(source) = source else {
        return TcpStream::connect_timeout(&addr, timeout);
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls; the descriptor is owned by `fd` from here on.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor no one else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (src, src_len) = raw_addr(SocketAddr::new(source, 0));
    let (dst, dst_len) = raw_addr(addr);
    // SAFETY: the addresses live across the calls and their lengths are theirs.
    unsafe {
        if libc::bind(raw, std::ptr::addr_of!(src).cast(), src_len) != 0
            || libc::connect(raw, std::ptr::addr_of!(dst).cast(), dst_len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(TcpStream::from(fd))
}

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

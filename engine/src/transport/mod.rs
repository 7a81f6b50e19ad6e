//! How parties talk: the [`Transport`] trait, party identities, and traffic metering.
//!
//! Messages are vectors of ring words (`Vec<u64>`). Every endpoint meters what it sends and
//! receives per protocol step; a *round* is counted each time an endpoint sends after having
//! received (consecutive sends without waiting belong to one round).

mod channel;
mod meter;
mod stream;
mod tcp;
pub mod tls;

pub use crate::wire::envelope::{step_code, Envelope};
pub use channel::{channel_mesh, ChannelTransport};
pub use meter::{Meter, StepStats, TrafficStats};
pub use stream::{Link, StreamOptions, StreamTransport};
pub use tcp::{connect_from, tcp_mesh, tcp_mesh_with, TcpTransport};
pub use tls::{tls_mesh, TlsEndpoint};

pub use crate::roles::PartyId;

use crate::error::Result;

/// How the endpoints of a session are connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// In-process channels (no serialisation).
    #[default]
    Channels,
    /// TCP over loopback: every message is framed and serialised as it would be between
    /// machines. Unencrypted and unauthenticated: for loopback benchmarks only.
    Tcp,
    /// Mutually authenticated TLS over loopback, with a fresh in-memory deployment CA.
    Tls,
}

impl std::str::FromStr for TransportKind {
    type Err = crate::error::EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "channels" => Ok(TransportKind::Channels),
            "tcp" => Ok(TransportKind::Tcp),
            "tls" => Ok(TransportKind::Tls),
            other => Err(crate::error::EngineError::Invalid(format!(
                "unknown transport '{other}' (expected 'channels', 'tcp' or 'tls')"
            ))),
        }
    }
}

/// A party's connection to the others.
pub trait Transport: Send {
    /// This endpoint's identity.
    fn me(&self) -> PartyId;
    /// Send a message to `to` (does not wait for it to be read).
    fn send(&mut self, to: PartyId, payload: Vec<u64>) -> Result<()>;
    /// Receive the next message from `from`, waiting at most the transport's timeout.
    fn recv(&mut self, from: PartyId) -> Result<Vec<u64>>;
    /// The traffic meter of this endpoint.
    fn meter(&mut self) -> &mut Meter;
    /// Read-only view of the meter.
    fn meter_ref(&self) -> &Meter;
    /// Receive the next message from `from` whatever protocol step sent it, with that step's
    /// [`step_code`] (a data owner waiting for a reveal may get a party's failure reply
    /// instead). Transports without steps on the wire report the current step.
    fn recv_tagged(&mut self, from: PartyId) -> Result<(u64, Vec<u64>)> {
        let step = step_code(self.meter_ref().current_step());
        Ok((step, self.recv(from)?))
    }
    /// Take the link to `peer` out of this endpoint, if it is a stream link (a service returns
    /// a finished request's links to its pools).
    fn take_link(&mut self, _peer: PartyId) -> Option<Link> {
        None
    }
    /// Tag following messages with request `id` (sequence numbers restart); transports without
    /// envelopes ignore it.
    fn set_request_id(&mut self, _id: u64) {}
    /// This endpoint as a [`StreamTransport`], if it is one (a service takes a request's
    /// links, with their sequence numbers, back from a finished party).
    fn into_stream(self: Box<Self>) -> Option<StreamTransport> {
        None
    }
}

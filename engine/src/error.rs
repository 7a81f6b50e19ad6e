//! Engine errors: every bad input and every communication failure is a precise `Err`.

use std::time::Duration;

use crate::roles::PartyId;

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A backend kernel failed (shape mismatch inside a kernel, GPU error, ...).
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
    /// Operand shapes do not fit an operation.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What was given.
        detail: String,
    },
    /// A real value cannot be encoded in the fixed-point range.
    #[error("value {value} at index {index} is outside the fixed-point range ±{max} ({frac_bits} fractional bits)")]
    OutOfRange {
        /// The offending value.
        value: f64,
        /// Its flat index in the input.
        index: usize,
        /// The largest representable magnitude.
        max: f64,
        /// Fractional bits of the encoding.
        frac_bits: u32,
    },
    /// NaN or infinity in an input.
    #[error("value at index {index} is not finite ({value})")]
    NotFinite {
        /// The offending value.
        value: f64,
        /// Its flat index in the input.
        index: usize,
    },
    /// Invalid configuration or argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A peer did not answer within the timeout.
    #[error("{me} timed out after {after:?} waiting for {peer}")]
    Timeout {
        /// Who was waiting.
        me: PartyId,
        /// Who did not answer.
        peer: PartyId,
        /// The timeout.
        after: Duration,
    },
    /// A peer keeps its link alive (heartbeats) but sends nothing the request needs.
    #[error("{me}: {peer} is alive but sent nothing for {after:?}")]
    Stalled {
        /// Who was waiting.
        me: PartyId,
        /// Who sent nothing.
        peer: PartyId,
        /// How long it waited.
        after: Duration,
    },
    /// A peer went away.
    #[error("{me}: connection to {peer} closed")]
    Disconnected {
        /// Who noticed.
        me: PartyId,
        /// Who disconnected.
        peer: PartyId,
    },
    /// This endpoint could not reach a service (refused, unreachable, TLS refused, ...).
    #[error("{me} could not connect to {peer}: {detail}")]
    Unreachable {
        /// Who tried (its role, in words).
        me: String,
        /// The service it tried to reach.
        peer: PartyId,
        /// Why it failed.
        detail: String,
    },
    /// A message did not have the expected form.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Alice and bob are out of step: they hold different material, or a protocol step met
    /// material made for another. The request is stopped; no answer is given.
    #[error("out of step at '{step}': {detail}")]
    OutOfStep {
        /// The protocol step that noticed.
        step: &'static str,
        /// What differed.
        detail: String,
    },
    /// A party answered a request with a failure (its reason, what kind of failure it was, so
    /// callers can branch on [`EngineError::kind`], and the service it is about, when that is
    /// another one: then the message names that service first).
    #[error("{}", remote_text(*.party, *.about, .detail))]
    Remote {
        /// Who reported the failure.
        party: PartyId,
        /// The kind of failure it reported.
        kind: ErrorKind,
        /// Its reason, in words.
        detail: String,
        /// The service that failed, as the reporting party saw it (`None`: the reporter
        /// itself).
        about: Option<PartyId>,
    },
    /// Refused by the deployment's policy: who may do what, a name already taken, a limit.
    #[error("invalid argument: {0}")]
    Refused(String),
    /// No model of that name is served.
    #[error("invalid argument: no model '{name}' is served here")]
    UnknownModel {
        /// The name asked for.
        name: String,
    },
    /// A party thread failed or panicked.
    #[error("party {party} failed: {detail}")]
    PartyFailed {
        /// Which party.
        party: PartyId,
        /// What happened.
        detail: String,
    },
    /// A value can leave the range the protocols are exact on (refused before sharing), or left
    /// its calibrated range at run time.
    #[error("{0}")]
    Range(String),
    /// Model or data file problem.
    #[error("{0}")]
    Format(String),
    /// I/O error with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What kind of failure an error is: what a caller branches on (retry later, fix the input,
/// report a peer, ...). Stable across hosts: a party's failure reaches a data owner with its
/// kind ([`EngineError::Remote`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// The input (a file, an option, a shape, a value) is not acceptable; fix it and retry.
    BadInput,
    /// Refused by policy (who may do what, names taken, limits of the deployment).
    Refused,
    /// No such model is served.
    UnknownModel,
    /// Too many requests in progress; retry later.
    Busy,
    /// Alice and bob (or a peer and this side) are out of step; the request was stopped.
    OutOfStep,
    /// A peer died, stalled or closed its link.
    PeerLost,
    /// A value left (or could leave) the range the protocols are exact on.
    OverflowDetected,
    /// Anything else (an internal error or an I/O failure).
    Internal,
}

impl EngineError {
    /// The kind of this failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        use EngineError::*;
        match self {
            Shape { .. } | OutOfRange { .. } | NotFinite { .. } | Invalid(_) | Format(_) => {
                ErrorKind::BadInput
            }
            Io { .. } | Kernel(_) => ErrorKind::Internal,
            Timeout { .. }
            | Stalled { .. }
            | Disconnected { .. }
            | PartyFailed { .. }
            | Unreachable { .. } => ErrorKind::PeerLost,
            Protocol(_) => ErrorKind::OutOfStep,
            OutOfStep { .. } => ErrorKind::OutOfStep,
            Range(_) => ErrorKind::OverflowDetected,
            Remote { kind, .. } => *kind,
            UnknownModel { .. } => ErrorKind::UnknownModel,
            Refused(_) => ErrorKind::Refused,
        }
    }
}

impl EngineError {
    /// The peer this failure is about, where it names one: the service that was lost, stalled,
    /// unreachable or that failed (a data owner then reports that peer, not the party that
    /// noticed; see [`crate::service::client`]).
    pub fn peer(&self) -> Option<PartyId> {
        use EngineError::*;
        match self {
            Timeout { peer, .. }
            | Stalled { peer, .. }
            | Disconnected { peer, .. }
            | Unreachable { peer, .. } => Some(*peer),
            PartyFailed { party, .. } => Some(*party),
            Remote { party, about, .. } => Some(about.unwrap_or(*party)),
            _ => None,
        }
    }
}

/// The message of [`EngineError::Remote`].
fn remote_text(party: PartyId, about: Option<PartyId>, detail: &str) -> String {
    match about {
        Some(p) if p != party => format!("{p} failed (as {party} reported): {detail}"),
        _ => format!("party {party} failed: {detail}"),
    }
}

/// Build an [`EngineError::Shape`].
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> EngineError {
    EngineError::Shape {
        op,
        detail: detail.into(),
    }
}

//! The control messages of the services: what a data owner asks a party, what a party answers,
//! how alice joins bob for a request and how both join the dealer.
//!
//! A control message is JSON (serde) packed into words: `[byte length, bytes packed 8 a word]`.
//! Decoding checks the length against the words that arrived before reading anything, so a
//! peer's garbage is an error, never a panic or a large allocation; shares, openings and
//! material never travel in this form (they are plain word messages of their protocol step).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, ErrorKind, Result};
use crate::nn::plan::ModelPlan;
use crate::roles::PartyId;

/// The step of a data owner's request message.
pub const REQUEST_STEP: &str = "request";
/// The step of a party's reply to a data owner.
pub const REPLY_STEP: &str = "reply";
/// The step of alice's join and bob's answer on a peer link.
pub const JOIN_STEP: &str = "join";

/// What a data owner asks the parties (sent to alice and bob alike).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Store the shares of a model under `name` (the model owner); the owner then sends each
    /// layer's shares as the plan says.
    Upload {
        /// The request id (chosen by the owner, fresh and random).
        request: u64,
        /// The model's name.
        name: String,
        /// The model's public plan.
        plan: ModelPlan,
    },
    /// Classify `rows` samples with model `model` in batches of `batch` (a client); with
    /// labels, the correct count is kept for the model owner under the request id.
    Classify {
        /// The request id.
        request: u64,
        /// The model's name.
        model: String,
        /// Samples.
        rows: u64,
        /// Samples per batch.
        batch: u64,
        /// Whether the client shares labels.
        labels: bool,
    },
    /// Reveal the correct count of classify request `of` to the model owner asking.
    Score {
        /// The request id of this request.
        request: u64,
        /// The classify request whose count is wanted.
        of: u64,
    },
    /// List the models served.
    List {
        /// The request id.
        request: u64,
    },
    /// Delete a model (its owner only).
    Delete {
        /// The request id.
        request: u64,
        /// The model's name.
        name: String,
    },
    /// Run a custom secure computation whose programs the in-process deployment hands the
    /// parties (refused by a service with no such program): the requesting data owner shares
    /// inputs and receives reveals on this request's links until it ends the computation.
    Compute {
        /// The request id (also the computation's id).
        request: u64,
        /// Fixed-point fractional bits of the computation.
        frac_bits: u32,
        /// Whether the other data owner joins with [`Request::Attach`].
        attach: bool,
    },
    /// Join computation `to` as its second data owner: this connection serves that computation
    /// until it ends, then gets the reply to this request.
    Attach {
        /// The request id.
        request: u64,
        /// The computation joined.
        to: u64,
    },
}

impl Request {
    /// The request id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Upload { request, .. }
            | Request::Classify { request, .. }
            | Request::Score { request, .. }
            | Request::List { request }
            | Request::Delete { request, .. }
            | Request::Compute { request, .. }
            | Request::Attach { request, .. } => *request,
        }
    }

    /// The model a request is about, its rows and batch size (for logs; empty and 0 where
    /// they do not apply).
    pub fn subject(&self) -> (&str, u64, u64) {
        match self {
            Request::Upload { name, .. } | Request::Delete { name, .. } => (name, 0, 0),
            Request::Classify {
                model, rows, batch, ..
            } => (model, *rows, *batch),
            Request::Score { .. }
            | Request::List { .. }
            | Request::Compute { .. }
            | Request::Attach { .. } => ("", 0, 0),
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Upload { .. } => "upload",
            Request::Classify { .. } => "classify",
            Request::Score { .. } => "score",
            Request::List { .. } => "models",
            Request::Delete { .. } => "delete",
            Request::Compute { .. } => "compute",
            Request::Attach { .. } => "attach",
        }
    }
}

/// A model as the parties list it. What a data owner sees depends on who it is: a client sees
/// what it needs to classify (name, input shape, classes, fractional bits, input bound, whether
/// hidden values are range-checked); a model owner lists its own models only, with their
/// owner, parameter count and out-of-range count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// The model owner that uploaded it (its own owner's listing only).
    #[serde(default)]
    pub owner: Option<String>,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Classes.
    pub classes: usize,
    /// Fractional bits.
    pub frac_bits: u32,
    /// Declared input bound.
    pub input_bound: f64,
    /// Parameters (its own owner's listing only).
    #[serde(default)]
    pub parameters: Option<usize>,
    /// Whether hidden values are checked against the owner's calibrated bounds at run time:
    /// then each prediction is revealed as `class + 1`, and a batch that left its range as
    /// zeros (the client learns only that the batch failed).
    #[serde(default)]
    pub range_checked: bool,
    /// Batches that left their calibrated range since the parties started (its own owner's
    /// listing only). In a party's reply: that party's share of the count, which the owner
    /// adds up; the parties never learn it.
    #[serde(default)]
    pub out_of_range: Option<u64>,
}

/// A party's answer to a request (sent when the request is done or refused).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done; what the request produced at this party.
    Done {
        /// This party's share of the correct count (score requests).
        share: Option<u64>,
        /// The models served, as the asking data owner may see them (list requests only).
        models: Vec<ModelInfo>,
        /// Rounds this party sent in the request.
        rounds: u64,
        /// Messages this party sent in the request.
        messages: u64,
        /// Bytes this party sent in the request.
        bytes: u64,
        /// Batches that ran on material made ahead (classify requests).
        #[serde(default)]
        ahead: u64,
    },
    /// Refused or failed; why.
    Failed {
        /// The reason, in words.
        reason: String,
        /// What kind of failure it was.
        #[serde(default = "internal")]
        kind: ErrorKind,
        /// The service the failure is about, where the party knows one (`alice`, `bob` or
        /// `dealer`: a peer it lost, that stalled, that refused or that it could not reach);
        /// the data owner follows it to the service that failed first.
        #[serde(default)]
        peer: Option<String>,
    },
    /// Too many requests in progress: try again later.
    Busy {
        /// The limit.
        limit: usize,
    },
}

fn internal() -> ErrorKind {
    ErrorKind::Internal
}

impl Reply {
    /// A failure reply for `e` (its text, kind and the service it is about).
    pub fn failed(e: &EngineError) -> Reply {
        let peer = e
            .peer()
            .filter(|p| !p.is_data_owner())
            .map(|p| p.to_string());
        Reply::Failed {
            reason: e.to_string(),
            kind: e.kind(),
            peer,
        }
    }

    /// The service a failure reply is about (see [`Reply::Failed`]).
    pub fn failed_peer(&self) -> Option<PartyId> {
        match self {
            Reply::Failed { peer: Some(p), .. } => match p.as_str() {
                "alice" => Some(PartyId::Alice),
                "bob" => Some(PartyId::Bob),
                "dealer" => Some(PartyId::Dealer),
                _ => None,
            },
            _ => None,
        }
    }

    /// A failure reply from `party` as an error (`None` when the request is done): its reason,
    /// kind and the service it is about.
    pub fn as_error(&self, party: PartyId) -> Option<EngineError> {
        let (detail, kind) = self.failure()?;
        Some(EngineError::Remote {
            party,
            kind,
            detail,
            about: self.failed_peer().filter(|&p| p != party),
        })
    }

    /// Why the request did not run, in words, and the kind of failure (`None` when it is done).
    pub fn failure(&self) -> Option<(String, ErrorKind)> {
        match self {
            Reply::Done { .. } => None,
            Reply::Failed { reason, kind, .. } => Some((reason.clone(), *kind)),
            Reply::Busy { limit } => Some((
                format!("busy: {limit} requests in progress (the limit); try again later"),
                ErrorKind::Busy,
            )),
        }
    }
}

/// What alice sends bob to run a request together over a peer link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerJoin {
    /// The request id.
    pub request: u64,
    /// SHA-256 of the request as alice received it (bob checks his copy matches); empty when
    /// alice refuses the request.
    pub digest: Vec<u8>,
    /// For a classify request: per batch, the id of the preprocessed material alice offers to
    /// use (both parties made it together earlier), if any.
    pub prepared: Vec<Option<u64>>,
    /// Instead of a data owner's request: make preprocessed material together for later
    /// requests of this shape (the request id is the material's id).
    pub prepare: Option<PrepareJob>,
}

/// Material for one batch shape of one model, made ahead of requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrepareJob {
    /// The model's name.
    pub model: String,
    /// The model's upload id (material of a deleted and re-uploaded model is never used).
    pub uid: u64,
    /// Rows in the batch.
    pub rows: u64,
    /// Whether the batch has labels.
    pub labels: bool,
}

/// Bob's answer to alice's join.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Why bob will not run the request, if he will not.
    pub refused: Option<String>,
    /// Per batch, whether bob holds the preprocessed material alice offered.
    pub have: Vec<bool>,
}

/// What a party sends the dealer to get its seed for a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DealerJoin {
    /// The request id.
    pub request: u64,
    /// 0 for alice, 1 for bob.
    pub party: u8,
    /// The model the request uses (for an upload: the model being created).
    pub model: String,
    /// What the request does with the model.
    pub kind: JoinKind,
    /// The model's fractional bits (the only truncation width the dealer serves).
    pub frac_bits: u32,
}

/// What a request does with its model, as the dealer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    /// Creates it: its fixed masks are issued in the request.
    Upload,
    /// Uses it: fixed-operand products use its masks.
    Classify,
    /// Deletes it (bob only; no seeds).
    Delete,
    /// No model: a custom computation (its fixed masks, if any, live for the request only).
    Compute,
}

/// Bob's last word to the dealer for a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DealerEnd {
    /// The request is over; for an upload that succeeded on both parties, keep the model's
    /// masks (persisted) under its name for its owner.
    Finish {
        /// Whether to keep an uploaded model.
        commit: bool,
        /// The owner of an uploaded model.
        owner: String,
    },
}

/// Pack a control message into words.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u64> {
    let bytes = serde_json::to_vec(msg).expect("control messages serialise");
    let mut out = Vec::with_capacity(1 + bytes.len().div_ceil(8));
    out.push(bytes.len() as u64);
    out.extend(bytes.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    }));
    out
}

/// Unpack a control message of type `T` from a peer's words (`what` names it in errors).
pub fn decode<T: DeserializeOwned>(words: &[u64], what: &str) -> Result<T> {
    let bad = |why: String| EngineError::Protocol(format!("malformed {what}: {why}"));
    let [len, body @ ..] = words else {
        return Err(bad("empty message".into()));
    };
    let fits = usize::try_from(*len)
        .ok()
        .filter(|&l| l.div_ceil(8) == body.len());
    let Some(len) = fits else {
        return Err(bad(format!(
            "{len} bytes announced, {} words follow",
            body.len()
        )));
    };
    let bytes: &[u8] = bytemuck::cast_slice(body);
    let bytes = &bytes[..len];
    if cfg!(target_endian = "big") {
        return Err(bad("big-endian hosts are not supported".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
}

/// A model name: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'.
pub fn check_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "'{name}' is not a valid model name (1-64 letters, digits, '-', '_' or '.', not \
             starting with '.')"
        )))
    }
}

/// A fresh random request id (never 0), from the operating system.
pub fn fresh_id() -> u64 {
    use rand_core::RngCore;
    loop {
        let id = rand_core::OsRng.next_u64();
        if id != 0 {
            return id;
        }
    }
}

/// SHA-256 of a message's words (alice and bob compare the request they each received).
pub fn digest(words: &[u64]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytemuck::cast_slice(words))
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let r = Request::Classify {
            request: u64::MAX,
            model: "m".into(),
            rows: 7,
            batch: 3,
            labels: true,
        };
        let w = encode(&r);
        assert_eq!(decode::<Request>(&w, "request").unwrap(), r);
        for bad in [vec![], vec![100, 1], vec![u64::MAX], vec![3, 0x00ff_ffff]] {
            let e = decode::<Request>(&bad, "request").unwrap_err().to_string();
            assert!(e.contains("malformed request"), "{e}");
        }
        // A message of another type is refused too.
        let e = decode::<PeerJoin>(&w, "peer join").unwrap_err().to_string();
        assert!(e.contains("malformed peer join"), "{e}");
    }
}

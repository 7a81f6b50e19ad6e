//! Alice, bob and the dealer as services across hosts.
//!
//! - [`net`]: addresses, mutually authenticated TLS, hellos, pools of idle links.
//! - [`store`]: atomic, versioned, checksummed records of uploaded models.
//! - [`scores`]: correct counts kept (and persisted) until their model owner fetches them.
//! - `prep`: the preprocessing engine: a request's material made batch by batch ahead of the
//!   online phase (and, in the party, material made between requests).
//! - [`party`]: a compute party's service: runs data owners' requests with the other party
//!   and the dealer.
//! - [`dealer`]: the dealer's service: a seed per request and party, bob's corrections.
//! - [`access`]: how a host reaches a deployment (its file, keys, and which role it plays).
//! - [`client`]: a data owner's side: upload, classify, score, list, delete.
//! - [`classifier`]: the tutorial's flow on an in-process deployment in one object.
//! - [`computation`]: custom secure computations on an in-process deployment (the embedding
//!   API).
//! - [`local`]: the same services in one process (in-process links, loopback TCP or TLS).
//!
//! # One request, three links
//! A data owner connects to alice and bob and sends both the same request with a fresh random
//! id. Each party takes a link to the dealer from its pool and joins the request there (the
//! dealer draws two fresh seeds for it); alice takes a link to bob and joins him (bob checks
//! that the request alice got is the one he got). Every message of the request, on every link,
//! carries `(request, sequence, step)` and is checked on receipt
//! ([`crate::transport::Envelope`]). A link is reused only after a request that ended in step
//! on it; after a failure it is dropped, so a failed request cannot shift what the next one
//! reads. The party's computation is the same code as in-process
//! ([`crate::nn::ModelPlan::build_layer`] for uploads, the classification batch step of
//! [`crate::nn::classify`]); only the transport differs.

pub mod access;
pub mod classifier;
pub mod client;
pub mod computation;
pub mod dealer;
pub(crate) mod hooks;
pub mod local;
pub mod net;
pub mod party;
pub(crate) mod prep;
pub mod scores;
pub mod store;

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

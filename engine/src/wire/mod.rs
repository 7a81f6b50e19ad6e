//! Everything that crosses a link, in one place: how bytes become frames of words ([`frame`]),
//! the envelope every message on a stream link carries ([`envelope`]), tensors as messages
//! ([`tensor`]), the dealer's requests and answers ([`dealer`]) and the services' control
//! messages ([`control`]).
//!
//! Every decoder here takes a peer's words as untrusted: sizes are checked before anything is
//! allocated, and garbage is an error, never a panic (the fuzz entry
//! [`crate::fuzzing::decode_untrusted`] runs them all).

pub mod control;
pub mod dealer;
pub mod envelope;
pub mod frame;
pub mod tensor;

//! Shared test helpers of the application crate: the protocol harness (the same file as
//! `engine`'s tests use), deployments of real processes, layer helpers.
#![allow(dead_code)]

#[path = "../../engine/tests/common/mod.rs"]
mod harness;

pub use harness::*;

pub mod cluster;
pub mod layers;

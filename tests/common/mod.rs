//! Shared test helpers of the application crate: the protocol harness (the same file as
//! `engine`'s tests use), the binary as a command (`cli`), deployments of real processes, layer
//! helpers.
#![allow(dead_code)]

#[path = "../../engine/tests/common/mod.rs"]
mod harness;

#[allow(unused_imports)]
pub use harness::*;

pub mod cli;
pub mod cluster;
pub mod layers;

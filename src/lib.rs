//! The `secure-serving` application: the command line and the bench command, built on the
//! [`engine`] library. Applications that embed `engine` do not depend on this crate (nor on clap).

#![warn(missing_docs)]

pub mod attack;
pub mod bench;
pub mod bench_cnn;
pub mod bench_memory;
pub mod bench_resnet;
pub mod bench_service;
pub mod cli;
pub mod local;
pub mod options;
pub mod remote;

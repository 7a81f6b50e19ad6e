//! Deployment across hosts: the deployment file ([`config`]), its keys ([`keys`]) and the
//! identity every certificate binds ([`Role`]).
//!
//! A certificate names its holder's role as a DNS subject-alternative name under the
//! deployment's name: `alice.<deployment>`, `bob.<deployment>`, `dealer.<deployment>`,
//! `<name>.owner.<deployment>` for a model owner and `<name>.client.<deployment>` for a client.
//! A peer checks that name against the role it expects (see [`crate::transport::tls`]), and
//! refuses a certificate the deployment file revokes ([`revocation`]).

pub mod config;
pub mod keys;
pub mod revocation;

pub use config::{Deployment, KeySettings};
pub use keys::{generate_keys, write_keys, Credentials, KeySet};
pub use revocation::{Fingerprint, Revocations};

pub use crate::roles::Role;

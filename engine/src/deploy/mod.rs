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

use std::fmt;

use crate::transport::PartyId;

/// Who holds a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Compute party 0.
    Alice,
    /// Compute party 1.
    Bob,
    /// The crypto provider.
    Dealer,
    /// A model owner, by name.
    ModelOwner(String),
    /// A client (data owner that classifies), by name.
    Client(String),
}

impl Role {
    /// The transport endpoint this role talks as.
    pub fn party_id(&self) -> PartyId {
        match self {
            Role::Alice => PartyId::Alice,
            Role::Bob => PartyId::Bob,
            Role::Dealer => PartyId::Dealer,
            Role::ModelOwner(_) => PartyId::ModelOwner,
            Role::Client(_) => PartyId::Client,
        }
    }

    /// The DNS name bound into this role's certificate in deployment `deployment`.
    pub fn subject_name(&self, deployment: &str) -> String {
        match self {
            Role::Alice => format!("alice.{deployment}"),
            Role::Bob => format!("bob.{deployment}"),
            Role::Dealer => format!("dealer.{deployment}"),
            Role::ModelOwner(n) => format!("{n}.owner.{deployment}"),
            Role::Client(n) => format!("{n}.client.{deployment}"),
        }
    }

    /// The file stem of this role's certificate and key in a key directory.
    pub fn file_stem(&self) -> String {
        match self {
            Role::Alice => "alice".into(),
            Role::Bob => "bob".into(),
            Role::Dealer => "dealer".into(),
            Role::ModelOwner(n) => format!("owner-{n}"),
            Role::Client(n) => format!("client-{n}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Alice => f.write_str("alice"),
            Role::Bob => f.write_str("bob"),
            Role::Dealer => f.write_str("dealer"),
            Role::ModelOwner(n) => write!(f, "model owner '{n}'"),
            Role::Client(n) => write!(f, "client '{n}'"),
        }
    }
}

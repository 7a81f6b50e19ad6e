//! Who takes part: the five endpoints of a computation ([`PartyId`]) and the holders of a
//! deployment's certificates ([`Role`]). The ground floor of the crate: everything else may name
//! a party, and this module names nothing else.

use std::fmt;

/// Who is talking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartyId {
    /// Compute party 0.
    Alice,
    /// Compute party 1.
    Bob,
    /// The crypto provider: hands out correlated randomness, never sees data.
    Dealer,
    /// The server: owns the model.
    ModelOwner,
    /// The client: owns the data.
    Client,
}

impl PartyId {
    /// The compute party with index 0 or 1.
    pub fn compute(index: usize) -> PartyId {
        if index == 0 {
            PartyId::Alice
        } else {
            PartyId::Bob
        }
    }

    /// Whether this is a data owner (model owner or client) rather than a service.
    pub fn is_data_owner(&self) -> bool {
        matches!(self, PartyId::ModelOwner | PartyId::Client)
    }

    /// All endpoints of an in-process session.
    pub const ALL: [PartyId; 5] = [
        PartyId::Alice,
        PartyId::Bob,
        PartyId::Dealer,
        PartyId::ModelOwner,
        PartyId::Client,
    ];
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartyId::Alice => "alice",
            PartyId::Bob => "bob",
            PartyId::Dealer => "dealer",
            PartyId::ModelOwner => "model owner",
            PartyId::Client => "client",
        })
    }
}

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

    /// A data owner's name (`None` for alice, bob and the dealer).
    pub fn owner_name(&self) -> Option<&str> {
        match self {
            Role::ModelOwner(n) | Role::Client(n) => Some(n),
            _ => None,
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

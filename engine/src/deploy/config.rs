//! The deployment file: one TOML file naming every service's address and the data owners that
//! may connect.
//!
//! ```toml
//! name = "demo"                 # deployment name, bound into every certificate
//!
//! [alice]
//! address = "10.0.0.1:3000"
//! [bob]
//! address = "10.0.0.2:3001"
//! [dealer]
//! address = "10.0.0.3:3002"
//!
//! [[data_owner]]
//! name = "hospital"
//! role = "model-owner"
//! [[data_owner]]
//! name = "clinic"
//! role = "client"
//!
//! [limits]                      # optional
//! timeout_secs = 30             # connect, handshake and read timeout; heartbeats every third
//! max_frame_mib = 1024
//! max_requests = 32             # requests a party runs at once ("busy" past it)
//! pool = 2                      # batches of material made ahead per model and batch shape
//! # ... and the bounds on what a peer can make a service spend (see [`Limits`])
//!
//! [keys]                        # optional
//! validity_days = 365           # certificates keygen issues are valid this long (1..=3650)
//! ca_validity_days = 3650       # the CA keygen makes is valid this long (1..=7300)
//! revoked = ["sha256:…"]        # certificates refused by every service, without a restart
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::revocation::Fingerprint;
use super::Role;
use crate::error::{EngineError, Result};
use crate::roles::PartyId;
use crate::wire::frame::DEFAULT_MAX_FRAME_WORDS;

/// A service's place in the deployment file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// `host:port` the service listens on (IPv4, `[IPv6]` or a DNS name).
    pub address: String,
}

/// A data owner allowed to connect.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataOwnerEntry {
    /// Its name (a DNS label: lowercase letters, digits, '-').
    pub name: String,
    /// `model-owner` or `client`.
    pub role: String,
}

/// Optional limits: every resource a peer can make a service spend is bounded here (see
/// `docs/deploy.md`, "Limits"). Each is checked before anything is allocated for it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connect, handshake and read timeout in seconds (1..=300).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Largest frame accepted from a peer, in MiB (1..=65536).
    #[serde(default = "default_max_frame_mib")]
    pub max_frame_mib: u64,
    /// Requests a party runs at once; past it a data owner gets a "busy" error (1..=4096).
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Batches of preprocessed material the parties keep ready per model and batch shape,
    /// made in the background after a request of that shape (0..=64; 0: all on demand).
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// Rows one classify request may have (1..=2^32).
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Batches one classify request may have (1..=2^20).
    #[serde(default = "default_max_batches")]
    pub max_batches: u64,
    /// Requests one data owner runs at once, over all its connections (1..=4096; at most
    /// `max_requests` in effect); past it that owner gets "busy".
    #[serde(default = "default_max_requests_per_owner")]
    pub max_requests_per_owner: usize,
    /// Established (authenticated) connections a service holds, all peers together
    /// (1..=65536).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Established connections of one data owner (1..=65536; at most `max_connections` in
    /// effect).
    #[serde(default = "default_max_connections_per_owner")]
    pub max_connections_per_owner: usize,
    /// A data owner's connection without a request for this long is closed, heartbeats or not
    /// (1..=86400 seconds); its next request connects again.
    #[serde(default = "default_idle_secs")]
    pub idle_secs: u64,
    /// Connections being authenticated at once (1..=65536); past it new ones are closed unread.
    #[serde(default = "default_max_admitting")]
    pub max_admitting: usize,
    /// Connections being authenticated at once from one source address (1..=65536; at most
    /// `max_admitting` in effect).
    #[serde(default = "default_max_admitting_per_source")]
    pub max_admitting_per_source: usize,
    /// A new connection's first byte must arrive within this many seconds (1..=300; at most
    /// `timeout_secs` in effect).
    #[serde(default = "default_first_byte_secs")]
    pub first_byte_secs: u64,
    /// Slowest transfer accepted inside a frame, in KiB per second (1..=1048576): a frame that
    /// started arriving must have delivered `rate · (t - timeout)` bytes at every time `t`.
    #[serde(default = "default_min_rate_kib")]
    pub min_rate_kib: u64,
    /// Repeated refusals of one kind are logged once per interval and then summed up in one
    /// line (1..=3600 seconds).
    #[serde(default = "default_log_interval_secs")]
    pub log_interval_secs: u64,
    /// Batches one client may run per hour against models whose bounds are checked at run
    /// time (1..=2^32): each reveals to the client whether the batch stayed in range.
    #[serde(default = "default_range_checked_batches_per_hour")]
    pub range_checked_batches_per_hour: u64,
    /// Most words of material one request to the dealer may make it draw for one party
    /// (1..=2^40; default 2^28, 2 GiB). The dealer refuses a larger request; the parties ask
    /// for a batch's material in chunks of a quarter of it at most (and at most 2^24 words:
    /// `dealer::chunk_bound`), so only a single piece of material larger than
    /// the limit is refused.
    #[serde(default = "default_max_material_words")]
    pub max_material_words: u64,
}

fn default_pool() -> usize {
    2
}

fn default_max_requests() -> usize {
    32
}

fn default_timeout_secs() -> u64 {
    30
}

fn default_max_frame_mib() -> u64 {
    (DEFAULT_MAX_FRAME_WORDS * 8) >> 20
}

fn default_max_rows() -> u64 {
    1 << 20
}

fn default_max_batches() -> u64 {
    4096
}

fn default_max_requests_per_owner() -> usize {
    24
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_connections_per_owner() -> usize {
    64
}

fn default_idle_secs() -> u64 {
    300
}

fn default_max_admitting() -> usize {
    256
}

fn default_max_admitting_per_source() -> usize {
    32
}

fn default_first_byte_secs() -> u64 {
    5
}

fn default_min_rate_kib() -> u64 {
    64
}

fn default_log_interval_secs() -> u64 {
    10
}

fn default_range_checked_batches_per_hour() -> u64 {
    3600
}

fn default_max_material_words() -> u64 {
    // The dealer's own default, `DealerPolicy::DEFAULT_MAX_REQUEST_WORDS`.
    1 << 28
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_secs: default_timeout_secs(),
            max_frame_mib: default_max_frame_mib(),
            max_requests: default_max_requests(),
            pool: default_pool(),
            max_rows: default_max_rows(),
            max_batches: default_max_batches(),
            max_requests_per_owner: default_max_requests_per_owner(),
            max_connections: default_max_connections(),
            max_connections_per_owner: default_max_connections_per_owner(),
            idle_secs: default_idle_secs(),
            max_admitting: default_max_admitting(),
            max_admitting_per_source: default_max_admitting_per_source(),
            first_byte_secs: default_first_byte_secs(),
            min_rate_kib: default_min_rate_kib(),
            log_interval_secs: default_log_interval_secs(),
            range_checked_batches_per_hour: default_range_checked_batches_per_hour(),
            max_material_words: default_max_material_words(),
        }
    }
}

impl Limits {
    /// Check every limit's range; the error names the field, its value and the range.
    pub fn check(&self) -> Result<()> {
        let l = self;
        for (field, value, range) in [
            ("timeout_secs", l.timeout_secs, 1..=300),
            ("max_frame_mib", l.max_frame_mib, 1..=65536),
            ("pool", l.pool as u64, 0..=64),
            ("max_requests", l.max_requests as u64, 1..=4096),
            ("max_rows", l.max_rows, 1..=1 << 32),
            ("max_batches", l.max_batches, 1..=1 << 20),
            (
                "max_requests_per_owner",
                l.max_requests_per_owner as u64,
                1..=4096,
            ),
            ("max_connections", l.max_connections as u64, 1..=65536),
            (
                "max_connections_per_owner",
                l.max_connections_per_owner as u64,
                1..=65536,
            ),
            ("idle_secs", l.idle_secs, 1..=86400),
            ("max_admitting", l.max_admitting as u64, 1..=65536),
            (
                "max_admitting_per_source",
                l.max_admitting_per_source as u64,
                1..=65536,
            ),
            ("first_byte_secs", l.first_byte_secs, 1..=300),
            ("min_rate_kib", l.min_rate_kib, 1..=1 << 20),
            ("log_interval_secs", l.log_interval_secs, 1..=3600),
            (
                "range_checked_batches_per_hour",
                l.range_checked_batches_per_hour,
                1..=1 << 32,
            ),
            ("max_material_words", l.max_material_words, 1..=1 << 40),
        ] {
            if !range.contains(&value) {
                return Err(invalid(format!(
                    "limits.{field} = {value} is outside {}..={}",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(())
    }

    /// Requests one data owner runs at once, in effect (at most `max_requests`).
    pub fn requests_per_owner(&self) -> usize {
        self.max_requests_per_owner.min(self.max_requests)
    }

    /// Established connections of one data owner, in effect (at most `max_connections`).
    pub fn connections_per_owner(&self) -> usize {
        self.max_connections_per_owner.min(self.max_connections)
    }

    /// Connections being authenticated from one source, in effect (at most `max_admitting`).
    pub fn admitting_per_source(&self) -> usize {
        self.max_admitting_per_source.min(self.max_admitting)
    }

    /// The wait for a new connection's first byte, in effect (at most the timeout).
    pub fn first_byte(&self) -> Duration {
        Duration::from_secs(self.first_byte_secs.min(self.timeout_secs))
    }

    /// How long a data owner's connection may stay without a request.
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs)
    }

    /// The slowest transfer accepted inside a frame, in bytes per second.
    pub fn min_rate(&self) -> u64 {
        self.min_rate_kib.saturating_mul(1024)
    }

    /// The interval of rate-limited log lines.
    pub fn log_interval(&self) -> Duration {
        Duration::from_secs(self.log_interval_secs)
    }
}

/// The `[keys]` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    #[serde(default = "default_validity_days")]
    validity_days: u32,
    #[serde(default = "default_ca_validity_days")]
    ca_validity_days: u32,
    #[serde(default)]
    revoked: Vec<String>,
}

impl Default for RawKeys {
    fn default() -> Self {
        RawKeys {
            validity_days: default_validity_days(),
            ca_validity_days: default_ca_validity_days(),
            revoked: Vec::new(),
        }
    }
}

fn default_validity_days() -> u32 {
    365
}

fn default_ca_validity_days() -> u32 {
    3650
}

/// Key settings: how long the certificates `keygen` issues are valid, and the certificates
/// every service refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySettings {
    /// Days a role's certificate is valid from its issue (1..=3650; default 365).
    pub validity_days: u32,
    /// Days the deployment CA is valid from its making (1..=7300; default 3650). A role's
    /// certificate never outlives the CA that signed it.
    pub ca_validity_days: u32,
    /// Revoked certificates, by fingerprint (file order, no duplicates).
    pub revoked: Vec<Fingerprint>,
}

impl Default for KeySettings {
    fn default() -> Self {
        KeySettings {
            validity_days: default_validity_days(),
            ca_validity_days: default_ca_validity_days(),
            revoked: Vec::new(),
        }
    }
}

impl KeySettings {
    fn from_raw(raw: RawKeys) -> Result<KeySettings> {
        for (field, value, range) in [
            ("validity_days", raw.validity_days, 1..=3650),
            ("ca_validity_days", raw.ca_validity_days, 1..=7300),
        ] {
            if !range.contains(&value) {
                return Err(invalid(format!(
                    "keys.{field} = {value} is outside {}..={} (days)",
                    range.start(),
                    range.end()
                )));
            }
        }
        if raw.validity_days > raw.ca_validity_days {
            return Err(invalid(format!(
                "keys.validity_days = {} is longer than keys.ca_validity_days = {} (a \
                 certificate cannot outlive the CA that signs it)",
                raw.validity_days, raw.ca_validity_days
            )));
        }
        let mut revoked = Vec::with_capacity(raw.revoked.len());
        for (i, text) in raw.revoked.iter().enumerate() {
            let fp: Fingerprint = text.trim().parse().map_err(|e| match e {
                EngineError::Invalid(m) => invalid(format!("keys.revoked[{i}]: {m}")),
                other => other,
            })?;
            if !revoked.contains(&fp) {
                revoked.push(fp);
            }
        }
        Ok(KeySettings {
            validity_days: raw.validity_days,
            ca_validity_days: raw.ca_validity_days,
            revoked,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: String,
    alice: ServiceEntry,
    bob: ServiceEntry,
    dealer: ServiceEntry,
    #[serde(default)]
    data_owner: Vec<DataOwnerEntry>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    keys: RawKeys,
}

/// A validated deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The deployment's name (a DNS label).
    pub name: String,
    /// Alice's address.
    pub alice: String,
    /// Bob's address.
    pub bob: String,
    /// The dealer's address.
    pub dealer: String,
    /// The data owners allowed to connect, in file order.
    pub data_owners: Vec<Role>,
    /// Timeouts and frame limit.
    pub limits: Limits,
    /// Certificate validity and revoked certificates.
    pub keys: KeySettings,
}

fn invalid(msg: String) -> EngineError {
    EngineError::Invalid(msg)
}

/// Check that `name` is one DNS label (it becomes part of certificate names).
fn check_label(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} '{name}' is not a valid name (1-63 lowercase letters, digits or '-', not \
             starting or ending with '-')"
        )))
    }
}

/// Check a `host:port` address: an IPv4 address, a bracketed IPv6 address or a DNS name, and a
/// port in 1..=65535.
fn check_address(role: &str, address: &str) -> Result<()> {
    let bad = |why: &str| {
        invalid(format!(
            "{role}: bad address '{address}' ({why}; expected host:port)"
        ))
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("port must be 1-65535")),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| bad("invalid IPv6 address"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if dns_ok {
        Ok(())
    } else {
        Err(bad("host is neither an IP address nor a DNS name"))
    }
}

/// Check data owners' names: each one DNS label (it becomes part of certificate names), no
/// name twice.
pub fn check_data_owners(owners: &[Role]) -> Result<()> {
    let mut names = BTreeSet::new();
    for o in owners {
        let Some(name) = o.owner_name() else {
            return Err(invalid(format!("{o} is not a data owner")));
        };
        check_label("data owner name", name)?;
        if !names.insert(name) {
            return Err(invalid(format!(
                "duplicate data owner name '{name}' (names must be unique)"
            )));
        }
    }
    Ok(())
}

impl Deployment {
    /// Parse and validate a deployment file's text. Errors name the line (for syntax, missing
    /// and unknown fields) or the offending entry.
    pub fn parse(text: &str) -> Result<Deployment> {
        let raw: RawDeployment = toml::from_str(text)
            .map_err(|e| invalid(format!("deployment file: {}", e.to_string().trim_end())))?;
        check_label("deployment name", &raw.name)?;
        let mut addresses = BTreeSet::new();
        for (role, entry) in [
            ("alice", &raw.alice),
            ("bob", &raw.bob),
            ("dealer", &raw.dealer),
        ] {
            check_address(role, &entry.address)?;
            if !addresses.insert(entry.address.as_str()) {
                return Err(invalid(format!(
                    "{role}: address '{}' is already used by another service",
                    entry.address
                )));
            }
        }
        let mut data_owners = Vec::new();
        for o in &raw.data_owner {
            let role = match o.role.as_str() {
                "model-owner" => Role::ModelOwner(o.name.clone()),
                "client" => Role::Client(o.name.clone()),
                other => {
                    return Err(invalid(format!(
                        "data owner '{}': unknown role '{other}' (expected 'model-owner' or \
                         'client')",
                        o.name
                    )))
                }
            };
            data_owners.push(role);
        }
        check_data_owners(&data_owners)?;
        let l = raw.limits;
        l.check()?;
        let keys = KeySettings::from_raw(raw.keys)?;
        Ok(Deployment {
            name: raw.name,
            alice: raw.alice.address,
            bob: raw.bob.address,
            dealer: raw.dealer.address,
            data_owners,
            limits: l,
            keys,
        })
    }

    /// Read and validate a deployment file.
    pub fn load(path: &Path) -> Result<Deployment> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Deployment::parse(&text).map_err(|e| match e {
            EngineError::Invalid(m) => invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Every role of the deployment: alice, bob, the dealer, then the data owners.
    pub fn roles(&self) -> Vec<Role> {
        let mut r = vec![Role::Alice, Role::Bob, Role::Dealer];
        r.extend(self.data_owners.iter().cloned());
        r
    }

    /// The data owner named `name` of one kind (a model owner when `model_owner`, else a
    /// client), or the deployment's only data owner of that kind when `name` is `None`.
    pub fn data_owner(&self, name: Option<&str>, model_owner: bool) -> Result<Role> {
        let kind = if model_owner {
            PartyId::ModelOwner
        } else {
            PartyId::Client
        };
        let word = if model_owner { "model owner" } else { "client" };
        let names = |roles: &[&Role]| {
            let n: Vec<&str> = roles.iter().filter_map(|r| r.owner_name()).collect();
            n.join(", ")
        };
        let all: Vec<&Role> = self
            .data_owners
            .iter()
            .filter(|r| r.party_id() == kind)
            .collect();
        let found: Vec<&Role> = all
            .iter()
            .copied()
            .filter(|r| name.is_none() || r.owner_name() == name)
            .collect();
        match found[..] {
            [one] => Ok(one.clone()),
            [] => Err(invalid(format!(
                "deployment '{}': no {word}{} among its data owners ({word}s: {})",
                self.name,
                name.map(|n| format!(" named '{n}'")).unwrap_or_default(),
                if all.is_empty() {
                    "none".into()
                } else {
                    names(&all)
                }
            ))),
            _ => Err(invalid(format!(
                "deployment '{}': several {word}s ({}); say which one you are (--as NAME)",
                self.name,
                names(&found)
            ))),
        }
    }

    /// The address a service listens on.
    pub fn address(&self, role: &Role) -> Option<&str> {
        match role {
            Role::Alice => Some(&self.alice),
            Role::Bob => Some(&self.bob),
            Role::Dealer => Some(&self.dealer),
            _ => None,
        }
    }

    /// The read and handshake timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.limits.timeout_secs)
    }

    /// The largest frame accepted, in words.
    pub fn max_frame_words(&self) -> u64 {
        (self.limits.max_frame_mib << 20) / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"
[alice]
address = "127.0.0.1:3000"
[bob]
address = "[::1]:3001"
[dealer]
address = "dealer.example:3002"
[[data_owner]]
name = "hospital"
role = "model-owner"
[[data_owner]]
name = "clinic-7"
role = "client"
"#;

    fn err(text: &str) -> String {
        Deployment::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let d = Deployment::parse(GOOD).unwrap();
        assert_eq!(d.name, "demo");
        assert_eq!(d.bob, "[::1]:3001");
        assert_eq!(
            d.data_owners,
            vec![
                Role::ModelOwner("hospital".into()),
                Role::Client("clinic-7".into())
            ]
        );
        assert_eq!(d.limits, Limits::default());
        assert_eq!(d.keys, KeySettings::default());
        assert_eq!(d.keys.validity_days, 365);
        assert_eq!(d.timeout(), Duration::from_secs(30));
        assert_eq!(d.max_frame_words(), DEFAULT_MAX_FRAME_WORDS);
        assert_eq!(d.roles().len(), 5);
    }

    #[test]
    fn unknown_role_is_named() {
        let e = err(&GOOD.replace("role = \"client\"", "role = \"auditor\""));
        assert!(
            e.contains("data owner 'clinic-7': unknown role 'auditor'"),
            "{e}"
        );
        let e = err(&format!("{GOOD}\n[carol]\naddress = \"127.0.0.1:1\"\n"));
        assert!(e.contains("unknown field `carol`"), "{e}");
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let e = err(&GOOD.replace("clinic-7", "hospital"));
        assert!(e.contains("duplicate data owner name 'hospital'"), "{e}");
        let e = err(&GOOD.replace("[::1]:3001", "127.0.0.1:3000"));
        assert!(
            e.contains("bob: address '127.0.0.1:3000' is already used"),
            "{e}"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for (addr, why) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "port must be 1-65535"),
            ("127.0.0.1:70000", "port must be 1-65535"),
            ("[::g]:1", "invalid IPv6"),
            (
                "300.1.1.1:5",
                "host is neither an IP address nor a DNS name",
            ),
            ("bad host:5", "host is neither an IP address nor a DNS name"),
            (":5", "host is neither"),
        ] {
            let e = err(&GOOD.replace("127.0.0.1:3000", addr));
            assert!(
                e.contains(&format!("alice: bad address '{addr}' ({why}")),
                "{addr}: {e}"
            );
        }
    }

    #[test]
    fn missing_fields_and_bad_names_are_refused() {
        let e = err(&GOOD.replace("address = \"[::1]:3001\"", ""));
        assert!(e.contains("missing field `address`"), "{e}");
        let e = err(&GOOD.replace("[dealer]\naddress = \"dealer.example:3002\"", ""));
        assert!(e.contains("missing field `dealer`"), "{e}");
        let e = err(&GOOD.replace("name = \"demo\"", "name = \"Demo!\""));
        assert!(
            e.contains("deployment name 'Demo!' is not a valid name"),
            "{e}"
        );
        let e = err(&GOOD.replace("hospital", "a.b"));
        assert!(
            e.contains("data owner name 'a.b' is not a valid name"),
            "{e}"
        );
        let e = err(&format!("{GOOD}\n[limits]\ntimeout_secs = 0\n"));
        assert!(e.contains("limits.timeout_secs = 0 is outside"), "{e}");
        let e = err("name = ");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn key_settings_are_checked() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let d = Deployment::parse(&format!(
            "{GOOD}\n[keys]\nvalidity_days = 30\nrevoked = [\"{fp}\", \"{}\"]\n",
            fp.to_uppercase().replace("SHA256:", "sha256:")
        ))
        .unwrap();
        assert_eq!(d.keys.validity_days, 30);
        assert_eq!(d.keys.revoked.len(), 1, "duplicates are one entry");
        assert_eq!(d.keys.revoked[0].to_string(), fp);
        for (keys, want) in [
            (
                "validity_days = 0",
                "keys.validity_days = 0 is outside 1..=3650 (days)",
            ),
            (
                "validity_days = 36500",
                "keys.validity_days = 36500 is outside 1..=3650",
            ),
            (
                "ca_validity_days = 100",
                "keys.validity_days = 365 is longer than keys.ca_validity_days = 100",
            ),
            (
                "revoked = [\"ab12\"]",
                "keys.revoked[0]: 'ab12' is not a certificate fingerprint",
            ),
            ("expiry = 3", "unknown field `expiry`"),
        ] {
            let e = err(&format!("{GOOD}\n[keys]\n{keys}\n"));
            assert!(e.contains(want), "{keys}: {e}");
        }
    }
}

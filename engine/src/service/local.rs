//! A whole deployment inside one process: the dealer, alice and bob as the same services that
//! run across hosts ([`DealerService`], [`PartyService`]), each on its own threads, and data
//! owners as [`RemoteOwner`]s. Only the links differ: in-process socket pairs by default,
//! loopback TCP, or loopback mutual TLS with keys made in memory.
//!
//! ```
//! use engine::nn::{Layer, ModelBounds, Sequential};
//! use engine::service::local::{LocalConfig, LocalDeployment};
//! use engine::FixedPoint;
//!
//! let d = LocalDeployment::start(LocalConfig::default()).unwrap();
//! let model = Sequential::new(vec![Layer::linear(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![0.0, 0.0]).unwrap()]).unwrap();
//! let mut owner = d.model_owner().unwrap();
//! owner.upload("id", &model, &FixedPoint::default(), &ModelBounds::default(), &mut |_, _| {}).unwrap();
//! let mut client = d.client().unwrap();
//! let r = client.classify("id", &[0.1, 0.9, 0.8, 0.2], None, 2).unwrap();
//! assert_eq!(r.predictions, vec![1, 0]);
//! ```

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kernels::{backend_from_kind, BackendKind};
use rand_core::SeedableRng;

use crate::deploy::config::{check_data_owners, Limits};
use crate::deploy::{generate_keys, Deployment, KeySet, Role};
use crate::error::{EngineError, Result};
use crate::service::client::RemoteOwner;
use crate::service::dealer::DealerService;
use crate::service::net::{Listener, MemoryNet, Net};
use crate::service::party::PartyService;
use crate::transport::{PartyId, TlsEndpoint, TransportKind};

/// How to run a deployment in-process.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Compute backend of both parties.
    pub backend: BackendKind,
    /// In-process links (`Channels`), loopback TCP, or loopback mutual TLS.
    pub transport: TransportKind,
    /// Read timeout of every link (heartbeats every third of it).
    pub timeout: Duration,
    /// Requests a party runs at once.
    pub max_requests: usize,
    /// Batches of material made ahead per model and batch shape (0: all on demand).
    pub pool: usize,
    /// The dealer's limit on one request's material, in words per party
    /// (`limits.max_material_words`; the parties ask in chunks well below it).
    pub max_material_words: u64,
    /// Tune the process's allocator for large share buffers (see [`crate::alloc`]); on by
    /// default, process-wide.
    pub tune_allocator: bool,
    /// `Some(seed)` only in tests that compare runs bit for bit: the dealer's seeds and the data
    /// owners' share splitting come from it (set `pool` to 0 too, so no background work
    /// changes the order of requests). `None`: OS randomness.
    pub test_seed: Option<u64>,
    /// The data owners (at least one model owner and one client; names as in a deployment
    /// file): [`LocalDeployment::model_owner`] and [`LocalDeployment::client`] are the first of
    /// each kind, [`LocalDeployment::data_owner`] picks one by name.
    pub data_owners: Vec<Role>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            backend: BackendKind::Cpu,
            transport: TransportKind::Channels,
            timeout: Duration::from_secs(30),
            max_requests: 32,
            pool: crate::deploy::config::Limits::default().pool,
            max_material_words: crate::deploy::config::Limits::default().max_material_words,
            tune_allocator: true,
            test_seed: None,
            data_owners: vec![
                Role::ModelOwner("owner".into()),
                Role::Client("client".into()),
            ],
        }
    }
}

const NAME: &str = "in-process";

/// The transport endpoint of a model owner (`model_owner`) or of a client.
fn kind(model_owner: bool) -> PartyId {
    if model_owner {
        PartyId::ModelOwner
    } else {
        PartyId::Client
    }
}

/// A running in-process deployment (see the module documentation). Clones share the same
/// services; dropping the last clone (and every [`Computation`] made from it) stops them once
/// their open connections close.
#[derive(Clone)]
pub struct LocalDeployment {
    inner: Arc<Services>,
}

/// The services of a deployment and what they run on.
struct Services {
    deployment: Deployment,
    test_seed: Option<u64>,
    /// Data owner endpoints handed out so far (each seeded differently under a test seed).
    owners_made: std::sync::atomic::AtomicU64,
    backend: String,
    transport: TransportKind,
    network: Arc<MemoryNet>,
    keys: Option<KeySet>,
    parties: Vec<Arc<PartyService>>,
    dealer: Option<Arc<DealerService>>,
    stop: Arc<AtomicBool>,
    addresses: Vec<String>,
    _dirs: tempfile::TempDir,
}

impl LocalDeployment {
    /// Start the dealer, alice and bob (models kept in a temporary directory removed on drop).
    pub fn start(config: LocalConfig) -> Result<LocalDeployment> {
        let io = |e: std::io::Error| EngineError::Invalid(format!("in-process deployment: {e}"));
        if config.tune_allocator {
            crate::alloc::tune_allocator();
        }
        check_data_owners(&config.data_owners)?;
        for model_owner in [true, false] {
            if !config
                .data_owners
                .iter()
                .any(|r| r.party_id() == kind(model_owner))
            {
                return Err(EngineError::Invalid(format!(
                    "an in-process deployment needs a {}",
                    if model_owner { "model owner" } else { "client" }
                )));
            }
        }
        let tcp = config.transport != TransportKind::Channels;
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..3 {
            if tcp {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
                addresses.push(l.local_addr().map_err(io)?.to_string());
                listeners.push(Some(l));
            } else {
                addresses.push(format!("in-process.invalid:{}", 3000 + addresses.len()));
                listeners.push(None);
            }
        }
        let deployment = Deployment {
            name: NAME.into(),
            alice: addresses[0].clone(),
            bob: addresses[1].clone(),
            dealer: addresses[2].clone(),
            data_owners: config.data_owners.clone(),
            limits: Limits {
                timeout_secs: config.timeout.as_secs().max(1),
                max_requests: config.max_requests,
                pool: config.pool,
                max_material_words: config.max_material_words,
                ..Limits::default()
            },
            keys: Default::default(),
        };
        let keys = match config.transport {
            TransportKind::Tls => Some(generate_keys(NAME, &deployment.roles())?),
            _ => None,
        };
        let dirs = tempfile::tempdir().map_err(io)?;
        let backends = [
            backend_from_kind(config.backend)?,
            backend_from_kind(config.backend)?,
        ];
        let mut d = Services {
            deployment,
            test_seed: config.test_seed,
            owners_made: std::sync::atomic::AtomicU64::new(0),
            backend: backends[0].describe(),
            transport: config.transport,
            network: MemoryNet::new(),
            keys,
            parties: Vec::new(),
            dealer: None,
            stop: Arc::new(AtomicBool::new(false)),
            addresses: if tcp { addresses } else { Vec::new() },
            _dirs: dirs,
        };
        let dir = |who: &str| d._dirs.path().join(who);
        let mut listeners = listeners.into_iter();
        let mut listen = |net: &Net| -> Result<Listener> {
            match listeners.next().flatten() {
                Some(l) => Ok(Listener::Tcp(l)),
                None => net.listen(),
            }
        };
        for (index, (role, backend)) in [Role::Alice, Role::Bob]
            .into_iter()
            .zip(backends)
            .enumerate()
        {
            let net = d.net(role)?;
            let listener = listen(&net)?;
            let svc = PartyService::open(
                index,
                net,
                backend,
                &dir(if index == 0 { "alice" } else { "bob" }),
            )?;
            d.parties.push(svc.clone());
            let stop = d.stop.clone();
            std::thread::Builder::new()
                .name("party-accept".into())
                .spawn(move || svc.serve_until(listener, &stop))
                .map_err(io)?;
        }
        let net = d.net(Role::Dealer)?;
        let listener = listen(&net)?;
        let rng = match config.test_seed {
            Some(seed) => rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0xD3A1_E5ED),
            None => rand_chacha::ChaCha20Rng::from_entropy(),
        };
        let dealer = DealerService::open_with(net, &dir("dealer"), rng)?;
        d.dealer = Some(dealer.clone());
        let stop = d.stop.clone();
        std::thread::Builder::new()
            .name("dealer-accept".into())
            .spawn(move || dealer.serve_until(listener, &stop))
            .map_err(io)?;
        Ok(LocalDeployment { inner: Arc::new(d) })
    }

    /// The directory where party `index` (0: alice, 1: bob) keeps its model records (what an
    /// audit of the stored shares reads).
    pub fn party_dir(&self, index: usize) -> std::path::PathBuf {
        self.inner
            ._dirs
            .path()
            .join(if index == 0 { "alice" } else { "bob" })
    }

    /// The party services (alice, bob): a custom computation hands them its programs.
    pub(crate) fn party_services(&self) -> Vec<Arc<PartyService>> {
        self.inner.parties.clone()
    }

    /// Description of the parties' compute backend.
    pub fn backend_description(&self) -> &str {
        &self.inner.backend
    }

    /// The party services (alice, bob), for tests that hold their workers.
    #[cfg(test)]
    pub(crate) fn parties(&self) -> &[Arc<PartyService>] {
        &self.inner.parties
    }

    /// The dealer service, for tests that hold its workers.
    #[cfg(test)]
    pub(crate) fn dealer(&self) -> &Arc<DealerService> {
        self.inner.dealer.as_ref().expect("started")
    }

    /// The (first) model owner's endpoint (it uploads, deletes and receives correct counts).
    pub fn model_owner(&self) -> Result<RemoteOwner> {
        self.first(true)
    }

    /// The (first) client's endpoint (it classifies and receives its predictions).
    pub fn client(&self) -> Result<RemoteOwner> {
        self.first(false)
    }

    /// The endpoint of data owner `name` (a model owner when `model_owner`, else a client), or
    /// of the only one of that kind when `name` is `None` (as across hosts).
    pub fn data_owner(&self, name: Option<&str>, model_owner: bool) -> Result<RemoteOwner> {
        let role = self.inner.deployment.data_owner(name, model_owner)?;
        self.owner(role, if model_owner { 1 } else { 2 })
    }

    fn first(&self, model_owner: bool) -> Result<RemoteOwner> {
        let role = self
            .inner
            .deployment
            .data_owners
            .iter()
            .find(|r| r.party_id() == kind(model_owner))
            .cloned()
            .expect("checked at start");
        self.owner(role, if model_owner { 1 } else { 2 })
    }

    fn owner(&self, role: Role, salt: u64) -> Result<RemoteOwner> {
        let mut o = RemoteOwner::new(self.inner.net(role)?)?;
        if let Some(seed) = self.inner.test_seed {
            let n = self.inner.owners_made.fetch_add(1, Ordering::SeqCst);
            o.use_test_seed(seed ^ (salt + 2 * n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        Ok(o)
    }
}

impl Services {
    /// The endpoint of `role` in this deployment.
    fn net(&self, role: Role) -> Result<Net> {
        let d = self.deployment.clone();
        Ok(match (&self.keys, self.transport) {
            (Some(keys), _) => Net::with_tls(
                d,
                TlsEndpoint::new(
                    NAME,
                    role.clone(),
                    &keys.ca.cert_pem,
                    keys.credentials(&role),
                )?,
            ),
            (None, TransportKind::Tcp) => Net::insecure(d, role),
            _ => Net::in_memory(d, role, self.network.clone()),
        })
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        // The parties first: from now on a failure of their background work is the shutdown's.
        for p in &self.parties {
            p.shut_down();
        }
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops: the in-process network's queues close, TCP listeners get a
        // connection that finds the stop flag set.
        self.network.close();
        for a in &self.addresses {
            let _ = TcpStream::connect(a);
        }
        // No material made ahead may still run on the backend once the deployment is gone.
        for p in &self.parties {
            p.wait_background(Duration::from_secs(10));
        }
        // Every thread of the services lets go of them (their links closed above), so their
        // backends (a GPU device) are released here, not while the process exits under a
        // thread that still uses one. Bounded: a data owner that keeps its connection open
        // keeps that thread, and the wait ends after a few seconds.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let parties = std::mem::take(&mut self.parties);
        let dealer = self.dealer.take();
        let alone = |n: usize| n == 1;
        while std::time::Instant::now() < until
            && !(parties.iter().all(|p| alone(Arc::strong_count(p)))
                && dealer.as_ref().is_none_or(|d| alone(Arc::strong_count(d))))
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

//! Deployments: alice, bob and the dealer in this process ([`LocalDeployment`]), or across
//! hosts reached through a deployment file ([`RemoteDeployment`], made by `connect`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::deploy::Role;
use engine::service::access::DeploymentAccess;
use engine::{BackendKind, FixedPoint, LocalConfig, TransportKind};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::computation::Computation;
use crate::errors::{bad_input, IntoPy};
use crate::owner::Owner;
use crate::services::Services;

/// Alice, bob and the dealer as services in this process (the same services as across hosts),
/// with data owners named as in a deployment file.
///
/// Use it as a context manager (or call `close()`): leaving the block stops the services.
#[pyclass(frozen, module = "secure_serving")]
pub struct LocalDeployment {
    services: Arc<Services>,
    backend: String,
}

/// `name` as a backend.
fn backend_kind(name: &str) -> PyResult<BackendKind> {
    name.parse().map_err(|_| {
        bad_input(format!(
            "unknown backend '{name}' (expected 'cpu' or 'gpu')"
        ))
    })
}

#[pymethods]
impl LocalDeployment {
    /// Start alice, bob and the dealer in this process.
    ///
    /// backend: "cpu" or "gpu" (the parties' compute backend). transport: "channels"
    /// (in-process links), "tcp" or "tls" (loopback sockets, mutual TLS with keys made in
    /// memory). model_owners, clients: the data owners' names (default "hospital" and
    /// "clinic"). timeout: seconds a party waits for a peer. max_requests: requests the
    /// parties run at once (past it, Busy). pool: batches of dealer material made ahead per
    /// model and batch shape. seed: tests that compare runs bit for bit only.
    #[new]
    #[pyo3(signature = (backend = "cpu", transport = "channels", *, model_owners = None,
        clients = None, timeout = 30.0, max_requests = 32, pool = 2, seed = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: &str,
        transport: &str,
        model_owners: Option<Vec<String>>,
        clients: Option<Vec<String>>,
        timeout: f64,
        max_requests: usize,
        pool: usize,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let transport: TransportKind = transport.parse().py_err()?;
        if !(timeout.is_finite() && timeout >= 1.0) {
            return Err(bad_input(format!(
                "timeout must be at least 1 second, got {timeout}"
            )));
        }
        let mut data_owners: Vec<Role> = model_owners
            .unwrap_or_else(|| vec!["hospital".into()])
            .into_iter()
            .map(Role::ModelOwner)
            .collect();
        data_owners.extend(
            clients
                .unwrap_or_else(|| vec!["clinic".into()])
                .into_iter()
                .map(Role::Client),
        );
        let config = LocalConfig {
            backend: backend_kind(backend)?,
            transport,
            timeout: Duration::from_secs_f64(timeout),
            max_requests,
            pool,
            test_seed: seed,
            data_owners,
            ..LocalConfig::default()
        };
        let d = py
            .detach(|| engine::LocalDeployment::start(config))
            .py_err()?;
        Ok(LocalDeployment {
            backend: d.backend_description().to_string(),
            services: Services::new(d),
        })
    }

    /// The model owner `name` (the only one when None): it uploads, deletes and fetches
    /// correct counts.
    #[pyo3(signature = (name = None))]
    fn model_owner(&self, name: Option<&str>) -> PyResult<Owner> {
        self.owner(name, true)
    }

    /// The client `name` (the only one when None): it classifies and receives predictions.
    #[pyo3(signature = (name = None))]
    fn client(&self, name: Option<&str>) -> PyResult<Owner> {
        self.owner(name, false)
    }

    /// A custom secure computation on these services at `frac_bits` fractional bits (the
    /// first client opens it, the first model owner joins it).
    #[pyo3(signature = (frac_bits = 16))]
    fn computation(&self, py: Python<'_>, frac_bits: u32) -> PyResult<Computation> {
        let fx = FixedPoint::new(frac_bits).py_err()?;
        Computation::open(py, &self.services, fx)
    }

    /// The parties' compute backend, in words.
    #[getter]
    fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.services.closed()
    }

    /// Stop the services (after closing the data owners' connections); idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.services.close());
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyType>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { "closed" } else { "running" };
        format!("LocalDeployment({}, {state})", self.backend)
    }
}

impl LocalDeployment {
    /// A data owner of these services (see `model_owner` and `client`).
    fn owner(&self, name: Option<&str>, model_owner: bool) -> PyResult<Owner> {
        let o = self
            .services
            .running()?
            .data_owner(name, model_owner)
            .py_err()?;
        let o = Owner::new(o, Some(self.services.clone()));
        self.services.track(o.shared());
        Ok(o)
    }
}

/// A deployment across hosts, reached through its deployment file and this host's keys (see
/// `connect`).
#[pyclass(frozen, module = "secure_serving")]
pub struct RemoteDeployment {
    access: DeploymentAccess,
    as_name: Option<String>,
    name: String,
}

#[pymethods]
impl RemoteDeployment {
    /// The model owner `name` (default: `as_` when it names a model owner, else the
    /// deployment's only one).
    #[pyo3(signature = (name = None))]
    fn model_owner(&self, py: Python<'_>, name: Option<&str>) -> PyResult<Owner> {
        self.owner(py, name, true)
    }

    /// The client `name` (default: `as_` when it names a client, else the deployment's only
    /// one).
    #[pyo3(signature = (name = None))]
    fn client(&self, py: Python<'_>, name: Option<&str>) -> PyResult<Owner> {
        self.owner(py, name, false)
    }

    /// The deployment's name (from its file).
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Nothing to stop (the services run on their hosts); for symmetry with LocalDeployment.
    fn close(&self) {}

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _ty: Option<&Bound<'_, PyType>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "RemoteDeployment('{}', config='{}')",
            self.name,
            self.access.config.display()
        )
    }
}

impl RemoteDeployment {
    fn owner(&self, py: Python<'_>, name: Option<&str>, model_owner: bool) -> PyResult<Owner> {
        let d = self.access.deployment().py_err()?;
        let name = match (name, self.as_name.as_deref()) {
            (Some(n), _) => Some(n),
            (None, Some(me)) if d.data_owner(Some(me), model_owner).is_ok() => Some(me),
            _ => None,
        };
        let o = py
            .detach(|| self.access.owner(name, model_owner))
            .py_err()?;
        Ok(Owner::new(o, None))
    }
}

/// Reach a deployment across hosts: `config` is its deployment file, `keys` this host's key
/// directory (default: `keys` beside the file), `as_` the data owner this process is (needed
/// when the file names several of a kind), `insecure` plain TCP (loopback benchmarks only).
#[pyfunction]
#[pyo3(signature = (config, keys = None, as_ = None, insecure = false))]
pub fn connect(
    config: PathBuf,
    keys: Option<PathBuf>,
    as_: Option<String>,
    insecure: bool,
) -> PyResult<RemoteDeployment> {
    if !config.is_file() {
        return Err(bad_input(format!(
            "{}: no such deployment file",
            config.display()
        )));
    }
    let access = DeploymentAccess {
        config,
        keys,
        insecure,
    };
    let d = access.deployment().py_err()?;
    if let Some(me) = as_.as_deref() {
        if d.data_owners.iter().all(|r| r.owner_name() != Some(me)) {
            return Err(bad_input(format!(
                "{}: no data owner named '{me}'",
                access.config.display()
            )));
        }
    }
    Ok(RemoteDeployment {
        access,
        as_name: as_,
        name: d.name,
    })
}

//! How one host reaches a deployment across hosts: its deployment file, its key directory
//! (`keys` beside the file unless given), mutual TLS or plain TCP, and which of the file's
//! roles it plays (what the CLI's `--config`, `--keys`, `--insecure` and `--as` say, and the
//! Python bindings' `connect`).

use std::path::{Path, PathBuf};

use crate::deploy::{Deployment, Role};
use crate::error::{EngineError, Result};
use crate::service::client::RemoteOwner;
use crate::service::net::Net;

/// A deployment file and how to authenticate to the services it names.
#[derive(Clone, Debug)]
pub struct DeploymentAccess {
    /// The deployment file (TOML).
    pub config: PathBuf,
    /// Key directory written by `secure-serving keygen`; `None`: `keys` beside the file.
    pub keys: Option<PathBuf>,
    /// Plain TCP without authentication or encryption (loopback benchmarks only; every side of
    /// the deployment must say so).
    pub insecure: bool,
}

impl DeploymentAccess {
    /// Read and check the deployment file.
    pub fn deployment(&self) -> Result<Deployment> {
        Deployment::load(&self.config)
    }

    /// The key directory in use.
    pub fn keys_dir(&self) -> PathBuf {
        self.keys
            .clone()
            .unwrap_or_else(|| self.config.parent().unwrap_or(Path::new(".")).join("keys"))
    }

    /// The endpoint of `role`. Under TLS its revocation list follows the deployment file
    /// (read again when the file changes).
    pub fn net(&self, role: Role) -> Result<Net> {
        let d = self.deployment()?;
        if self.insecure {
            tracing::warn!(%role, "insecure: plain TCP, no authentication, no encryption");
            Net::new(d, role, None)
        } else {
            let net = Net::new(d, role, Some(&self.keys_dir()))?;
            if let Some(r) = net.revocations() {
                r.watch(&self.config);
            }
            Ok(net)
        }
    }

    /// The endpoint of data owner `name` (a model owner when `model_owner`, else a client), or
    /// of the deployment's only data owner of that kind when `name` is `None`.
    pub fn owner_net(&self, name: Option<&str>, model_owner: bool) -> Result<Net> {
        let role = self
            .deployment()?
            .data_owner(name, model_owner)
            .map_err(|e| prefixed(&self.config, e))?;
        self.net(role)
    }

    /// Connect as data owner `name` (see [`Self::owner_net`]); the first request connects.
    pub fn owner(&self, name: Option<&str>, model_owner: bool) -> Result<RemoteOwner> {
        RemoteOwner::new(self.owner_net(name, model_owner)?)
    }
}

/// `e` with the deployment file's path in front of its message (same kind).
fn prefixed(config: &Path, e: EngineError) -> EngineError {
    match e {
        EngineError::Invalid(m) => EngineError::Invalid(format!("{}: {m}", config.display())),
        other => other,
    }
}

//! The commands of a deployment across hosts: `dealer`, `party`, `upload`, `classify --remote`,
//! `score`, `models`, `delete`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use kernels::{backend_from_kind, BackendKind};

use engine::deploy::Role;
use engine::error::{EngineError, Result};
use engine::service::access::DeploymentAccess;
use engine::service::client::RemoteOwner;
use engine::service::dealer::DealerService;
use engine::service::net::Net;
use engine::service::party::PartyService;

/// Where the deployment is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// The deployment file (TOML) naming the services and data owners.
    #[arg(long)]
    pub config: PathBuf,
    /// Key directory written by `secure-serving keygen` (default: `keys` beside the config).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Plain TCP without authentication or encryption (loopback benchmarks only; every side of
    /// the deployment must say so).
    #[arg(long)]
    pub insecure: bool,
}

impl DeployArgs {
    /// The same, as the engine takes it.
    pub fn access(&self) -> DeploymentAccess {
        DeploymentAccess {
            config: self.config.clone(),
            keys: self.keys.clone(),
            insecure: self.insecure,
        }
    }

    /// The endpoint of `role` (see [`DeploymentAccess::net`]).
    pub fn net(&self, role: Role) -> Result<Net> {
        self.access().net(role)
    }

    /// The endpoint of data owner `name` (see [`DeploymentAccess::owner_net`]).
    pub fn owner_net(&self, name: Option<&str>, model_owner: bool) -> Result<Net> {
        self.access().owner_net(name, model_owner)
    }
}

impl DeployArgs {
    /// The endpoint of the data owner `name` of either kind; without a name, the deployment's
    /// only data owner, else its only model owner, else its only client — and when that does
    /// not settle it, an error asking for `--as` with the names to choose from.
    pub fn any_owner_net(&self, name: Option<&str>) -> Result<Net> {
        let d = self.access().deployment()?;
        if let Some(n) = name {
            let role = d
                .data_owners
                .iter()
                .find(|r| matches!(r, Role::ModelOwner(x) | Role::Client(x) if x == n))
                .cloned()
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "{}: no data owner named '{n}' in the deployment",
                        self.config.display()
                    ))
                })?;
            return self.net(role);
        }
        let owners: Vec<&Role> = d
            .data_owners
            .iter()
            .filter(|r| matches!(r, Role::ModelOwner(_)))
            .collect();
        let clients: Vec<&Role> = d
            .data_owners
            .iter()
            .filter(|r| matches!(r, Role::Client(_)))
            .collect();
        match (&owners[..], &clients[..]) {
            ([one], _) | ([], [one]) => self.net((*one).clone()),
            ([], []) => Err(EngineError::Invalid(format!(
                "{}: the deployment has no data owner",
                self.config.display()
            ))),
            _ => {
                let names: Vec<String> = d
                    .data_owners
                    .iter()
                    .filter_map(|r| match r {
                        Role::ModelOwner(n) | Role::Client(n) => Some(n.clone()),
                        _ => None,
                    })
                    .collect();
                Err(EngineError::Invalid(format!(
                    "{}: several data owners ({}); say which one asks with --as NAME",
                    self.config.display(),
                    names.join(", ")
                )))
            }
        }
    }
}

/// On SIGHUP, read the deployment file's revocation list again at once (it is also read again
/// within a second of a change, at the next handshake). Without TLS, SIGHUP is ignored.
fn reload_on_sighup(net: &Net) -> Result<()> {
    let revocations = net.revocations();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| EngineError::Invalid(format!("cannot handle SIGHUP: {e}")))?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match revocations.as_ref().map(|r| r.reload()) {
                    Some(Ok(n)) => {
                        tracing::info!(revoked = n, "SIGHUP: revocation list reloaded")
                    }
                    Some(Err(e)) => tracing::warn!(
                        error = %e,
                        "SIGHUP: the deployment file cannot be read; the previous revocation \
                         list stays in force"
                    ),
                    None => tracing::info!("SIGHUP: no TLS, nothing to reload"),
                }
            }
        })
        .map_err(|e| EngineError::Invalid(format!("cannot start the SIGHUP thread: {e}")))?;
    Ok(())
}

/// `secure-serving dealer`: serve until killed.
pub fn dealer(args: &DeployArgs, data_dir: &Path) -> Result<()> {
    let net = args.net(Role::Dealer)?;
    reload_on_sighup(&net)?;
    let listener = net.listen()?;
    let svc = DealerService::open(net, data_dir)?;
    println!(
        "dealer listening on {} ({} models: {:?})",
        listener.describe(),
        svc.models().len(),
        svc.models()
    );
    svc.serve(listener)
}

/// `secure-serving party`: serve until killed.
pub fn party(args: &DeployArgs, role: &str, data_dir: &Path, backend: BackendKind) -> Result<()> {
    let (index, role) = match role {
        "alice" => (0, Role::Alice),
        "bob" => (1, Role::Bob),
        other => {
            return Err(EngineError::Invalid(format!(
                "--role must be alice or bob, not '{other}'"
            )))
        }
    };
    let net = args.net(role.clone())?;
    reload_on_sighup(&net)?;
    let listener = net.listen()?;
    let svc = PartyService::open(index, net, backend_from_kind(backend)?, data_dir)?;
    println!(
        "{role} listening on {} ({} models)",
        listener.describe(),
        svc.models().len()
    );
    Arc::clone(&svc).serve(listener)
}

/// Connect as a data owner.
pub fn owner(args: &DeployArgs, name: Option<&str>, model_owner: bool) -> Result<RemoteOwner> {
    args.access().owner(name, model_owner)
}

/// `secure-serving upload`: share a model to the deployment under `name`.
pub fn upload(
    args: &DeployArgs,
    as_name: Option<&str>,
    name: &str,
    model: &crate::options::ModelArgs,
) -> Result<()> {
    engine::wire::control::check_model_name(name)?;
    let loaded = model.load()?;
    let mut o = owner(args, as_name, true)?;
    let (plan, stats) = o.upload(
        name,
        loaded.source.as_ref(),
        &loaded.fixed,
        &loaded.bounds,
        &mut |_, _| {},
    )?;
    if let Some(r) = &plan.range {
        println!("{}", r.summary());
    }
    println!(
        "uploaded '{name}' as {}: {} layers, input {:?}, {} classes, {:.2} s, {:.1} MB sent",
        o.role(),
        plan.layers.len(),
        plan.input_shape(),
        plan.out_features(),
        stats.seconds,
        stats.bytes_sent as f64 / 1e6
    );
    Ok(())
}

/// `secure-serving models`: list (or delete one).
pub fn models(args: &DeployArgs, as_name: Option<&str>, delete: Option<&str>) -> Result<()> {
    let mut o = match delete {
        Some(_) => owner(args, as_name, true)?,
        None => RemoteOwner::new(args.any_owner_net(as_name)?)?,
    };
    if let Some(name) = delete {
        o.delete(name)?;
        println!("deleted '{name}' (alice, bob and the dealer)");
        return Ok(());
    }
    let list = o.models()?;
    if list.is_empty() {
        println!("no models are served to {}", o.role());
    }
    for m in list {
        let mut line = m.name.clone();
        if let Some(owner) = &m.owner {
            line.push_str(&format!("  owner {owner}"));
        }
        line.push_str(&format!(
            "  input {:?}  {} classes",
            m.input_shape, m.classes
        ));
        if let Some(p) = m.parameters {
            line.push_str(&format!("  {p} parameters"));
        }
        line.push_str(&format!(
            "  {} fractional bits  |x| <= {}",
            m.frac_bits, m.input_bound
        ));
        if m.range_checked {
            line.push_str("  range-checked");
        }
        if let Some(n) = m.out_of_range {
            line.push_str(&format!("  {n} batches out of range"));
        }
        println!("{line}");
    }
    Ok(())
}

/// `secure-serving classify --remote`: the client's side.
#[allow(clippy::too_many_arguments)]
pub fn classify(
    args: &DeployArgs,
    as_name: Option<&str>,
    name: &str,
    input: &str,
    labels: Option<&str>,
    batch: usize,
    output: Option<engine::io::OutputFile>,
    json: bool,
) -> Result<()> {
    let mut o = owner(args, as_name, false)?;
    let start = std::time::Instant::now();
    let info = o.model_info(name)?;
    let (n, data) = engine::io::load_inputs(input, &info.input_shape)?;
    if n == 0 {
        return Err(EngineError::Format(format!("{input}: no input rows")));
    }
    let labels = match labels {
        Some(p) => Some(crate::options::load_checked_labels(p, n, info.classes)?),
        None => None,
    };
    let width: usize = info.input_shape.iter().product();
    engine::nn::range::check_inputs(&data, width, info.input_bound)
        .map_err(|e| EngineError::Range(format!("{input}: {e}")))?;
    let r = o.classify(name, &data, labels.as_deref(), batch)?;
    let path = match output {
        Some(out) => {
            let p = out.path().display().to_string();
            out.commit_predictions(&r.predictions)?;
            Some(p)
        }
        None => None,
    };
    let s = &r.stats;
    if json {
        let v = serde_json::json!({
            "request": s.request.to_string(),
            "model": name,
            "inputs": n,
            "predictions_path": path,
            "predictions": if path.is_none() { Some(&r.predictions) } else { None },
            "labels": labels.is_some(),
            "seconds": s.seconds,
            "seconds_with_setup": start.elapsed().as_secs_f64(),
            "client_bytes_sent": s.bytes_sent,
            "client_bytes_received": s.bytes_received,
            "party_rounds": s.party_rounds,
            "party_bytes_sent": s.party_bytes,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "classified {n} inputs with '{name}' in {:.3} s (request {})",
        s.seconds, s.request
    );
    println!(
        "traffic: client sent {:.2} MB, received {:.2} MB; alice {} rounds {:.2} MB, bob {} rounds {:.2} MB",
        s.bytes_sent as f64 / 1e6,
        s.bytes_received as f64 / 1e6,
        s.party_rounds[0],
        s.party_bytes[0] as f64 / 1e6,
        s.party_rounds[1],
        s.party_bytes[1] as f64 / 1e6
    );
    match path {
        Some(p) => println!("predictions written to {p} (revealed to this client only)"),
        None => println!(
            "predictions: {:?} (revealed to this client only)",
            r.predictions
        ),
    }
    if labels.is_some() {
        let owners = args
            .access()
            .deployment()?
            .data_owners
            .iter()
            .filter(|r| matches!(r, Role::ModelOwner(_)))
            .count();
        println!(
            "the correct count is kept for the model owner: secure-serving score --request {} \
             --config {}{}",
            s.request,
            args.config.display(),
            if owners > 1 { " --as MODEL_OWNER" } else { "" }
        );
    }
    Ok(())
}

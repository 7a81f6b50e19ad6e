//! The `secure-serving` command line: `classify`, `demo`, `bench`, `keygen`, and the commands of
//! a deployment across hosts (`dealer`, `party`, `upload`, `score`, `models`; see [`crate::remote`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kernels::BackendKind;

use engine::deploy::keys::{add_keys, find_role, renew_keys, summarize_file};
use engine::deploy::{write_keys, Deployment};
use engine::error::{EngineError, Result};
use engine::io::OutputFile;
use engine::transport::TransportKind;

use crate::options::ModelArgs;

/// Secure two-party inference with a dealer (alice, bob, crypto provider), in-process.
#[derive(Parser, Debug)]
#[command(name = "secure-serving", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Classify a data set with a shared model; reveal only the accuracy to the model owner.
    /// In-process with `--model`; against a deployment with `--config` and `--remote NAME`.
    Classify {
        /// The model and how the owner encodes it (in-process runs).
        #[command(flatten)]
        model: ModelArgs,
        /// Inputs `.npy`, f32/f64 `[N, features]`, or `[N, C, H, W]` for image models.
        #[arg(long)]
        input: String,
        /// Labels `.npy`, int64 `[N]`.
        #[arg(long)]
        labels: Option<String>,
        /// Rows per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Compute backend (in-process runs).
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// Write the client-revealed predictions (int64 `.npy`).
        #[arg(long)]
        output: Option<String>,
        /// How the in-process parties talk: `channels`, loopback `tcp` (unencrypted) or `tls`.
        #[arg(long, default_value = "channels")]
        transport: TransportKind,
        /// Batches of preprocessed material each party keeps ready in the background (0: all
        /// material on demand, inside each request).
        #[arg(long, default_value_t = engine::deploy::config::Limits::default().pool)]
        pool: usize,
        /// Classify with model NAME served by the deployment given with --config.
        #[arg(long, requires = "config")]
        remote: Option<String>,
        /// The deployment file (with --remote).
        #[arg(long, requires = "remote")]
        config: Option<PathBuf>,
        /// Key directory (with --remote; default: `keys` beside the config).
        #[arg(long, requires = "remote")]
        keys: Option<PathBuf>,
        /// Plain TCP to the parties (with --remote; loopback benchmarks only).
        #[arg(long, requires = "remote")]
        insecure: bool,
        /// Which client of the deployment this is (with --remote; default: its only client).
        #[arg(long = "as", requires = "remote")]
        as_name: Option<String>,
        /// Print one JSON object (predictions path, request id, timings, traffic) instead of
        /// text (with --remote).
        #[arg(long, requires = "remote")]
        json: bool,
    },
    /// Run the dealer (crypto provider) of a deployment until killed.
    Dealer {
        /// Deployment and keys.
        #[command(flatten)]
        deploy: crate::remote::DeployArgs,
        /// Where the dealer keeps uploaded models' mask records.
        #[arg(long, default_value = "dealer-data")]
        data_dir: PathBuf,
    },
    /// Run a compute party (alice or bob) of a deployment until killed.
    Party {
        /// `alice` or `bob`.
        #[arg(long)]
        role: String,
        /// Deployment and keys.
        #[command(flatten)]
        deploy: crate::remote::DeployArgs,
        /// Where the party keeps its shares of uploaded models.
        #[arg(long)]
        data_dir: PathBuf,
        /// Compute backend.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
    },
    /// Upload a model to a deployment (the model owner): its shares are stored by alice and
    /// bob under NAME and served until deleted.
    Upload {
        /// The model and how it is encoded.
        #[command(flatten)]
        model: ModelArgs,
        /// The name clients classify with.
        #[arg(long)]
        name: String,
        /// Deployment and keys.
        #[command(flatten)]
        deploy: crate::remote::DeployArgs,
        /// Which model owner of the deployment this is (default: its only model owner).
        #[arg(long = "as")]
        as_name: Option<String>,
    },
    /// Fetch the correct count of a classify request made with labels (the model owner only).
    Score {
        /// The classify request's id (printed by `classify --remote`).
        #[arg(long)]
        request: u64,
        /// Deployment and keys.
        #[command(flatten)]
        deploy: crate::remote::DeployArgs,
        /// Which model owner of the deployment this is (default: its only model owner).
        #[arg(long = "as")]
        as_name: Option<String>,
    },
    /// List the models a deployment serves.
    Models {
        /// Deployment and keys.
        #[command(flatten)]
        deploy: crate::remote::DeployArgs,
        /// Which data owner asks (default: the only model owner, else the only client).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// Delete this model (its owner only) instead of listing.
        #[arg(long)]
        delete: Option<String>,
    },
    /// The tutorial on an embedded default: Linear(1,1), one input, one label.
    Demo {
        /// Compute backend.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// How the in-process parties talk: `channels`, loopback `tcp` (unencrypted) or `tls`.
        #[arg(long, default_value = "channels")]
        transport: TransportKind,
    },
    /// Write a deployment CA and one certificate and key per role and data owner; or, with the
    /// existing CA, keys for a data owner added to the deployment file (`--add`) or new keys for
    /// one role (`--renew`); or print a certificate's fingerprint to revoke it
    /// (`--fingerprint`).
    #[command(group(clap::ArgGroup::new("mode").args(["force", "add", "renew", "fingerprint"])))]
    Keygen {
        /// The deployment file (TOML) naming the services and data owners.
        #[arg(long, required_unless_present = "fingerprint")]
        deployment: Option<PathBuf>,
        /// Directory to write `ca.pem`, `ca.key` and `<role>.pem` / `<role>.key` into.
        #[arg(long, required_unless_present = "fingerprint")]
        out: Option<PathBuf>,
        /// Replace every existing key, the CA's included (otherwise refuse to overwrite any).
        #[arg(long)]
        force: bool,
        /// Issue keys, signed by the existing CA in --out (`ca.key` needed), to every role of
        /// the deployment file that has none there; other keys are left as they are.
        #[arg(long)]
        add: bool,
        /// Issue new keys to ROLE (`alice`, `bob`, `dealer` or a data owner's name), signed by
        /// the existing CA in --out (`ca.key` needed); other keys are left as they are.
        /// Repeatable.
        #[arg(long, value_name = "ROLE")]
        renew: Vec<String>,
        /// Print the SHA-256 fingerprint of the certificate in this PEM file (what the
        /// deployment file's `[keys] revoked` lists), with its names and validity.
        #[arg(long, value_name = "CERT.pem", conflicts_with_all = ["deployment", "out"])]
        fingerprint: Option<PathBuf>,
    },
    /// Load generator against a running deployment: concurrent clients classify in a loop;
    /// reports latency percentiles, throughput, traffic, errors and wrong answers.
    BenchService {
        /// Options.
        #[command(flatten)]
        args: crate::bench_service::BenchServiceArgs,
    },
    /// Hostile load against a running deployment (robustness tests, scripts/attack-bench.sh):
    /// pre-authentication sockets, slow requests, idle links, oversized requests.
    Attack {
        /// Options.
        #[command(flatten)]
        args: crate::attack::AttackArgs,
    },
    /// Benchmarks: GEMM vs MAC peak, secure matmul vs GEMM, comparisons, VGG16 head.
    Bench {
        /// Compute backend.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// Small shapes (seconds instead of minutes).
        #[arg(long)]
        quick: bool,
        /// Run only the CNN benchmarks: VGG16 (CIFAR-10 shape, batch 1 and 64) and ResNet-18
        /// (CIFAR-10 shape, batch 1 and 8); the full run includes them.
        #[arg(long)]
        cnn: bool,
        /// Also run torchvision's whole VGG16 and ResNet-18 at 224x224, batch 1 (138 M
        /// parameters; minutes and about 14 GB of memory).
        #[arg(long)]
        vgg16_224: bool,
    },
}

/// Keep GPU drivers from printing noise on stderr in successful runs: without a desktop session
/// (`XDG_RUNTIME_DIR` unset), Mesa's implicit device-select Vulkan layer tries to reach a Wayland
/// display and complains on every run. It only reorders adapters for a display, which this
/// program does not use (it picks its adapter itself), so it is disabled unless the user set
/// `NODEVICE_SELECT` or has a session. Call at the start of `main`, before any thread exists.
pub fn quiet_gpu_driver() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// Run the CLI.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { backend, transport } => crate::local::demo(backend, transport).map(|_| ()),
        Command::Bench {
            backend,
            quick,
            cnn,
            vgg16_224,
        } => crate::bench::run(backend, quick, cnn, vgg16_224),
        Command::Keygen {
            deployment,
            out,
            force,
            add,
            renew,
            fingerprint,
        } => keygen(deployment, out, force, add, &renew, fingerprint),
        Command::Classify {
            model,
            input,
            labels,
            batch,
            backend,
            output,
            transport,
            pool,
            remote,
            config,
            keys,
            insecure,
            as_name,
            json,
        } => {
            // Everything that can be refused is refused before the model is shared.
            if batch == 0 {
                return Err(EngineError::Invalid("--batch must be at least 1".into()));
            }
            let out = match &output {
                Some(o) => {
                    for (flag, other) in [
                        ("--input", Some(&input)),
                        ("--labels", labels.as_ref()),
                        ("--model", model.model.as_ref()),
                        ("--calibrate", model.calibrate.as_ref()),
                    ] {
                        if let Some(other) = other {
                            if same_file(o, other) {
                                return Err(EngineError::Invalid(format!(
                                    "--output {o} is the same file as {flag} {other}; it would be overwritten"
                                )));
                            }
                        }
                    }
                    Some(OutputFile::create(o)?)
                }
                None => None,
            };
            if let (Some(name), Some(config)) = (remote, config) {
                if model.model.is_some() {
                    return Err(EngineError::Invalid(
                        "--model applies to in-process runs; with --remote the deployment serves the model".into(),
                    ));
                }
                let deploy = crate::remote::DeployArgs {
                    config,
                    keys,
                    insecure,
                };
                return crate::remote::classify(
                    &deploy,
                    as_name.as_deref(),
                    &name,
                    &input,
                    labels.as_deref(),
                    batch,
                    out,
                    json,
                );
            }
            crate::local::classify(
                &model,
                &input,
                labels.as_deref(),
                batch,
                backend,
                transport,
                pool,
                out,
            )
        }
        Command::Dealer { deploy, data_dir } => crate::remote::dealer(&deploy, &data_dir),
        Command::Party {
            role,
            deploy,
            data_dir,
            backend,
        } => crate::remote::party(&deploy, &role, &data_dir, backend),
        Command::Upload {
            model,
            name,
            deploy,
            as_name,
        } => crate::remote::upload(&deploy, as_name.as_deref(), &name, &model),
        Command::Score {
            request,
            deploy,
            as_name,
        } => {
            let mut o = crate::remote::owner(&deploy, as_name.as_deref(), true)?;
            let c = o.score(request)?;
            println!(
                "request {request}: {c} correct  [revealed to {} only]",
                o.role()
            );
            Ok(())
        }
        Command::Models {
            deploy,
            as_name,
            delete,
        } => crate::remote::models(&deploy, as_name.as_deref(), delete.as_deref()),
        Command::BenchService { args } => crate::bench_service::run(&args).map(|_| ()),
        Command::Attack { args } => crate::attack::main(&args),
    }
}

/// `secure-serving keygen` (see [`Command::Keygen`]).
fn keygen(
    deployment: Option<PathBuf>,
    out: Option<PathBuf>,
    force: bool,
    add: bool,
    renew: &[String],
    fingerprint: Option<PathBuf>,
) -> Result<()> {
    if let Some(cert) = fingerprint {
        let s = summarize_file(&cert)?;
        println!("{}", s.fingerprint);
        println!(
            "  {}: {}, valid {} to {} (UTC)",
            cert.display(),
            s.names.join(", "),
            s.not_before.date(),
            s.not_after.date()
        );
        println!(
            "  to revoke it, add \"{}\" to `revoked` under [keys] in the deployment file on \
             every host (services reload it within a second, or at once on SIGHUP)",
            s.fingerprint
        );
        return Ok(());
    }
    let (Some(deployment), Some(out)) = (deployment, out) else {
        return Err(EngineError::Invalid(
            "keygen needs --deployment FILE and --out DIR".into(),
        ));
    };
    let d = Deployment::load(&deployment)?;
    if add || !renew.is_empty() {
        let issued = if add {
            add_keys(&d, &out)?
        } else {
            let roles = renew
                .iter()
                .map(|r| find_role(&d, r))
                .collect::<Result<Vec<_>>>()?;
            renew_keys(&d, &out, &roles)?
        };
        if issued.is_empty() {
            println!(
                "deployment '{}': every role already has keys in {}; nothing written",
                d.name,
                out.display()
            );
        }
        for i in &issued {
            println!(
                "{}: new certificate and key, valid {} to {} (UTC), signed by {}",
                i.role,
                i.summary.not_before.date(),
                i.summary.not_after.date(),
                out.join("ca.pem").display()
            );
            println!("  {}\n  {}", i.cert.display(), i.key.display());
            println!("  fingerprint {}", i.summary.fingerprint);
        }
        if !issued.is_empty() {
            println!(
                "give each only to its holder (with ca.pem); {}",
                if add {
                    "alice and bob accept a new data owner once restarted with the new \
                     deployment file"
                } else {
                    "a data owner uses its new keys from its next command, a service once \
                     restarted; revoke the old certificate in the deployment file if its key \
                     may have leaked"
                }
            );
        }
        return Ok(());
    }
    let files = write_keys(&d, &out, force)?;
    println!(
        "deployment '{}': wrote a CA and {} certificates to {}, valid {} days (the CA {}); keep \
         ca.key offline; give each service and data owner only ca.pem and its own .pem and .key",
        d.name,
        d.roles().len(),
        out.display(),
        d.keys.validity_days,
        d.keys.ca_validity_days
    );
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// Whether two paths name the same existing file (through links and relative paths).
fn same_file(a: &str, b: &str) -> bool {
    // The same path after resolving links and `..`, or (hard links) the same inode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if (x.dev(), x.ino()) == (y.dev(), y.ino()) {
                return true;
            }
        }
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

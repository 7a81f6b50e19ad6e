//! The `secure-serving` command line: `classify`, `demo`, `bench`, `keygen`, and the commands of
//! a deployment across hosts (`dealer`, `party`, `upload`, `score`, `models`; see [`crate::remote`]).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kernels::BackendKind;

use engine::deploy::{write_keys, Deployment};
use engine::error::{EngineError, Result};
use engine::fixed::FixedPoint;
use engine::io::{
    import_onnx, load_inputs, load_labels, load_safetensors_model_with, ModelFile, OutputFile,
    UnusedTensors,
};
use engine::nn::plain::Sequential;
use engine::nn::range::{calibrate, check_inputs, ModelBounds, DEFAULT_INPUT_BOUND};
use engine::nn::source::{to_sequential, ModelSource};
use engine::nn::{check_labels, ClassifyOptions, ClassifyReport, SecureClassifier};
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::session::{Session, SessionConfig};
use engine::transport::{PartyId, TransportKind};

/// Secure two-party inference with a dealer (alice, bob, crypto provider), in-process.
#[derive(Parser, Debug)]
#[command(name = "secure-serving", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// A model file and how the model owner encodes and bounds it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model: an ONNX file (`.onnx`, exported with `torch.onnx.export`), or a
    /// safetensors state dict (needs `--arch`).
    #[arg(long)]
    pub model: Option<String>,
    /// For safetensors: layer list in PyTorch order (e.g. `linear,relu,dropout,linear`),
    /// or a preset: `vgg16-head`, `vgg16` or `resnet18` (torchvision's whole VGG16 or
    /// ResNet-18, 3x224x224 inputs; `vgg16:SIZE`, `resnet18:SIZE` for 3xSIZExSIZE).
    #[arg(long)]
    pub arch: Option<String>,
    /// Tensor-name prefix (e.g. `classifier.`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Fixed-point fractional bits.
    #[arg(long, default_value_t = 16)]
    pub frac_bits: u32,
    /// The input bound the model accepts: every feature must satisfy |x| <= this (the client
    /// checks its rows; the model owner's range analysis proves no overflow within it).
    #[arg(long, default_value_t = DEFAULT_INPUT_BOUND, value_parser = positive_number)]
    pub input_bound: f64,
    /// Calibrate hidden-layer bounds on this `.npy` (the model owner's representative data)
    /// and check them inside the secure computation instead of worst-case bounds.
    #[arg(long)]
    pub calibrate: Option<String>,
    /// Factor applied to the calibrated maxima.
    #[arg(long, default_value_t = 2.0)]
    pub calibration_margin: f64,
    /// Accept a model file with tensors (under --prefix) that --arch does not use.
    #[arg(long)]
    pub allow_unused_tensors: bool,
}

/// A model owner's model, ready to share.
pub struct LoadedModel {
    /// The model, read (or mapped) from its file.
    pub source: Box<dyn ModelSource>,
    /// The declared bounds (calibrated when asked).
    pub bounds: ModelBounds,
    /// The encoding.
    pub fixed: FixedPoint,
}

impl ModelArgs {
    /// Check the options, read the model and (when asked) calibrate its bounds. `inputs`: the
    /// client's input file, if it is the same process (checked against the bound here).
    pub fn load(&self) -> Result<LoadedModel> {
        let model = self.model.as_deref().ok_or_else(|| {
            EngineError::Invalid("--model is required (an .onnx or .safetensors file)".into())
        })?;
        let fixed = FixedPoint::new(self.frac_bits)?;
        let unused = if self.allow_unused_tensors {
            UnusedTensors::Allow
        } else {
            UnusedTensors::Refuse
        };
        let source: Box<dyn ModelSource> = if model.ends_with(".onnx") {
            if self.arch.is_some() {
                return Err(EngineError::Invalid(
                    "--arch applies to safetensors models; an ONNX file carries its graph".into(),
                ));
            }
            let import = import_onnx(model)?;
            for note in &import.notes {
                eprintln!("note: {note}");
            }
            Box::new(import.model)
        } else {
            let arch = self.arch.as_deref().ok_or_else(|| {
                EngineError::Invalid(format!(
                    "{model}: a safetensors model needs --arch (e.g. vgg16-head, vgg16, resnet18 or linear,relu,linear)"
                ))
            })?;
            if engine::io::parse_preset(arch)?.is_some() {
                Box::new(load_safetensors_model_with(
                    model,
                    arch,
                    &self.prefix,
                    unused,
                )?)
            } else {
                // Streamed from the memory-mapped file, tensor by tensor, when shared.
                Box::new(ModelFile::open_with(model, arch, &self.prefix, unused)?)
            }
        };
        let input_shape = source.input_shape();
        let width: usize = input_shape.iter().product();
        let bounds = match &self.calibrate {
            Some(path) => {
                let (rows, cal) = load_inputs(path, &input_shape)?;
                check_inputs(&cal, width, self.input_bound)
                    .map_err(|e| EngineError::Range(format!("{path}: {e}")))?;
                // Calibration runs the plaintext model: the owner reads it whole here.
                let whole = to_sequential(source.as_ref())?;
                ModelBounds {
                    input_bound: self.input_bound,
                    calibrated: Some(calibrate(&whole, &cal, rows, self.calibration_margin)?),
                }
            }
            None => ModelBounds::worst_case(self.input_bound),
        };
        Ok(LoadedModel {
            source,
            bounds,
            fixed,
        })
    }
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
        #[arg(long, default_value_t = engine::nn::classify::DEFAULT_POOL_ENTRIES)]
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
    /// Write a deployment CA and one certificate and key per role and data owner.
    Keygen {
        /// The deployment file (TOML) naming the services and data owners.
        #[arg(long)]
        deployment: PathBuf,
        /// Directory to write `ca.pem`, `ca.key` and `<role>.pem` / `<role>.key` into.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing keys (otherwise refuse to overwrite any).
        #[arg(long)]
        force: bool,
    },
    /// Load generator against a running deployment: concurrent clients classify in a loop;
    /// reports latency percentiles, throughput, traffic, errors and wrong answers.
    BenchService {
        /// Options.
        #[command(flatten)]
        args: crate::bench_service::BenchServiceArgs,
    },
    /// Benchmarks: GEMM vs MAC peak, secure matmul vs GEMM, comparisons, VGG16 head.
    Bench {
        /// Compute backend.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// Small shapes (seconds instead of minutes).
        #[arg(long)]
        quick: bool,
        /// Run only the VGG16 benchmarks (CIFAR-10 shape, batch 1 and 64); the full run
        /// includes them.
        #[arg(long)]
        cnn: bool,
        /// Also run torchvision's whole VGG16 at 224x224, batch 1 (138 M parameters; minutes
        /// and tens of GB of memory).
        #[arg(long)]
        vgg16_224: bool,
    },
}

fn print_report(r: &ClassifyReport) {
    if let (Some(c), Some(acc)) = (r.correct, r.accuracy()) {
        println!(
            "Test set: Accuracy: {c}/{} ({:.0}%)  [revealed to the model owner only]",
            r.inputs,
            100.0 * acc
        );
    }
    println!(
        "time: {:.3} ms for {} inputs in {} batches ({:.1} inputs/s)",
        r.seconds * 1e3,
        r.inputs,
        r.batches,
        r.inputs as f64 / r.seconds
    );
    for (i, t) in r.traffic.iter().enumerate() {
        println!(
            "{}: sent {:.3} MB in {} rounds ({} messages)",
            PartyId::compute(i),
            t.bytes_sent as f64 / 1e6,
            t.rounds,
            t.messages
        );
    }
}

/// Share a model from its file, with a progress bar when that takes more than a second.
pub fn share_with_progress(
    session: &mut Session,
    model: &dyn ModelSource,
    bounds: &ModelBounds,
) -> Result<engine::nn::SharedModel> {
    let start = Instant::now();
    let bar = ProgressBar::with_draw_target(
        Some(model.parameter_count() as u64),
        indicatif::ProgressDrawTarget::hidden(),
    );
    bar.set_style(
        ProgressStyle::with_template("sharing the model {bar:40} {percent}% eta {eta}")
            .expect("valid template"),
    );
    let shared =
        session.share_model_observed(PartyId::ModelOwner, model, bounds, &mut |done, _| {
            // Shown only once loading has taken a second (the first layers tell how long it takes).
            if start.elapsed().as_secs_f64() > 1.0 && bar.is_hidden() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    Ok(shared)
}

/// Run the tutorial's Linear(1,1) case through the dealer, alice and bob services running
/// in-process (the same services as across hosts; `transport` picks their links); returns the
/// report.
pub fn demo(backend: BackendKind, transport: TransportKind) -> Result<ClassifyReport> {
    let deployment = LocalDeployment::start(LocalConfig {
        backend,
        transport,
        ..Default::default()
    })?;
    println!(
        "alice, bob and the crypto provider are up (in-process services, {transport:?} links)"
    );
    let model = Sequential::tutorial_linear();
    let mut owner = deployment.model_owner()?;
    let t = Instant::now();
    let (plan, _) = owner.upload(
        "linear",
        &model,
        &FixedPoint::default(),
        &ModelBounds::default(),
        &mut |_, _| {},
    )?;
    println!(
        "model.fix_precision().share(alice, bob, crypto_provider): {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    if let Some(r) = &plan.range {
        println!("{}", r.summary());
    }
    let mut client = deployment.client()?;
    client.connect()?;
    let r = client.classify("linear", &[0.0], Some(&[0]), 1)?;
    let correct = owner.score(r.stats.request)?;
    let traffic = [0, 1].map(|i| engine::transport::StepStats {
        rounds: r.stats.party_rounds[i],
        messages: r.stats.party_messages[i],
        bytes_sent: r.stats.party_bytes[i],
        ..Default::default()
    });
    let report = ClassifyReport {
        inputs: 1,
        correct: Some(correct),
        predictions: Some(r.predictions),
        seconds: r.stats.seconds,
        traffic,
        batches: 1,
        pooled_batches: 0,
    };
    print_report(&report);
    println!(
        "Prediction = {:?}, Label = [0]  [prediction revealed to the client only]",
        report.predictions.as_deref().unwrap_or(&[])
    );
    Ok(report)
}

/// Load a labels file for `rows` input rows of a model with `classes` classes: one label per
/// row, each in `0..classes`, or an error naming the file.
pub fn load_checked_labels(path: &str, rows: usize, classes: usize) -> Result<Vec<i64>> {
    let l = load_labels(path)?;
    check_labels(&l, rows, classes).map_err(|e| EngineError::Format(format!("{path}: {e}")))?;
    Ok(l)
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
        Command::Demo { backend, transport } => demo(backend, transport).map(|_| ()),
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
        } => {
            let d = Deployment::load(&deployment)?;
            let files = write_keys(&d, &out, force)?;
            println!(
                "deployment '{}': wrote a CA and {} certificates to {} (keep ca.key offline; \
                 give each service and data owner only ca.pem and its own .pem and .key)",
                d.name,
                d.roles().len(),
                out.display()
            );
            for f in files {
                println!("  {}", f.display());
            }
            Ok(())
        }
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
            let loaded = model.load()?;
            let plain = loaded.source;
            let input_shape = plain.input_shape();
            let (n, data) = load_inputs(&input, &input_shape)?;
            if n == 0 {
                return Err(EngineError::Format(format!("{input}: no input rows")));
            }
            let labels = match labels {
                Some(p) => {
                    let classes = plain
                        .shapes()?
                        .last()
                        .map_or(0, |s| s.iter().product::<usize>());
                    Some(load_checked_labels(&p, n, classes)?)
                }
                None => None,
            };
            // The client checks its own rows against the bound the model declares.
            let width: usize = input_shape.iter().product();
            check_inputs(&data, width, loaded.bounds.input_bound)
                .map_err(|e| EngineError::Range(format!("{input}: {e}")))?;
            let mut session = Session::new(SessionConfig {
                backend,
                fixed: loaded.fixed,
                transport,
                ..Default::default()
            })?;
            let shared = share_with_progress(&mut session, plain.as_ref(), &loaded.bounds)?;
            if let Some(r) = shared.range() {
                println!("{}", r.summary());
            }
            let mut clf = SecureClassifier::new(&mut session, shared);
            clf.set_pool(pool)?;
            let bar = ProgressBar::new(n as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} inputs {per_sec} eta {eta}")
                    .expect("valid template"),
            );
            if n <= batch {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let report = clf.classify_observed(
                &data,
                labels.as_deref(),
                &ClassifyOptions {
                    batch,
                    reveal_predictions: out.is_some(),
                },
                &mut |done, _| bar.set_position(done as u64),
            )?;
            bar.finish_and_clear();
            print_report(&report);
            if let (Some(out), Some(preds)) = (out, report.predictions.as_ref()) {
                let path = out.path().display().to_string();
                out.commit_predictions(preds)?;
                println!("predictions written to {path} (revealed to the client only)");
            }
            Ok(())
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
    }
}

/// A finite number above zero (for bounds; refused while parsing, before any file is read).
fn positive_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a positive number, got {v}")),
        Err(e) => Err(e.to_string()),
    }
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

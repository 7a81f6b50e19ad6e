//! In-process runs: the tutorial's demo and `classify --model`, on alice, bob and the dealer
//! running as services inside this process (the same services as across hosts).

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kernels::BackendKind;

use engine::error::{EngineError, Result};
use engine::fixed::FixedPoint;
use engine::io::{load_inputs, OutputFile};
use engine::nn::plain::Sequential;
use engine::nn::range::{check_inputs, ModelBounds};
use engine::nn::source::ModelSource;
use engine::service::classifier::{ClassifyOptions, ClassifyReport, SecureClassifier};
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::transport::{PartyId, TransportKind};

use crate::options::{load_checked_labels, ModelArgs};

/// Print what an evaluation revealed to whom and what it cost.
pub fn print_report(r: &ClassifyReport) {
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

/// Upload a model from its file to `deployment`, with a progress bar when that takes more than
/// a second.
pub fn upload_with_progress(
    deployment: &LocalDeployment,
    model: &dyn ModelSource,
    fixed: &FixedPoint,
    bounds: &ModelBounds,
) -> Result<SecureClassifier> {
    let start = Instant::now();
    let bar = ProgressBar::with_draw_target(
        Some(model.parameter_count() as u64),
        indicatif::ProgressDrawTarget::hidden(),
    );
    bar.set_style(
        ProgressStyle::with_template("sharing the model {bar:40} {percent}% eta {eta}")
            .expect("valid template"),
    );
    let clf =
        SecureClassifier::upload_observed(deployment, model, fixed, bounds, &mut |done, _| {
            // Shown only once loading has taken a second (the first layers tell how long it takes).
            if start.elapsed().as_secs_f64() > 1.0 && bar.is_hidden() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    Ok(clf)
}

/// Requests the demo repeats after the first, for a median latency.
const DEMO_REPEATS: usize = 20;

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
    let t = Instant::now();
    let mut clf = SecureClassifier::upload(
        &deployment,
        &model,
        &FixedPoint::default(),
        &ModelBounds::default(),
    )?;
    println!(
        "model.fix_precision().share(alice, bob, crypto_provider): {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    if let Some(r) = &clf.plan().range {
        println!("{}", r.summary());
    }
    let report = clf.classify(&[0.0], Some(&[0]), &ClassifyOptions { batch: 1 })?;
    print_report(&report);
    println!(
        "Prediction = {:?}, Label = [0]  [prediction revealed to the client only]",
        report.predictions
    );
    // The same request again, as a served model sees them (links up, material made ahead).
    let mut times = Vec::with_capacity(DEMO_REPEATS);
    for _ in 0..DEMO_REPEATS {
        let r = clf.classify(&[0.0], Some(&[0]), &ClassifyOptions { batch: 1 })?;
        if r.predictions != [0] || r.correct != Some(1) {
            return Err(EngineError::OutOfStep {
                step: "demo",
                detail: format!("a repeated request answered {:?}", r.predictions),
            });
        }
        times.push(r.seconds * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "the same request {DEMO_REPEATS} more times: median {:.3} ms (fastest {:.3} ms, slowest {:.3} ms; correct count fetched by the model owner each time)",
        times[DEMO_REPEATS / 2],
        times[0],
        times[DEMO_REPEATS - 1]
    );
    Ok(report)
}

/// `classify --model`: the model owner uploads the model to in-process services, the client
/// classifies `input` (with `labels`), the model owner learns the correct count.
#[allow(clippy::too_many_arguments)]
pub fn classify(
    model: &ModelArgs,
    input: &str,
    labels: Option<&str>,
    batch: usize,
    backend: BackendKind,
    transport: TransportKind,
    pool: usize,
    out: Option<OutputFile>,
) -> Result<()> {
    let loaded = model.load()?;
    let plain = loaded.source;
    let input_shape = plain.input_shape();
    let (n, data) = load_inputs(input, &input_shape)?;
    if n == 0 {
        return Err(EngineError::Format(format!("{input}: no input rows")));
    }
    let labels = match labels {
        Some(p) => {
            let classes = plain
                .shapes()?
                .last()
                .map_or(0, |s| s.iter().product::<usize>());
            Some(load_checked_labels(p, n, classes)?)
        }
        None => None,
    };
    // The client checks its own rows against the bound the model declares.
    let width: usize = input_shape.iter().product();
    check_inputs(&data, width, loaded.bounds.input_bound)
        .map_err(|e| EngineError::Range(format!("{input}: {e}")))?;
    let deployment = LocalDeployment::start(LocalConfig {
        backend,
        transport,
        pool,
        ..Default::default()
    })?;
    let mut clf = upload_with_progress(&deployment, plain.as_ref(), &loaded.fixed, &loaded.bounds)?;
    if let Some(r) = &clf.plan().range {
        println!("{}", r.summary());
    }
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
        &ClassifyOptions { batch },
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    print_report(&report);
    if let Some(out) = out {
        let path = out.path().display().to_string();
        out.commit_predictions(&report.predictions)?;
        println!("predictions written to {path} (revealed to the client only)");
    }
    Ok(())
}

//! `secure-serving bench-service`: a load generator against a running deployment.
//!
//! `--clients N` threads, each its own [`engine::service::client::RemoteOwner`] connected once (and warmed up with one
//! `models` request), then classify requests in a loop on that connection until `--seconds` have
//! passed or `--requests` have been started. Every started request ends as an answer or a counted
//! error ("busy" refusals counted apart); with `--expect`, every answer is compared bit for bit
//! with the expected predictions and mismatches are counted. The report gives latency
//! percentiles (after connection set-up), throughput and traffic per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use engine::error::{EngineError, Result};
use engine::service::client::RequestStats;

use crate::remote::DeployArgs;

/// Options of `secure-serving bench-service`.
#[derive(Args, Debug, Clone)]
pub struct BenchServiceArgs {
    /// Deployment and keys.
    #[command(flatten)]
    pub deploy: DeployArgs,
    /// Which client of the deployment the load generator is (default: its only client); a
    /// comma-separated list spreads the clients over several (client i is the i-th, round
    /// robin).
    #[arg(long = "as")]
    pub as_name: Option<String>,
    /// The served model to classify with.
    #[arg(long)]
    pub model: String,
    /// Inputs `.npy` (the model's input shape); every request classifies all its rows.
    #[arg(long)]
    pub input: String,
    /// Labels `.npy`, int64 `[N]`: sent with every request (shared like the inputs); the
    /// parties keep each request's correct count for the model owner.
    #[arg(long)]
    pub labels: Option<String>,
    /// Classify only the first N rows of --input (and of --labels and --expect).
    #[arg(long)]
    pub rows: Option<usize>,
    /// Rows per batch inside a request.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Concurrent clients (threads, one connection pair each).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Run for this many seconds (default 10 unless --requests is given).
    #[arg(long, conflicts_with = "requests")]
    pub seconds: Option<f64>,
    /// Start this many requests in all, then stop.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Expected predictions, int64 `.npy` `[N]`: every answer must equal them bit for bit.
    #[arg(long)]
    pub expect: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The most clients one run starts (each holds two connections and a thread).
pub const MAX_CLIENTS: usize = 1024;

/// The longest run `--seconds` accepts (a day).
pub const MAX_SECONDS: f64 = 86_400.0;

/// When the clients stop starting requests.
#[derive(Clone, Copy, Debug)]
enum Stop {
    At(Instant),
    After(u64),
}

/// What the clients counted, shared between their threads.
#[derive(Default)]
struct Counters {
    started: AtomicU64,
    answered: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    busy: AtomicU64,
}

/// Wrong answers described at most per run (the count covers them all).
const MAX_MISMATCH_DETAILS: usize = 100;

/// One wrong prediction: the request, the row, what was expected and what was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The classify request's id (as the parties logged it).
    pub request: u64,
    /// The input row.
    pub row: usize,
    /// The expected class.
    pub expected: i64,
    /// The class answered.
    pub answer: i64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request {}: row {} expected class {}, answered {}",
            self.request, self.row, self.expected, self.answer
        )
    }
}

/// The rows of one answer that differ from the expected predictions.
fn mismatches_of(request: u64, expected: &[i64], answer: &[i64]) -> Vec<Mismatch> {
    let mut out: Vec<Mismatch> = expected
        .iter()
        .zip(answer)
        .enumerate()
        .filter(|(_, (e, a))| e != a)
        .map(|(row, (&expected, &answer))| Mismatch {
            request,
            row,
            expected,
            answer,
        })
        .collect();
    // A different number of predictions: every missing or extra row is a mismatch too.
    for row in answer.len().min(expected.len())..answer.len().max(expected.len()) {
        out.push(Mismatch {
            request,
            row,
            expected: expected.get(row).copied().unwrap_or(-1),
            answer: answer.get(row).copied().unwrap_or(-1),
        });
    }
    out
}

/// One client's measurements.
#[derive(Default)]
struct ClientLog {
    latencies: Vec<f64>,
    wrong: Vec<Mismatch>,
    first: Option<RequestStats>,
    client_bytes: u64,
    first_error: Option<String>,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct BenchServiceReport {
    /// The model classified with.
    pub model: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Rows per request.
    pub rows_per_request: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Seconds the clients took to connect and warm up (the slowest).
    pub setup_seconds: f64,
    /// Seconds of the measured phase (from the common start to the last answer).
    pub seconds: f64,
    /// Requests started.
    pub started: u64,
    /// Requests answered (with or without the expected predictions).
    pub answered: u64,
    /// Answers that differ from `--expect`.
    pub mismatches: u64,
    /// The wrong rows of those answers (at most [`MAX_MISMATCH_DETAILS`]).
    pub mismatch_details: Vec<Mismatch>,
    /// Requests that failed, other than "busy".
    pub errors: u64,
    /// Requests refused as busy.
    pub busy: u64,
    /// Started requests with neither an answer nor a counted error (a client thread died).
    pub lost: u64,
    /// The first error message seen, if any.
    pub first_error: Option<String>,
    /// Latency percentiles of answered requests, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Answered requests per second.
    pub requests_per_second: f64,
    /// Classified rows per second.
    pub rows_per_second: f64,
    /// Bytes the client sent plus received, per answered request (mean).
    pub client_bytes_per_request: f64,
    /// Rounds each party counted in one request (alice, bob; the first answered request).
    pub party_rounds: [u64; 2],
    /// Bytes each party sent in one request (alice, bob; the first answered request).
    pub party_bytes_sent: [u64; 2],
    /// Bytes the client sent in one request.
    pub client_bytes_sent: u64,
    /// Bytes the client received in one request.
    pub client_bytes_received: u64,
}

impl BenchServiceReport {
    /// The report as one JSON object (field names as in the struct).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "clients": self.clients,
            "rows_per_request": self.rows_per_request,
            "batch": self.batch,
            "setup_seconds": self.setup_seconds,
            "seconds": self.seconds,
            "started": self.started,
            "answered": self.answered,
            "mismatches": self.mismatches,
            "mismatch_details": self.mismatch_details.iter().map(|m| serde_json::json!({
                "request": m.request,
                "row": m.row,
                "expected": m.expected,
                "answer": m.answer,
            })).collect::<Vec<_>>(),
            "errors": self.errors,
            "busy": self.busy,
            "lost": self.lost,
            "first_error": self.first_error,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "requests_per_second": self.requests_per_second,
            "rows_per_second": self.rows_per_second,
            "client_bytes_per_request": self.client_bytes_per_request,
            "party_rounds": self.party_rounds,
            "party_bytes_sent": self.party_bytes_sent,
            "client_bytes_sent": self.client_bytes_sent,
            "client_bytes_received": self.client_bytes_received,
        })
    }
}

/// The `q`-quantile (0..=1) of sorted `v` by nearest rank; 0 when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn is_busy(e: &EngineError) -> bool {
    e.kind() == engine::error::ErrorKind::Busy
}

impl BenchServiceArgs {
    fn stop_rule(&self) -> Result<Stop> {
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return Err(EngineError::Invalid(format!(
                "--clients must be 1..={MAX_CLIENTS}, not {}",
                self.clients
            )));
        }
        if self.batch == 0 {
            return Err(EngineError::Invalid("--batch must be at least 1".into()));
        }
        match (self.seconds, self.requests) {
            (Some(s), _) if !(s.is_finite() && s > 0.0 && s <= MAX_SECONDS) => {
                Err(EngineError::Invalid(format!(
                    "--seconds must be a number in (0, {MAX_SECONDS}], not {s}"
                )))
            }
            (Some(s), _) => Ok(Stop::At(Instant::now() + Duration::from_secs_f64(s))),
            (None, Some(0)) => Err(EngineError::Invalid("--requests must be at least 1".into())),
            (None, Some(r)) => Ok(Stop::After(r)),
            (None, None) => Ok(Stop::At(Instant::now() + Duration::from_secs(10))),
        }
    }
}

/// Run the load generator; prints the report and fails when any answer was wrong, any request
/// failed (other than busy) or any was lost.
pub fn run(args: &BenchServiceArgs) -> Result<BenchServiceReport> {
    // Validate every option before connecting (the deadline is set again at the common start).
    args.stop_rule()?;
    let names: Vec<Option<String>> = match &args.as_name {
        Some(list) => list
            .split(',')
            .map(|n| Some(n.trim().to_string()))
            .collect(),
        None => vec![None],
    };
    let mut probe = crate::remote::owner(&args.deploy, names[0].as_deref(), false)?;
    let info = probe.model_info(&args.model)?;
    drop(probe);
    let (file_rows, mut data) = engine::io::load_inputs(&args.input, &info.input_shape)?;
    if file_rows == 0 {
        return Err(EngineError::Format(format!(
            "{}: no input rows",
            args.input
        )));
    }
    let width: usize = info.input_shape.iter().product();
    let rows = match args.rows {
        Some(0) => return Err(EngineError::Invalid("--rows must be at least 1".into())),
        Some(r) if r > file_rows => {
            return Err(EngineError::Invalid(format!(
                "--rows {r}: {} holds only {file_rows} rows",
                args.input
            )))
        }
        Some(r) => r,
        None => file_rows,
    };
    data.truncate(rows * width);
    engine::nn::range::check_inputs(&data, width, info.input_bound)
        .map_err(|e| EngineError::Range(format!("{}: {e}", args.input)))?;
    let expect = match &args.expect {
        Some(p) => {
            let mut e = engine::io::load_labels(p)?;
            if e.len() != file_rows {
                return Err(EngineError::Format(format!(
                    "{p}: {} expected predictions for {file_rows} input rows",
                    e.len()
                )));
            }
            e.truncate(rows);
            Some(e)
        }
        None => None,
    };
    let labels = match &args.labels {
        Some(p) => {
            let mut l = crate::options::load_checked_labels(p, file_rows, info.classes)?;
            l.truncate(rows);
            Some(l)
        }
        None => None,
    };
    let data = Arc::new(data);
    let labels = Arc::new(labels);
    let expect = Arc::new(expect);
    let counters = Arc::new(Counters::default());
    // Everyone connects (`ready`), then the stop rule is set and all start together (`go`).
    let ready_barrier = Arc::new(Barrier::new(args.clients + 1));
    let go = Arc::new(Barrier::new(args.clients + 1));
    let stop = Arc::new(Mutex::new(None::<Stop>));
    let setup = Instant::now();
    let mut threads = Vec::new();
    for i in 0..args.clients {
        let name = names[i % names.len()].clone();
        let (args, data, labels, expect, counters, stop) = (
            args.clone(),
            Arc::clone(&data),
            Arc::clone(&labels),
            Arc::clone(&expect),
            Arc::clone(&counters),
            Arc::clone(&stop),
        );
        let (ready_barrier, go) = (Arc::clone(&ready_barrier), Arc::clone(&go));
        threads.push(std::thread::spawn(move || -> Result<ClientLog> {
            // Connect and warm up; a client that cannot must still reach the barrier.
            let ready =
                crate::remote::owner(&args.deploy, name.as_deref(), false).and_then(|mut o| {
                    o.connect()?;
                    o.models()?;
                    Ok(o)
                });
            ready_barrier.wait();
            go.wait();
            let mut owner = ready?;
            let rule = stop
                .lock()
                .expect("stop rule")
                .expect("set before the start");
            let mut log = ClientLog::default();
            loop {
                match rule {
                    Stop::At(t) if Instant::now() >= t => break,
                    Stop::After(r) if counters.started.fetch_add(1, Ordering::SeqCst) >= r => {
                        counters.started.fetch_sub(1, Ordering::SeqCst);
                        break;
                    }
                    Stop::At(_) => {
                        counters.started.fetch_add(1, Ordering::SeqCst);
                    }
                    Stop::After(_) => {}
                }
                let t = Instant::now();
                match owner.classify(&args.model, &data, labels.as_deref(), args.batch) {
                    Ok(r) => {
                        log.latencies.push(t.elapsed().as_secs_f64());
                        counters.answered.fetch_add(1, Ordering::SeqCst);
                        if let Some(e) = expect.as_ref() {
                            if &r.predictions != e {
                                counters.mismatches.fetch_add(1, Ordering::SeqCst);
                                let wrong = mismatches_of(r.stats.request, e, &r.predictions);
                                for m in &wrong {
                                    eprintln!("bench-service: wrong answer: {m}");
                                }
                                log.wrong.extend(wrong);
                            }
                        }
                        log.client_bytes += r.stats.bytes_sent + r.stats.bytes_received;
                        log.first.get_or_insert(r.stats);
                    }
                    Err(e) => {
                        if is_busy(&e) {
                            counters.busy.fetch_add(1, Ordering::SeqCst);
                        } else {
                            counters.errors.fetch_add(1, Ordering::SeqCst);
                        }
                        log.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            Ok(log)
        }));
    }
    ready_barrier.wait();
    let setup_seconds = setup.elapsed().as_secs_f64();
    let start = Instant::now();
    // Validated above; should it fail now, the clients stop at once.
    *stop.lock().expect("stop rule") = Some(args.stop_rule().unwrap_or(Stop::After(0)));
    go.wait();
    let mut latencies = Vec::new();
    let mut first = None;
    let mut first_error = None;
    let mut client_bytes = 0u64;
    let mut failed_clients = 0u64;
    let mut mismatch_details = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(log)) => {
                latencies.extend(log.latencies);
                mismatch_details.extend(log.wrong);
                client_bytes += log.client_bytes;
                if first.is_none() {
                    first = log.first;
                }
                if first_error.is_none() {
                    first_error = log.first_error;
                }
            }
            Ok(Err(e)) => {
                failed_clients += 1;
                first_error.get_or_insert_with(|| format!("a client could not start: {e}"));
            }
            Err(_) => {
                failed_clients += 1;
                first_error.get_or_insert_with(|| "a client thread panicked".to_string());
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let c = &counters;
    let (started, answered) = (
        c.started.load(Ordering::SeqCst),
        c.answered.load(Ordering::SeqCst),
    );
    let (errors, busy) = (
        c.errors.load(Ordering::SeqCst),
        c.busy.load(Ordering::SeqCst),
    );
    let first = first.unwrap_or_default();
    let ms = |q: f64| quantile(&latencies, q) * 1e3;
    let report = BenchServiceReport {
        model: args.model.clone(),
        clients: args.clients,
        rows_per_request: rows,
        batch: args.batch,
        setup_seconds,
        seconds,
        started,
        answered,
        mismatches: c.mismatches.load(Ordering::SeqCst),
        mismatch_details: {
            mismatch_details.truncate(MAX_MISMATCH_DETAILS);
            mismatch_details
        },
        errors: errors + failed_clients,
        busy,
        lost: started.saturating_sub(answered + errors + busy),
        first_error,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        mean_ms: if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().sum::<f64>() / latencies.len() as f64 * 1e3
        },
        requests_per_second: answered as f64 / seconds,
        rows_per_second: (answered as usize * rows) as f64 / seconds,
        client_bytes_per_request: if answered == 0 {
            0.0
        } else {
            client_bytes as f64 / answered as f64
        },
        party_rounds: first.party_rounds,
        party_bytes_sent: first.party_bytes,
        client_bytes_sent: first.bytes_sent,
        client_bytes_received: first.bytes_received,
    };
    print_report(&report, args.json, expect.is_some());
    if report.mismatches > 0 || report.errors > 0 || report.lost > 0 || report.answered == 0 {
        return Err(EngineError::Protocol(format!(
            "bench-service: {} answered, {} wrong, {} errors, {} lost{}",
            report.answered,
            report.mismatches,
            report.errors,
            report.lost,
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        )));
    }
    Ok(report)
}

fn print_report(r: &BenchServiceReport, json: bool, checked: bool) {
    if json {
        println!("{}", r.to_json());
        return;
    }
    println!(
        "'{}': {} clients, {} rows per request (batch {}), set-up {:.3} s, measured {:.3} s",
        r.model, r.clients, r.rows_per_request, r.batch, r.setup_seconds, r.seconds
    );
    println!(
        "requests: {} started, {} answered ({} wrong{}), {} errors, {} busy, {} lost",
        r.started,
        r.answered,
        r.mismatches,
        if checked {
            ""
        } else {
            ": not checked, no --expect"
        },
        r.errors,
        r.busy,
        r.lost
    );
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
    for m in &r.mismatch_details {
        println!("wrong answer: {m}");
    }
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.mean_ms
    );
    println!(
        "throughput: {:.1} requests/s, {:.1} rows/s",
        r.requests_per_second, r.rows_per_second
    );
    println!(
        "traffic per request: client {:.0} B (sent {} B, received {} B); alice {} rounds {} B, bob {} rounds {} B",
        r.client_bytes_per_request,
        r.client_bytes_sent,
        r.client_bytes_received,
        r.party_rounds[0],
        r.party_bytes_sent[0],
        r.party_rounds[1],
        r.party_bytes_sent[1]
    );
}

#[cfg(test)]
mod tests {
    use super::{mismatches_of, quantile, Mismatch};

    #[test]
    fn a_mismatch_names_its_request_row_expected_class_and_answer() {
        let m = mismatches_of(9, &[1, 2, 3], &[1, 5, 3, 4]);
        assert_eq!(
            m,
            vec![
                Mismatch {
                    request: 9,
                    row: 1,
                    expected: 2,
                    answer: 5
                },
                Mismatch {
                    request: 9,
                    row: 3,
                    expected: -1,
                    answer: 4
                }
            ]
        );
        assert_eq!(
            m[0].to_string(),
            "request 9: row 1 expected class 2, answered 5"
        );
        assert!(mismatches_of(1, &[0, 7], &[0, 7]).is_empty());
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}

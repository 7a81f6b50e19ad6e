//! `secure-serving attack`: hostile load against a running deployment, for the robustness tests
//! (`tests/service_attacks.rs`) and the mixed-attack benchmark (`scripts/attack-bench.sh`).
//!
//! Four attacks, each bounded by `--seconds` and its own count, from the host it runs on:
//! - `--preauth N`: N TCP connections to `--target` that never send a byte, each reopened as soon
//!   as the service closes it;
//! - `--slowloris N`: N classify requests of the client `--as` (its own certificate) to alice and
//!   bob whose first share frame trickles one byte every `--trickle-ms`;
//! - `--idle N`: N authenticated connections of `--as` to `--target` that send heartbeats only;
//! - `--oversized N`: N classify requests of `--as` with sizes that once crashed or hung the
//!   parties, alternately `rows = 2^40, batch = 1` and `batch · width = 2^64 - 16`.
//!
//! The report (JSON with `--json`) says, per attack, how many connections or requests the
//! services closed or refused and how long the longest was held.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use engine::deploy::Role;
use engine::error::{EngineError, Result};
use engine::service::net::{Net, RawStream};
use engine::transport::{step_code, PartyId, StreamOptions, StreamTransport, Transport};
use engine::wire::control::{decode, encode, fresh_id, Reply, Request, REPLY_STEP, REQUEST_STEP};

use crate::remote::DeployArgs;

/// Options of `secure-serving attack`.
#[derive(Args, Debug, Clone)]
pub struct AttackArgs {
    /// Deployment and keys.
    #[command(flatten)]
    pub deploy: DeployArgs,
    /// The client whose certificate the authenticated attacks use (default: the only client).
    #[arg(long = "as")]
    pub as_name: Option<String>,
    /// The service the pre-authentication sockets and idle links go to: alice, bob or dealer.
    #[arg(long, default_value = "alice")]
    pub target: String,
    /// Connections that never send a byte (reopened as they are closed).
    #[arg(long, default_value_t = 0)]
    pub preauth: usize,
    /// Classify requests whose share frame trickles.
    #[arg(long, default_value_t = 0)]
    pub slowloris: usize,
    /// Milliseconds between two trickled bytes.
    #[arg(long, default_value_t = 1000)]
    pub trickle_ms: u64,
    /// Authenticated connections that send heartbeats only.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Classify requests with oversized sizes, one after another.
    #[arg(long, default_value_t = 0)]
    pub oversized: usize,
    /// The model the requests name.
    #[arg(long, default_value = "digits")]
    pub model: String,
    /// How long the attack runs.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// The local address every attack connects from (default: the system's choice); on one
    /// host, e.g. `127.0.0.2`, a source apart from the data owners'.
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What one attack came to.
#[derive(Default)]
struct Tally {
    /// Connections opened (or requests sent).
    opened: AtomicU64,
    /// Closed or refused by the service before the attack ended.
    closed: AtomicU64,
    /// Still held by the service when the attack ended.
    held: AtomicU64,
    /// The longest a connection was held before the service closed it, in milliseconds.
    max_hold_ms: AtomicU64,
    /// The sum of the holds of the closed ones, in milliseconds.
    total_hold_ms: AtomicU64,
    /// Failures of the attack itself (could not connect, ...), with the first reason.
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Replies the services sent (oversized requests): the first reason.
    reply: Mutex<Option<String>>,
}

impl Tally {
    fn closed_after(&self, held: Duration) {
        let ms = held.as_millis() as u64;
        self.closed.fetch_add(1, Ordering::SeqCst);
        self.total_hold_ms.fetch_add(ms, Ordering::SeqCst);
        self.max_hold_ms.fetch_max(ms, Ordering::SeqCst);
    }

    fn still_held(&self, held: Duration) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.max_hold_ms
            .fetch_max(held.as_millis() as u64, Ordering::SeqCst);
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
    }

    fn json(&self) -> serde_json::Value {
        let closed = self.closed.load(Ordering::SeqCst);
        serde_json::json!({
            "opened": self.opened.load(Ordering::SeqCst),
            "closed": closed,
            "held_at_end": self.held.load(Ordering::SeqCst),
            "max_hold_s": self.max_hold_ms.load(Ordering::SeqCst) as f64 / 1e3,
            "mean_hold_s": if closed == 0 { 0.0 } else {
                self.total_hold_ms.load(Ordering::SeqCst) as f64 / 1e3 / closed as f64
            },
            "errors": self.errors.load(Ordering::SeqCst),
            "first_error": self.first_error.lock().ok().and_then(|f| f.clone()),
            "reply": self.reply.lock().ok().and_then(|f| f.clone()),
        })
    }
}

fn frame(words: &[u64]) -> Vec<u8> {
    let mut b = (words.len() as u64).to_le_bytes().to_vec();
    for w in words {
        b.extend(w.to_le_bytes());
    }
    b
}

fn enveloped(request: u64, seq: u64, step: &str, payload: &[u64]) -> Vec<u8> {
    let mut w = vec![request, seq, step_code(step)];
    w.extend_from_slice(payload);
    frame(&w)
}

fn service(name: &str) -> Result<Role> {
    match name {
        "alice" => Ok(Role::Alice),
        "bob" => Ok(Role::Bob),
        "dealer" => Ok(Role::Dealer),
        other => Err(EngineError::Invalid(format!(
            "--target must be alice, bob or dealer, not '{other}'"
        ))),
    }
}

/// Hold a connection that sends nothing; reopen it when the service closes it.
fn preauth(source: Option<IpAddr>, addr: SocketAddr, until: Instant, t: &Tally) {
    while Instant::now() < until {
        let opened = Instant::now();
        let mut s = match engine::transport::connect_from(source, addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                t.error(e);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        t.opened.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 256];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                t.still_held(opened.elapsed());
                return;
            }
            let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(500))));
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        t.closed_after(opened.elapsed());
    }
}

/// Whether `buf` holds a frame with words in it (a reply, not a heartbeat); consumed frames
/// are removed.
fn got_reply(buf: &mut Vec<u8>) -> bool {
    loop {
        if buf.len() < 8 {
            return false;
        }
        let words = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        if words > 0 {
            return true;
        }
        buf.drain(..8);
    }
}

/// One slow request on one party: hello, the request, then the share frame a byte at a time.
fn slowloris_one(
    net: &Net,
    party: &Role,
    request: &[u8],
    trickle: Duration,
    until: Instant,
    t: &Tally,
) {
    let hello = enveloped(0, 0, "hello", &encode(&net.me().file_stem()));
    let mut s: Box<dyn RawStream> = match net.connect_raw(party) {
        Ok(s) => s,
        Err(e) => return t.error(e),
    };
    t.opened.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    if s.write_all(&hello)
        .and_then(|()| s.write_all(request))
        .is_err()
    {
        return t.closed_after(started.elapsed());
    }
    // A share frame of 4096 words, of which a byte goes out every `trickle`.
    let share = enveloped(0, 1, "share", &vec![0u64; 4093]);
    let mut at = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() >= until {
            return t.still_held(started.elapsed());
        }
        if at < share.len()
            && s.write_all(&share[at..at + 1])
                .and_then(|()| s.flush())
                .is_err()
        {
            return t.closed_after(started.elapsed());
        }
        at += 1;
        // Wait for the next byte's turn, watching for the service's reply or its close.
        let next = Instant::now() + trickle;
        while Instant::now() < next {
            let left = next
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let _ = s.set_read_timeout(Some(left));
            match s.read(&mut buf) {
                Ok(0) => return t.closed_after(started.elapsed()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got_reply(&mut got) {
                        return t.closed_after(started.elapsed());
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return t.closed_after(started.elapsed()),
            }
        }
    }
}

/// An authenticated link that sends heartbeats only, until the service closes it.
fn idle(net: &Net, party: &Role, until: Instant, t: &Tally) {
    let mut link = match net.connect(party) {
        Ok(l) => l,
        Err(e) => return t.error(e),
    };
    t.opened.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    let me = net.me().party_id();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return t.still_held(started.elapsed());
        }
        let options = StreamOptions {
            timeout: left.min(net.options().timeout),
            max_wait: left,
            ..net.options()
        };
        match link.recv(me, party.party_id(), &options) {
            Ok(_) => {}
            Err(EngineError::Stalled { .. }) => {}
            Err(EngineError::Timeout { .. }) if Instant::now() >= until => {}
            Err(_) => return t.closed_after(started.elapsed()),
        }
    }
}

/// One request with oversized sizes, to alice and bob; both must refuse it.
fn oversized(net: &Net, request: &Request, t: &Tally) {
    let started = Instant::now();
    let me = net.me().party_id();
    let mut tr = StreamTransport::new(
        me,
        StreamOptions {
            max_wait: net.options().timeout * 3,
            ..net.options()
        },
    );
    tr.set_request(request.id());
    for (party, role) in [(PartyId::Alice, Role::Alice), (PartyId::Bob, Role::Bob)] {
        match net.connect(&role) {
            Ok(l) => tr.add_link(party, l),
            Err(e) => return t.error(e),
        }
    }
    t.opened.fetch_add(1, Ordering::SeqCst);
    tr.meter().set_step(REQUEST_STEP);
    for party in [PartyId::Alice, PartyId::Bob] {
        if let Err(e) = tr.send(party, encode(request)) {
            return t.error(e);
        }
    }
    tr.meter().set_step(REPLY_STEP);
    let mut refused = 0;
    for party in [PartyId::Alice, PartyId::Bob] {
        match tr.recv_tagged(party) {
            Ok((tag, msg)) if tag == step_code(REPLY_STEP) => {
                if let Ok(r) = decode::<Reply>(&msg, "reply") {
                    if let Some((why, _)) = r.failure() {
                        refused += 1;
                        if let Ok(mut f) = t.reply.lock() {
                            f.get_or_insert(format!("{party}: {why}"));
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => t.error(format!("{party}: {e}")),
        }
    }
    if refused == 2 {
        t.closed_after(started.elapsed());
    } else {
        t.still_held(started.elapsed());
    }
}

/// Run the attacks (see the module documentation); returns the JSON report.
pub fn run(args: &AttackArgs) -> Result<serde_json::Value> {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(EngineError::Invalid(format!(
            "--seconds must be in (0, 3600], not {}",
            args.seconds
        )));
    }
    for (what, n, max) in [
        ("--preauth", args.preauth, 4096),
        ("--slowloris", args.slowloris, 1024),
        ("--idle", args.idle, 4096),
        ("--oversized", args.oversized, 1 << 20),
    ] {
        if n > max {
            return Err(EngineError::Invalid(format!("{what} {n} is over {max}")));
        }
    }
    let target = service(&args.target)?;
    let deployment = engine::deploy::Deployment::load(&args.deploy.config)?;
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut net = args.deploy.owner_net(args.as_name.as_deref(), false)?;
    if let Some(ip) = args.source {
        net = net.with_source(ip);
    }
    let net = Arc::new(net);
    let tallies: [Arc<Tally>; 4] = Default::default();
    // The model's width, asked before the other attacks start (their bursts of handshakes from
    // this host would have this connection refused as over the per-source limit).
    let width = if args.oversized > 0 {
        let mut lookup = args.deploy.owner_net(args.as_name.as_deref(), false)?;
        if let Some(ip) = args.source {
            lookup = lookup.with_source(ip);
        }
        engine::service::client::RemoteOwner::new(lookup)?
            .models()?
            .into_iter()
            .find(|m| m.name == args.model)
            .map(|m| m.input_shape.iter().product::<usize>() as u64)
            .ok_or_else(|| EngineError::Invalid(format!("no model '{}' is served", args.model)))?
    } else {
        1
    };
    let mut threads = Vec::new();
    if args.preauth > 0 {
        let addr = deployment
            .address(&target)
            .and_then(|a| a.to_socket_addrs().ok()?.next())
            .ok_or_else(|| EngineError::Invalid(format!("no address for {target}")))?;
        let source = args.source;
        for _ in 0..args.preauth {
            let t = tallies[0].clone();
            threads.push(std::thread::spawn(move || preauth(source, addr, until, &t)));
        }
    }
    if args.slowloris > 0 {
        for i in 0..args.slowloris {
            let request = Request::Classify {
                request: fresh_id(),
                model: args.model.clone(),
                rows: 8,
                batch: 8,
                labels: false,
            };
            let bytes = enveloped(request.id(), 0, "request", &encode(&request));
            for party in [Role::Alice, Role::Bob] {
                let (net, t, bytes) = (net.clone(), tallies[1].clone(), bytes.clone());
                let trickle = Duration::from_millis(args.trickle_ms.max(1));
                threads.push(std::thread::spawn(move || {
                    slowloris_one(&net, &party, &bytes, trickle, until, &t)
                }));
            }
            // Spread the starts a little, as real clients would arrive.
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    for _ in 0..args.idle {
        let (net, t, target) = (net.clone(), tallies[2].clone(), target.clone());
        threads.push(std::thread::spawn(move || idle(&net, &target, until, &t)));
    }
    if args.oversized > 0 {
        let (net, t, n, model) = (
            net.clone(),
            tallies[3].clone(),
            args.oversized,
            args.model.clone(),
        );
        threads.push(std::thread::spawn(move || {
            for i in 0..n {
                if Instant::now() >= until {
                    break;
                }
                // 2^40 rows one per batch; or a batch whose words wrap a 64-bit count.
                let (rows, batch) = if i % 2 == 0 {
                    (1u64 << 40, 1)
                } else {
                    let b = (u64::MAX - 15) / width.max(1);
                    (b, b)
                };
                let request = Request::Classify {
                    request: fresh_id(),
                    model: model.clone(),
                    rows,
                    batch,
                    labels: false,
                };
                oversized(&net, &request, &t);
            }
        }));
    }
    for th in threads {
        let _ = th.join();
    }
    let [p, s, i, o] = &tallies;
    Ok(serde_json::json!({
        "seconds": args.seconds,
        "target": args.target,
        "preauth": p.json(),
        "slowloris": s.json(),
        "idle": i.json(),
        "oversized": o.json(),
    }))
}

/// `secure-serving attack`: run and print the report.
pub fn main(args: &AttackArgs) -> Result<()> {
    let report = run(args)?;
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    Ok(())
}

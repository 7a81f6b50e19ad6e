//! Embedding `engine` in a host program: a custom secure computation through the public API.
//!
//! The client shares its own matrices `X [m, k]` and `Y [k, n]`; alice and bob compute
//! `ReLU(X·Y)` on shares (Beaver matmul with fixed-point truncation, then a secure comparison),
//! and reveal the result to the client alone. The host checks it against plaintext and prints
//! the traffic; it exits with status 1 on a mismatch.
//!
//! `cargo run --release --example embed`

use engine::{Computation, FixedPoint, LocalConfig, LocalDeployment, PartyId};
use rand::{Rng, SeedableRng};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> engine::Result<()> {
    let (m, k, n) = (7, 33, 5);
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed = {seed} (rerun with SEED={seed})");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    // Values on a 1/256 grid: their products are exact with 16 fractional bits, so the only
    // error left is the secure truncation's (below one ulp, 2^-16, per product).
    let mut grid = |len: usize| -> Vec<f64> {
        (0..len)
            .map(|_| rng.gen_range(-1024i32..=1024) as f64 / 256.0)
            .collect()
    };
    let (x, y) = (grid(m * k), grid(k * n));

    // Alice, bob and the dealer as services in this process; a computation on them.
    let deployment = LocalDeployment::start(LocalConfig::default())?;
    let mut session = Computation::open(&deployment, FixedPoint::default())?;
    let fx = session.fixed_point();
    let xs = session.share(PartyId::Client, &[m, k], &x)?;
    let ys = session.share(PartyId::Client, &[k, n], &y)?;
    let (xid, yid) = (xs.id(), ys.id());
    // One program, run by alice and bob on their own threads with their own shares.
    let [sent_a, sent_b] = session.run(move |p| {
        let before = p.traffic();
        let z = p.matmul(&p.kept(xid)?, &p.kept(yid)?)?;
        let r = p.relu(&z)?;
        p.reveal_to(PartyId::Client, &r)?;
        Ok(p.traffic().since(&before))
    })?;
    let (shape, ring) = session.receive_revealed(PartyId::Client)?;
    let got = fx.decode(&ring);

    let ulp = 1.0 / fx.scale();
    let mut worst = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|t| x[i * k + t] * y[t * n + j]).sum();
            let want = dot.max(0.0);
            worst = worst.max((got[i * n + j] - want).abs());
        }
    }
    println!("ReLU(X·Y) for X [{m}, {k}], Y [{k}, {n}] revealed to the client: shape {shape:?}");
    println!("largest difference to plaintext: {worst:e} (bound: one ulp = {ulp:e})");
    for (name, t) in [("alice", &sent_a), ("bob", &sent_b)] {
        let online = t.online();
        println!(
            "{name}: sent {} bytes in {} rounds ({} bytes of dealer material received)",
            online.bytes_sent,
            online.rounds,
            t.step("dealer").bytes_received
        );
    }
    if shape != [m, n] || worst > ulp {
        eprintln!("MISMATCH: secure result differs from plaintext beyond the truncation bound");
        std::process::exit(1);
    }
    println!("secure result matches plaintext");
    Ok(())
}

//! The protocol tests' harness (shared by `engine`'s tests and the application crate's): logged
//! seeds, computations on fresh in-process services, and program shortcuts.
#![allow(dead_code)]

use engine::{
    BackendKind, Computation, FixedPoint, LocalConfig, LocalDeployment, PartyId, SharedTensor,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A fresh RNG for test inputs: seed from `SEED` if set, else from the OS; always printed.
pub fn test_rng(name: &str) -> ChaCha20Rng {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rngs::OsRng.gen::<u64>());
    eprintln!("{name}: seed = {seed} (rerun with SEED={seed})");
    ChaCha20Rng::seed_from_u64(seed)
}

/// A custom computation on fresh in-process services (CPU, OS randomness, default precision).
pub fn session() -> Computation {
    computation(LocalConfig::default(), FixedPoint::default()).expect("computation")
}

/// A custom computation at `fixed` precision on fresh in-process services set up by `config`.
pub fn computation(config: LocalConfig, fixed: FixedPoint) -> engine::Result<Computation> {
    Computation::open(&LocalDeployment::start(config)?, fixed)
}

/// Run a unary program on a shared tensor and keep the result.
pub fn apply<F>(s: &mut Computation, x: &SharedTensor, out_shape: &[usize], f: F) -> SharedTensor
where
    F: Fn(&mut engine::Party, engine::Share) -> engine::Result<engine::Share>
        + Send
        + Sync
        + 'static,
{
    let id = x.id();
    let [a, b] = s
        .run(move |p| {
            let x = p.kept(id)?;
            let y = f(p, x)?;
            Ok(p.keep(y))
        })
        .expect("program runs");
    assert_eq!(a, b);
    Computation::handle(a, out_shape)
}

/// Run a binary program on two shared tensors and keep the result.
pub fn apply2<F>(
    s: &mut Computation,
    x: &SharedTensor,
    y: &SharedTensor,
    out_shape: &[usize],
    f: F,
) -> SharedTensor
where
    F: Fn(&mut engine::Party, engine::Share, engine::Share) -> engine::Result<engine::Share>
        + Send
        + Sync
        + 'static,
{
    let (ix, iy) = (x.id(), y.id());
    let [a, b] = s
        .run(move |p| {
            let x = p.kept(ix)?;
            let y = p.kept(iy)?;
            let z = f(p, x, y)?;
            Ok(p.keep(z))
        })
        .expect("program runs");
    assert_eq!(a, b);
    Computation::handle(a, out_shape)
}

/// Reveal to the model owner as ring values.
pub fn reveal(s: &mut Computation, x: &SharedTensor) -> Vec<u64> {
    s.reveal_ring(PartyId::ModelOwner, x).expect("reveal")
}

/// Index of the largest value of a row (the first of equals).
pub fn argmax(row: &[f64]) -> i64 {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best as i64
}

/// Two-sample chi-square over byte values of two word streams.
pub fn byte_chi2(a: &[u64], b: &[u64]) -> f64 {
    let hist = |w: &[u64]| {
        let mut h = [0f64; 256];
        for x in w {
            for byte in x.to_le_bytes() {
                h[byte as usize] += 1.0;
            }
        }
        h
    };
    let (ha, hb) = (hist(a), hist(b));
    let (na, nb): (f64, f64) = (ha.iter().sum(), hb.iter().sum());
    (0..256)
        .map(|i| {
            let t = ha[i] + hb[i];
            if t == 0.0 {
                return 0.0;
            }
            let (ea, eb) = (t * na / (na + nb), t * nb / (na + nb));
            (ha[i] - ea).powi(2) / ea + (hb[i] - eb).powi(2) / eb
        })
        .sum()
}

/// CPU, and the GPU where an adapter exists (a skip line otherwise; CI=true requires it).
pub fn sessions(what: &str) -> Vec<Computation> {
    let mut v = vec![computation(LocalConfig::default(), FixedPoint::default()).unwrap()];
    let gpu = LocalConfig {
        backend: BackendKind::Gpu,
        ..Default::default()
    };
    match computation(gpu, FixedPoint::default()) {
        Ok(s) => v.push(s),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIP gpu {what}: {e}")
        }
        Err(e) => panic!("CI=true but the GPU backend is unavailable: {e}"),
    }
    v
}

/// The plaintext prediction of each row and its margin over the runner-up.
pub fn argmax_rows(v: &[f64], classes: usize) -> Vec<(i64, f64)> {
    v.chunks(classes)
        .map(|r| {
            let best = (0..classes).fold(0, |b, j| if r[j] > r[b] { j } else { b });
            let second = (0..classes)
                .filter(|&j| j != best)
                .map(|j| r[j])
                .fold(f64::NEG_INFINITY, f64::max);
            (best as i64, r[best] - second)
        })
        .collect()
}

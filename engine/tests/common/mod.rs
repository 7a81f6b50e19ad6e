//! The protocol tests' harness (shared by `engine`'s tests and the application crate's): logged
//! seeds, computations on fresh in-process services, and program shortcuts.
#![allow(dead_code)]

use engine::{Computation, FixedPoint, LocalConfig, LocalDeployment, PartyId, SharedTensor};
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

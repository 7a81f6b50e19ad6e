//! Shared test helpers: logged seeds and session shortcuts.
#![allow(dead_code)]

use engine::{PartyId, Session, SessionConfig, SharedTensor};
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

/// A CPU session with OS randomness.
pub fn session() -> Session {
    Session::new(SessionConfig::default()).expect("session")
}

/// Run a unary program on a shared tensor and keep the result.
pub fn apply<F>(s: &mut Session, x: &SharedTensor, out_shape: &[usize], f: F) -> SharedTensor
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
    Session::handle(a, out_shape)
}

/// Run a binary program on two shared tensors and keep the result.
pub fn apply2<F>(
    s: &mut Session,
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
    Session::handle(a, out_shape)
}

/// Reveal to the model owner as ring values.
pub fn reveal(s: &mut Session, x: &SharedTensor) -> Vec<u64> {
    s.reveal_ring(PartyId::ModelOwner, x).expect("reveal")
}
pub mod cluster;
pub mod layers;

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

//! `Backend::lookup_bits` (the narrow comparison's table lookups): every backend against a
//! host reference written here bit by bit, and every GPU configuration against the CPU, on
//! odd sizes (around the 64-bit packing, the 256-wide workgroups and the chunked
//! configuration's 64 KiB bindings), every index width and shift, `prev` lookups at index 0
//! (the underflow entry) and edge words (0, all ones, carries across bit 32 from `add`).
//!
//! Seed from env `SEED`, else fresh from the OS; printed. Without a GPU adapter the GPU part
//! prints one `SKIP` line and passes, except with env `CI=true`.

use std::sync::Arc;

use kernels::gpu::GpuOptions;
use kernels::{Backend, BitLookup, CpuBackend, GpuBackend, KernelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The backends under test: the CPU, the default GPU and a GPU with 64 KiB bindings and
/// 8-workgroup grids (so small tensors are split into several chunks).
fn backends() -> Vec<(String, Arc<dyn Backend>)> {
    let mut v: Vec<(String, Arc<dyn Backend>)> = vec![("cpu".into(), Arc::new(CpuBackend::new()))];
    match GpuBackend::new() {
        Ok(g) => {
            v.push(("gpu".into(), Arc::new(g)));
            let capped = GpuBackend::with_options(GpuOptions {
                max_binding_bytes: Some(64 << 10),
                max_workgroups_per_dim: Some(8),
                ..Default::default()
            })
            .expect("capped GPU configuration");
            v.push(("gpu[64KiB, grid 8]".into(), Arc::new(capped)));
        }
        Err(KernelError::GpuUnavailable(why)) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIP gpu lookup_bits: {why}");
        }
        Err(e) => panic!("the GPU backend is unavailable: {e}"),
    }
    v
}

/// The bit a lookup reads, written from the definition (no shared helper).
fn reference_bit(l: &BitLookup, c: u64, row: &[u64]) -> u64 {
    let sum = c.wrapping_add(l.add);
    let mut idx = 0u64;
    for b in 0..l.width {
        let at = l.shift + b;
        if at < 64 {
            idx |= ((sum >> at) & 1) << b;
        }
    }
    if l.prev {
        if idx == 0 {
            return l.underflow as u64;
        }
        idx -= 1;
    }
    let pos = l.offset as u64 + idx;
    (row[(pos / 64) as usize] >> (pos % 64)) & 1
}

fn reference(c: &[u64], rows: &[u64], words: usize, lookups: &[BitLookup]) -> Vec<u64> {
    let block = c.len().div_ceil(64);
    let mut out = vec![0u64; lookups.len() * block];
    for (k, l) in lookups.iter().enumerate() {
        for (e, &ce) in c.iter().enumerate() {
            let bit = reference_bit(l, ce, &rows[e * words..(e + 1) * words]);
            out[k * block + e / 64] |= bit << (e % 64);
        }
    }
    out
}

/// Random lookups that fit rows of `words` words: every width from 0 to the largest that fits.
fn lookups(r: &mut ChaCha8Rng, words: usize) -> Vec<BitLookup> {
    let top = (64 * words).ilog2().min(BitLookup::MAX_WIDTH);
    (0..=top)
        .map(|width| {
            let size = 1u32 << width;
            BitLookup {
                add: match r.gen_range(0..3) {
                    0 => 0,
                    1 => r.gen(),
                    _ => (1u64 << 32) - 1,
                },
                shift: r.gen_range(0..64),
                width,
                offset: r.gen_range(0..=(64 * words as u32 - size)),
                prev: r.gen_bool(0.5),
                underflow: r.gen_bool(0.5),
            }
        })
        .collect()
}

#[test]
fn lookup_bits_match_the_definition_on_every_backend() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("lookup_bits: SEED={seed} (rerun with SEED={seed})");
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let all = backends();
    for &(n, words) in &[
        (0usize, 1usize),
        (1, 1),
        (7, 2),
        (63, 14),
        (64, 5),
        (65, 1),
        (257, 14),
        (1000, 3),
        (4097, 14),
    ] {
        let edges = [0u64, u64::MAX, (1 << 32) - 1, 1 << 31, 1 << 63];
        let c: Vec<u64> = (0..n)
            .map(|i| if i < edges.len() { edges[i] } else { r.gen() })
            .collect();
        let rows: Vec<u64> = (0..n * words).map(|_| r.gen()).collect();
        let mut ls = lookups(&mut r, words);
        // A prev lookup whose index is 0 for the zero word (the underflow entry), both ways.
        for underflow in [false, true] {
            ls.push(BitLookup {
                add: 0,
                shift: 0,
                width: 4,
                offset: 0,
                prev: true,
                underflow,
            });
        }
        let want = reference(&c, &rows, words, &ls);
        let mut first: Option<Vec<u64>> = None;
        for (name, be) in &all {
            let ct = be.upload(&[n], &c).unwrap();
            let tt = be.upload(&[n, words], &rows).unwrap();
            let got = be
                .download(&be.lookup_bits(&ct, &tt, &ls).unwrap())
                .unwrap();
            assert_eq!(
                got, want,
                "{name}: n {n}, {words} words per row (SEED={seed})"
            );
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(&got, f, "{name} vs cpu (SEED={seed})"),
            }
        }
    }
}

#[test]
fn lookups_that_do_not_fit_their_rows_are_refused() {
    let be = CpuBackend::new();
    let c = be.upload(&[3], &[1, 2, 3]).unwrap();
    let rows = be.upload(&[3, 2], &[0; 6]).unwrap();
    let fits = BitLookup {
        add: 0,
        shift: 0,
        width: 7,
        offset: 0,
        prev: false,
        underflow: false,
    };
    assert!(be.lookup_bits(&c, &rows, &[fits]).is_ok());
    for bad in [
        BitLookup { width: 8, ..fits },
        BitLookup { offset: 1, ..fits },
        BitLookup { shift: 64, ..fits },
        BitLookup { width: 17, ..fits },
    ] {
        assert!(be.lookup_bits(&c, &rows, &[bad]).is_err(), "{bad:?}");
    }
    let flat = be.upload(&[6], &[0; 6]).unwrap();
    assert!(be.lookup_bits(&c, &flat, &[fits]).is_err());
}

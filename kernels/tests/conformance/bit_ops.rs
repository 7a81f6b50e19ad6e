//! (b2) Comparison-circuit and layout ops: every backend against a bit-by-bit host reference,
//! and every GPU configuration against the CPU, on random and edge values and odd sizes; transfer
//! counters, skinny products and the device ChaCha12 stream.

use super::*;

/// Sizes around the 64-bit packing, the 256-wide workgroups and the chunked configuration's
/// 8192-element bindings and 2048-element select chunks.
const BIT_SIZES: [usize; 14] = [
    1, 2, 3, 63, 64, 65, 127, 129, 1000, 2047, 2049, 4097, 8193, 16385,
];

mod bit_reference {
    /// Bit `i` of `x`.
    fn bit(x: u64, i: usize) -> u64 {
        (x >> i) & 1
    }

    pub fn compact(words: &[u64], odd: bool) -> Vec<u64> {
        let s = odd as usize;
        (0..words.len().div_ceil(2))
            .map(|i| {
                let mut out = 0u64;
                for half in 0..2 {
                    let w = words.get(2 * i + half).copied().unwrap_or(0);
                    for b in 0..32 {
                        out |= bit(w, 2 * b + s) << (32 * half + b);
                    }
                }
                out
            })
            .collect()
    }

    pub fn pack_msb(x: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; x.len().div_ceil(64)];
        for (i, v) in x.iter().enumerate() {
            out[i / 64] |= bit(*v, 63) << (i % 64);
        }
        out
    }

    /// `[first] d + (1 - 2d) r` written with a branch on the bit.
    pub fn bit_select(d: &[u64], r: &[u64], first: bool) -> Vec<u64> {
        (0..r.len())
            .map(|i| {
                if bit(d[i / 64], i % 64) == 1 {
                    (first as u64).wrapping_sub(r[i])
                } else {
                    r[i]
                }
            })
            .collect()
    }

    /// `(1 - 2d)(prod + e r) + d y` written with a branch on the bit.
    pub fn payload_select(d: &[u64], r: &[u64], e: &[u64], prod: &[u64], y: &[u64]) -> Vec<u64> {
        (0..r.len())
            .map(|i| {
                let yr = prod[i].wrapping_add(e[i].wrapping_mul(r[i]));
                if bit(d[i / 64], i % 64) == 1 {
                    y[i].wrapping_sub(yr)
                } else {
                    yr
                }
            })
            .collect()
    }
}

/// Run every comparison and layout op of `be` at `n` elements and return the outputs by name.
fn compare_ops(
    be: &dyn Backend,
    r: &mut ChaCha8Rng,
    n: usize,
) -> Vec<(String, Vec<u64>, Vec<u64>)> {
    let x = values(r, n, 0.4);
    let d = values(r, n.div_ceil(64), 0.2);
    let [rr, e, prod, y] = [0; 4].map(|_| values(r, n, 0.4));
    let first = r.gen_bool(0.5);
    let xt = up(be, &[n], &x);
    let dt = up(be, &[n.div_ceil(64)], &d);
    let [rt, et, pt, yt] = [&rr, &e, &prod, &y].map(|v| up(be, &[n], v));
    let mut out = Vec::new();
    for odd in [false, true] {
        out.push((
            format!("compact_bits(odd={odd}) n={n}"),
            down(be, &be.compact_bits(&xt, odd).unwrap()),
            bit_reference::compact(&x, odd),
        ));
    }
    out.push((
        format!("pack_msb n={n}"),
        down(be, &be.pack_msb(&xt).unwrap()),
        bit_reference::pack_msb(&x),
    ));
    out.push((
        format!("bit_select(first={first}) n={n}"),
        down(be, &be.bit_select(&dt, &rt, first).unwrap()),
        bit_reference::bit_select(&d, &rr, first),
    ));
    out.push((
        format!("payload_select n={n}"),
        down(be, &be.payload_select(&dt, &rt, &et, &pt, &yt).unwrap()),
        bit_reference::payload_select(&d, &rr, &e, &prod, &y),
    ));
    let start = r.gen_range(0..=n);
    let len = r.gen_range(0..=n - start);
    out.push((
        format!("slice({start}, {len}) n={n}"),
        down(be, &be.slice(&xt, start, len).unwrap()),
        x[start..start + len].to_vec(),
    ));
    out.push((
        format!("concat n={n}"),
        down(be, &be.concat(&[&xt, &dt, &rt]).unwrap()),
        [x.as_slice(), &d, &rr].concat(),
    ));
    let v = values(r, 1, 0.5)[0];
    out.push((
        format!("fill({v:#x}) n={n}"),
        down(be, &be.fill(&[n], v).unwrap()),
        vec![v; n],
    ));
    out.push((
        format!("binary_host(xor) n={n}"),
        down(be, &be.binary_host(BinaryOp::Xor, &xt, &rr).unwrap()),
        x.iter().zip(&rr).map(|(a, b)| a ^ b).collect(),
    ));
    // A transpose of a matrix with n elements in an odd shape.
    let rows = [33, 17, 7, 5, 3]
        .into_iter()
        .find(|m| n.is_multiple_of(*m))
        .unwrap_or(1);
    let cols = n / rows;
    let t = be.transpose(&up(be, &[rows, cols], &x)).unwrap();
    assert_eq!(t.shape(), [cols, rows]);
    out.push((
        format!("transpose [{rows}, {cols}]"),
        down(be, &t),
        (0..n).map(|i| x[(i % rows) * cols + i / rows]).collect(),
    ));
    out
}

#[test]
fn comparison_ops_match_reference_and_cpu() {
    let cpu = CpuBackend::new();
    let backends = all_backends();
    for &n in &BIT_SIZES {
        // The same inputs on every backend: each draws from a generator with one salt.
        let mut cpu_out = None;
        for (name, be) in &backends {
            let mut r = rng(11 + n as u64);
            let got = compare_ops(be.as_ref(), &mut r, n);
            for (what, g, want) in &got {
                check(&format!("{name} {what}"), g, want);
            }
            match &cpu_out {
                None => cpu_out = Some(got),
                Some(c) => {
                    for ((what, g, _), (_, cg, _)) in got.iter().zip(c) {
                        check(&format!("{name} vs cpu {what}"), g, cg);
                    }
                }
            }
        }
    }
    // Edge values through the packing ops.
    let (a, b) = edge_pairs();
    let words = [a.as_slice(), &b].concat();
    for (name, be) in &backends {
        let t = up(be.as_ref(), &[words.len()], &words);
        for odd in [false, true] {
            check(
                &format!("{name} compact edges"),
                &down(be.as_ref(), &be.compact_bits(&t, odd).unwrap()),
                &bit_reference::compact(&words, odd),
            );
        }
        check(
            &format!("{name} pack_msb edges"),
            &down(be.as_ref(), &be.pack_msb(&t).unwrap()),
            &bit_reference::pack_msb(&words),
        );
    }
    // Empty inputs.
    for (name, be) in &backends {
        let e = up(be.as_ref(), &[0], &[]);
        assert_eq!(be.compact_bits(&e, true).unwrap().len(), 0, "{name}");
        assert_eq!(be.pack_msb(&e).unwrap().len(), 0, "{name}");
        assert_eq!(be.bit_select(&e, &e, true).unwrap().len(), 0, "{name}");
        assert_eq!(be.concat(&[]).unwrap().len(), 0, "{name}");
    }
    // Bad operands are errors.
    let x = up(&cpu, &[130], &[0; 130]);
    let d = up(&cpu, &[2], &[0; 2]);
    assert!(cpu.bit_select(&d, &x, true).is_err());
    assert!(cpu.slice(&x, 100, 31).is_err());
    assert!(cpu.transpose(&x).is_err());
}

/// Counters: one upload per upload/binary_host, one download per download, bytes exact.
#[test]
fn transfers_are_counted() {
    // Private backends: the shared ones count the transfers of tests running in parallel.
    let mut backends: Vec<(String, Arc<dyn Backend>)> =
        vec![("cpu".into(), Arc::new(CpuBackend::new()))];
    if let Some(g) = gpus().first() {
        backends.push((g.label.clone(), open_gpu(&g.label, g.opts.clone()).gpu));
    }
    for (name, be) in backends {
        let before = be.transfers();
        let t = up(be.as_ref(), &[5, 3], &[7; 15]);
        let u = be.binary_host(BinaryOp::Add, &t, &[1; 15]).unwrap();
        let s = be.concat(&[&t, &u]).unwrap();
        let _ = be.transpose(&t).unwrap();
        let _ = be.compact_bits(&s, true).unwrap();
        assert_eq!(down(be.as_ref(), &u), vec![8; 15], "{name}");
        let d = be.transfers().since(&before);
        assert_eq!(
            d,
            kernels::TransferStats {
                uploads: 2,
                upload_bytes: 240,
                downloads: 1,
                download_bytes: 120,
            },
            "{name}"
        );
    }
}

/// Few-row products with a deep k are split along k into parallel segments (summed after);
/// the result matches the reference with and without an accumulator.
#[test]
fn skinny_products_split_along_k() {
    let mut r = rng(41);
    for g in gpus() {
        let be = g.gpu.as_ref();
        for &(m, k, n) in &[(1, 4096, 3), (5, 2000, 70), (16, 1100, 1), (3, 1537, 65)] {
            let ha = values(&mut r, m * k, 0.3);
            let hb = values(&mut r, k * n, 0.3);
            let hc = values(&mut r, m * n, 0.3);
            for acc in [false, true] {
                let want = reference::matmul(&ha, &hb, acc.then_some(hc.as_slice()), m, k, n);
                let c = up(be, &[m, n], &hc);
                let got = be
                    .matmul(
                        &up(be, &[m, k], &ha),
                        &up(be, &[k, n], &hb),
                        acc.then_some(&c),
                    )
                    .unwrap();
                check(
                    &format!("{} skinny [{m},{k}]x[{k},{n}] acc={acc}", g.label),
                    &down(be, &got),
                    &want,
                );
            }
        }
    }
}

/// The device ChaCha12 keystream equals rand_chacha's `ChaCha12Rng` (sequential `fill_bytes`)
/// at every seek used by parallel expansion: block and mid-block word positions, the 32-bit
/// block-counter carry, odd lengths and lengths over the chunked configuration's bindings.
#[test]
fn chacha12_matches_rand_chacha_stream() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut r = rng(31);
    let backends = all_backends();
    let positions: [u128; 8] = [
        0,
        2,
        14,
        16,
        30,
        (1 << 36) + 6,
        16 * ((1u128 << 32) - 1) + 8,
        (1 << 67) + 10,
    ];
    for (case, &pos) in positions.iter().enumerate() {
        let key: [u8; 32] = r.gen();
        let stream: u64 = if case % 2 == 0 { r.gen() } else { case as u64 };
        for len in [0usize, 1, 7, 8, 9, 100, 1000, 20001] {
            let mut want = vec![0u64; len];
            let mut rng = rand_chacha::ChaCha12Rng::from_seed(key);
            rng.set_stream(stream);
            rng.set_word_pos(pos);
            rng.fill_bytes(bytemuck_bytes(&mut want));
            for (name, be) in &backends {
                let t = be.chacha12(&key, stream, pos, len).unwrap();
                check(
                    &format!("{name} chacha12 stream {stream} pos {pos} len {len}"),
                    &down(be.as_ref(), &t),
                    &want,
                );
            }
        }
    }
    let cpu = CpuBackend::new();
    assert!(
        cpu.chacha12(&[0; 32], 0, 3, 4).is_err(),
        "odd word position"
    );
}

fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
    let len = v.len() * 8;
    // SAFETY: u8 has no alignment or validity requirements; the view covers exactly `v`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
}

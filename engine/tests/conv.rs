//! Convolution-shaped products by a fixed operand ([`engine::protocols::conv`]): exact against
//! a direct plaintext convolution on odd geometries and edge values on every backend, the
//! traffic of one product (the activation, not its im2col expansion), refusals of mismatched
//! shapes, and a party's transcript independent of the input.

mod common;

use common::{byte_chi2, sessions, test_rng};
use engine::nn::geometry::{ConvShape, Window2d};
use engine::party::CHECK_WORDS_PER_MESSAGE;
use engine::{Computation, PartyId};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// Ring words with edge values mixed in: 0, -1, the ends of the signed range, small values.
fn words(rng: &mut ChaCha20Rng, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| match rng.gen_range(0..6) {
            0 => 0,
            1 => u64::MAX,
            2 => i64::MIN as u64,
            3 => i64::MAX as u64,
            4 => rng.gen_range(-300i64..300) as u64,
            _ => rng.gen(),
        })
        .collect()
}

/// The convolution computed directly (no im2col), on ring values: `[batch·oh·ow, out]`.
fn plain_conv(conv: &ConvShape, x: &[u64], w: &[u64]) -> Vec<u64> {
    let [c, h, wd] = conv.input();
    let win = conv.window();
    let [kh, kw] = win.kernel;
    let out = conv.out_channels();
    let oh = (h + 2 * win.padding[0] - kh) / win.stride[0] + 1;
    let ow = (wd + 2 * win.padding[1] - kw) / win.stride[1] + 1;
    let mut z = vec![0u64; conv.pixels() * out];
    for b in 0..conv.batch() {
        for y in 0..oh {
            for xx in 0..ow {
                let row = (b * oh + y) * ow + xx;
                for o in 0..out {
                    let mut acc = 0u64;
                    for ch in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let r = (y * win.stride[0] + i) as isize - win.padding[0] as isize;
                                let q = (xx * win.stride[1] + j) as isize - win.padding[1] as isize;
                                if r < 0 || q < 0 || r as usize >= h || q as usize >= wd {
                                    continue;
                                }
                                let xi = ((b * c + ch) * h + r as usize) * wd + q as usize;
                                let wi = ((ch * kh + i) * kw + j) * out + o;
                                acc = acc.wrapping_add(x[xi].wrapping_mul(w[wi]));
                            }
                        }
                    }
                    z[row * out + o] = acc;
                }
            }
        }
    }
    z
}

/// Geometries: kernels 1/3/5, strides 1/2, paddings 0/1/2, channel counts off every tile,
/// odd sizes, batches 1-3, non-square windows.
fn geometries() -> Vec<ConvShape> {
    let g = |batch, input, kernel, stride, padding, out| {
        let window = Window2d {
            kernel,
            stride,
            padding,
        };
        ConvShape::new(batch, input, window, out).expect("valid geometry")
    };
    vec![
        g(1, [1, 1, 1], [1, 1], [1, 1], [0, 0], 1),
        g(2, [3, 7, 5], [3, 3], [1, 1], [1, 1], 7),
        g(1, [7, 9, 9], [5, 5], [2, 2], [2, 2], 5),
        g(3, [2, 6, 8], [3, 3], [2, 2], [0, 0], 9),
        g(1, [5, 5, 7], [1, 1], [2, 2], [0, 0], 3),
        g(2, [9, 4, 3], [3, 1], [1, 2], [1, 0], 17),
        g(1, [1, 11, 11], [5, 3], [1, 1], [2, 1], 1),
    ]
}

/// Share `conv`'s input and weight, register the weight as a fixed operand, run
/// `conv_fixed_raw` and reveal; also the product's online traffic.
fn run(
    s: &mut Computation,
    conv: ConvShape,
    x: &[u64],
    w: &[u64],
) -> (Vec<u64>, engine::transport::StepStats) {
    let [c, h, wd] = conv.input();
    let xs = s
        .share_ring(PartyId::Client, &[conv.batch(), c, h, wd], x)
        .unwrap();
    let ws = s
        .share_ring(PartyId::ModelOwner, &[conv.depth(), conv.out_channels()], w)
        .unwrap();
    let (xid, wid) = (xs.id(), ws.id());
    let [(id, t), _] = s
        .run(move |p| {
            let fixed = p.fix_operand(&p.kept(wid)?)?;
            let x = p.kept(xid)?;
            let before = p.traffic();
            let z = p.conv_fixed_raw(&x, &conv, &fixed)?;
            Ok((p.keep(z), p.traffic().since(&before).online()))
        })
        .unwrap();
    let out = Computation::handle(id, &[conv.pixels(), conv.out_channels()]);
    (s.reveal_ring(PartyId::ModelOwner, &out).unwrap(), t)
}

#[test]
fn convolution_shaped_products_are_exact_on_every_backend() {
    let mut rng = test_rng("conv_fixed_exact");
    for mut s in sessions("convolution-shaped products") {
        for conv in geometries() {
            let x = words(&mut rng, conv.input_len());
            let w = words(&mut rng, conv.depth() * conv.out_channels());
            let (got, traffic) = run(&mut s, conv, &x, &w);
            assert_eq!(got, plain_conv(&conv, &x, &w), "{conv:?}");
            // One round; each party sends its share of X - A (activation-sized) and the
            // material check word.
            assert_eq!(traffic.rounds, 1, "{conv:?}");
            assert_eq!(
                traffic.bytes_sent,
                8 * (conv.input_len() as u64 + CHECK_WORDS_PER_MESSAGE),
                "{conv:?}"
            );
        }
    }
}

#[test]
fn a_truncated_convolution_is_within_one_unit() {
    let mut rng = test_rng("conv_fixed_truncated");
    let mut s = common::session();
    let f = s.fixed_point().frac_bits();
    let conv = geometries()[2];
    let small = |rng: &mut ChaCha20Rng, n| -> Vec<u64> {
        (0..n)
            .map(|_| rng.gen_range(-(4i64 << f)..(4i64 << f)) as u64)
            .collect()
    };
    let (x, w) = (
        small(&mut rng, conv.input_len()),
        small(&mut rng, conv.depth() * conv.out_channels()),
    );
    let [c, h, wd] = conv.input();
    let xid = s
        .share_ring(PartyId::Client, &[conv.batch(), c, h, wd], &x)
        .unwrap()
        .id();
    let wid = s
        .share_ring(
            PartyId::ModelOwner,
            &[conv.depth(), conv.out_channels()],
            &w,
        )
        .unwrap()
        .id();
    let [id, _] = s
        .run(move |p| {
            let fixed = p.fix_operand(&p.kept(wid)?)?;
            let z = p.conv_fixed(&p.kept(xid)?, &conv, &fixed)?;
            Ok(p.keep(z))
        })
        .unwrap();
    let got = s
        .reveal_ring(
            PartyId::ModelOwner,
            &Computation::handle(id, &[conv.pixels(), conv.out_channels()]),
        )
        .unwrap();
    // |x|, |w| < 4·2^f and depth 175: |x·w| < 2^(4+2f+8) < 2^62, where truncation is exact
    // up to one unit.
    for (g, want) in got.iter().zip(plain_conv(&conv, &x, &w)) {
        let floor = (want as i64) >> f;
        let d = (*g as i64).wrapping_sub(floor);
        assert!(d == 0 || d == 1, "got {}, floor {floor}", *g as i64);
    }
}

#[test]
fn mismatched_shapes_are_refused_before_any_traffic() {
    let mut s = common::session();
    let conv = geometries()[1];
    let [c, h, wd] = conv.input();
    let xid = s
        .share_ring(
            PartyId::Client,
            &[conv.batch(), c, h + 1, wd],
            &vec![0; conv.batch() * c * (h + 1) * wd],
        )
        .unwrap()
        .id();
    let wid = s
        .share_ring(
            PartyId::ModelOwner,
            &[conv.depth() + 1, 7],
            &vec![0; (conv.depth() + 1) * 7],
        )
        .unwrap()
        .id();
    let err = s
        .run(move |p| {
            let fixed = p.fix_operand(&p.kept(wid)?)?;
            let before = p.traffic();
            let x = p.kept(xid)?;
            let e = p.conv_fixed_raw(&x, &conv, &fixed).unwrap_err().to_string();
            assert_eq!(p.traffic().since(&before).online().rounds, 0);
            Ok(e)
        })
        .unwrap();
    assert!(
        err[0].contains("conv2d") && err[0].contains("input"),
        "{}",
        err[0]
    );
    // Geometries the window does not fit, or with a zero size, are refused when built.
    let win = Window2d::square(5, 1, 0);
    for (batch, input) in [(1, [1, 3, 3]), (0, [1, 7, 7]), (1, [0, 7, 7])] {
        let e = ConvShape::new(batch, input, win, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv2d"), "{e}");
    }
}

#[test]
fn a_partys_convolution_transcript_is_independent_of_the_input() {
    let mut s = common::session();
    let conv = ConvShape::new(1, [8, 16, 16], Window2d::square(3, 1, 1), 4).unwrap();
    let n = conv.input_len();
    let secrets = [
        vec![0u64; n],
        (0..n as u64)
            .map(|i| (i << 20) ^ 0xFFFF_0000_0000)
            .collect(),
    ];
    let w: Vec<u64> = (0..conv.depth() * 4).map(|i| i as u64 * 977).collect();
    let wid = s
        .share_ring(PartyId::ModelOwner, &[conv.depth(), 4], &w)
        .unwrap()
        .id();
    let fixed_id = {
        let [a, b] = s
            .run(move |p| {
                let f = p.fix_operand(&p.kept(wid)?)?;
                Ok(f.id())
            })
            .unwrap();
        assert_eq!(a, b);
        a
    };
    let mut transcripts = Vec::new();
    for secret in &secrets {
        let xid = s
            .share_ring(PartyId::Client, &[1, 8, 16, 16], secret)
            .unwrap()
            .id();
        let [t, _] = s
            .run(move |p| {
                let fixed = p.fixed_operand(fixed_id, &p.kept(wid)?)?;
                let x = p.kept(xid)?;
                p.record_transcript();
                p.conv_fixed_raw(&x, &conv, &fixed)?;
                Ok(p.take_transcript().concat())
            })
            .unwrap();
        transcripts.push(t);
    }
    assert_eq!(transcripts[0].len(), transcripts[1].len());
    // 255 degrees of freedom: the 1e-9 tail is about 380.
    let chi = byte_chi2(&transcripts[0], &transcripts[1]);
    assert!(chi < 380.0, "transcripts distinguishable: chi2 = {chi}");
    // The statistic does detect a dependence: the secrets themselves differ wildly.
    assert!(byte_chi2(&secrets[0], &secrets[1]) > 1000.0);
}

#[test]
fn convolution_material_requests_round_trip_and_malformed_ones_are_refused() {
    use engine::dealer::MaterialSpec;
    for conv in geometries() {
        let spec = MaterialSpec::FixedConv { fixed_id: 42, conv };
        let mut words = Vec::new();
        spec.encode(&mut words);
        assert_eq!(MaterialSpec::decode(&words).unwrap(), spec);
        // Activation-sized mask, output-sized product.
        assert_eq!(
            spec.checked_words(),
            Some((conv.input_len() + conv.pixels() * conv.out_channels()) as u64)
        );
    }
    let mut words = Vec::new();
    MaterialSpec::FixedConv {
        fixed_id: 1,
        conv: geometries()[2],
    }
    .encode(&mut words);
    // A zero stride, a window that does not fit, a set top bit: refused, never served.
    for (i, bad) in [
        (4, words[4] & !(0x3FF << 20)),
        (4, words[4] | 0x3FF),
        (3, words[3] | 1 << 63),
    ] {
        let mut w = words.clone();
        w[i] = bad;
        let e = MaterialSpec::decode(&w).unwrap_err().to_string();
        assert!(e.contains("conv"), "{e}");
    }
}

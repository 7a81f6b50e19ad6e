//! Gather (local re-layouts: im2col, pooling windows) against the host reference.

use super::*;

#[test]
fn gather_matches_host_reference() {
    use kernels::GATHER_ZERO;
    let mut r = rng(7);
    for (name, be) in all_backends() {
        // Output lengths past one chunk of the 64 KiB-binding configuration (8192 elements).
        for &(src_len, out_len) in &[(1, 1), (7, 3), (100, 333), (5000, 20_001), (33, 0)] {
            let src = values(&mut r, src_len, 0.3);
            let index: Vec<u32> = (0..out_len)
                .map(|_| {
                    if r.gen_bool(0.2) {
                        GATHER_ZERO
                    } else {
                        r.gen_range(0..src_len as u32)
                    }
                })
                .collect();
            let want: Vec<u64> = index
                .iter()
                .map(|&i| if i == GATHER_ZERO { 0 } else { src[i as usize] })
                .collect();
            let t = up(be.as_ref(), &[src_len], &src);
            let got = be.gather(&t, &index, &[out_len]).unwrap();
            assert_eq!(got.shape(), [out_len]);
            check(
                &format!("{name} gather {src_len}->{out_len}"),
                &down(be.as_ref(), &got),
                &want,
            );
        }
        let t = up(be.as_ref(), &[4], &[1, 2, 3, 4]);
        let e = be.gather(&t, &[0, 4], &[2]).unwrap_err().to_string();
        assert!(
            e.contains("index 4 at position 1 is out of range"),
            "{name}: {e}"
        );
        let e = be.gather(&t, &[0, 1], &[3]).unwrap_err().to_string();
        assert!(e.contains("does not hold 2 indices"), "{name}: {e}");
    }
}

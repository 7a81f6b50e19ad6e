//! The fuzz target's corpus on stable: replays the committed seed corpus (`fuzz/corpus/decoders`)
//! and a few thousand mutations of it through the same entry point the cargo-fuzz target calls.
//! Nothing may panic; the seeds must decode as they were written.

mod common;

use std::path::Path;

use common::test_rng;
use engine::fuzzing::{decode_untrusted, DecodeSummary};
use rand::Rng;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decoders");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seed_corpus_decodes_as_written() {
    let seeds = corpus();
    assert!(seeds.len() >= 10, "seed corpus missing");
    for (name, bytes) in &seeds {
        let s = decode_untrusted(bytes);
        let expect = |frames, frame_error, material_requests, tensors, seeds| DecodeSummary {
            frames,
            frame_error,
            material_requests,
            tensors,
            seeds,
            control: 0,
        };
        let control = |frames, control| DecodeSummary {
            frames,
            control,
            ..Default::default()
        };
        let want = match name.as_str() {
            "material_request.bin"
            | "fixed_request.bin"
            | "select_and.bin"
            | "one_hot_request.bin" => expect(1, false, 1, 0, 0),
            // A seed grant (4 seed words and the material tag); [1, 3, 7, 8, 9] is also a
            // well-formed tensor: rank 1, shape [3], values [7, 8, 9].
            "seed.bin" => expect(1, false, 0, 1, 1),
            // A [2, 3] tensor and a scalar ([0, 7]: rank 0, one value).
            "tensor.bin" => expect(2, false, 0, 2, 0),
            "error_reply.bin" | "shutdown.bin" => expect(1, false, 0, 0, 0),
            "oversized.bin" | "truncated.bin" => expect(0, true, 0, 0, 0),
            "empty_frames.bin" => expect(3, false, 0, 0, 0),
            // Service control messages behind their envelopes: a hello and a classify request;
            // a dealer join; a reply; a peer join (with material offered and a job); bob's answer.
            "hello_request.bin" => control(2, 2),
            "dealer_join.bin" | "reply.bin" | "peer_join.bin" | "join_answer.bin" => control(1, 1),
            other => panic!("unexpected corpus file {other}: add its expectation"),
        };
        assert_eq!(s, want, "{name}");
    }
}

#[test]
fn mutated_corpus_never_panics() {
    let mut rng = test_rng("fuzz_corpus");
    let seeds = corpus();
    let mut decoded_frames = 0usize;
    for i in 0..4000 {
        let (_, base) = &seeds[i % seeds.len()];
        let mut b = base.clone();
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..6) {
                0 if !b.is_empty() => {
                    let j = rng.gen_range(0..b.len());
                    b[j] ^= 1 << rng.gen_range(0..8);
                }
                1 if !b.is_empty() => b.truncate(rng.gen_range(0..b.len())),
                2 => {
                    let (_, other) = &seeds[rng.gen_range(0..seeds.len())];
                    b.extend_from_slice(other);
                }
                3 if b.len() >= 8 => {
                    // Rewrite the first length field with an edge value.
                    let edge = [0u64, 1, 4, 5, u64::MAX, 1 << 16, (1 << 16) + 1, 1 << 61];
                    let v = edge[rng.gen_range(0..edge.len())];
                    b[..8].copy_from_slice(&v.to_le_bytes());
                }
                4 if b.len() >= 16 => {
                    // Overwrite a word with an edge value (counts, tags, dimensions).
                    let j = 8 * rng.gen_range(0..b.len() / 8);
                    let edge = [0u64, 1, 7, 63, 64, u64::MAX, u32::MAX as u64 + 1, 1 << 40];
                    let v = edge[rng.gen_range(0..edge.len())];
                    b[j..j + 8].copy_from_slice(&v.to_le_bytes());
                }
                _ => {
                    let n = rng.gen_range(0..64);
                    b.extend((0..n).map(|_| rng.gen::<u8>()));
                }
            }
        }
        decoded_frames += decode_untrusted(&b).frames;
    }
    // Pure random bytes too.
    for _ in 0..1000 {
        let n = rng.gen_range(0..256);
        let b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        decode_untrusted(&b);
    }
    assert!(
        decoded_frames > 1000,
        "mutations decoded only {decoded_frames} frames"
    );
}

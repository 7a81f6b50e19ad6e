//! Model files: refused before anything is allocated when they are not regular files or their
//! header does not fit; shared straight from the memory map with the same results as in memory.

mod common;

use std::io::Write;

use engine::io::{load_safetensors_model, ModelFile};
use engine::nn::ModelSource;
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::PartyId;
use rand::Rng;

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("model-file-{}-{name}", std::process::id()))
}

#[test]
fn devices_and_lying_headers_are_refused_up_front() {
    let e = ModelFile::open("/dev/zero", "vgg16-head", "")
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = load_safetensors_model("/dev/zero", "linear", "").unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    // A header that claims a terabyte in a 24-byte file.
    let p = temp("liar.safetensors");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
    f.write_all(b"{\"a\":1}         ").unwrap();
    drop(f);
    let e = ModelFile::open(p.to_str().unwrap(), "linear", "")
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("header claims 1099511627776 bytes but the file holds 24"),
        "{e}"
    );
    // Shorter than the header length itself.
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    let e = ModelFile::open(p.to_str().unwrap(), "linear", "")
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("not a valid safetensors file"),
        "{e}"
    );
    let _ = std::fs::remove_file(&p);
}

#[test]
fn sharing_from_the_mapped_file_equals_sharing_in_memory() {
    let mut rng = common::test_rng("model_file_share");
    let (input, hidden, classes) = (37, 19, 5);
    let p = temp("head.safetensors");
    secure_serving::bench::write_random_head(&p, input, hidden, classes, &mut rng).unwrap();
    let file = ModelFile::open(p.to_str().unwrap(), "vgg16-head", "").unwrap();
    let plain = file.to_sequential().unwrap();
    assert_eq!(file.parameter_count(), plain.parameters());
    assert_eq!((file.in_features(), file.out_features()), (input, classes));
    let n = 9;
    let data: Vec<f64> = (0..n * input).map(|_| rng.gen_range(0.0..1.0)).collect();
    let mut logits = Vec::new();
    for from_file in [true, false] {
        let mut s = common::computation(
            engine::LocalConfig {
                test_seed: Some(7),
                ..Default::default()
            },
            engine::FixedPoint::default(),
        )
        .unwrap();
        let shared = if from_file {
            s.share_model(PartyId::ModelOwner, &file).unwrap()
        } else {
            s.share_model(PartyId::ModelOwner, &plain).unwrap()
        };
        logits.push(s.logits_for_client(&shared, &data, 4).unwrap());
        let source: &dyn ModelSource = if from_file { &file } else { &plain };
        let mut clf = SecureClassifier::upload(
            s.deployment(),
            source,
            &engine::FixedPoint::default(),
            &Default::default(),
        )
        .unwrap();
        let r = clf
            .classify(&data, None, &ClassifyOptions { batch: 4 })
            .unwrap();
        assert_eq!(r.predictions.len(), n);
    }
    // Same seeds, same encoded values: bit-identical results.
    assert_eq!(logits[0], logits[1]);
    let want = plain.forward_f64(&data, n).unwrap();
    for (g, w) in logits[0].iter().zip(&want) {
        assert!((g - w).abs() < 1e-2, "{g} vs {w}");
    }
    drop(file);
    let _ = std::fs::remove_file(&p);
}

//! No silent wrong answers: overflow refused before sharing, bad CLI input refused before any
//! work with no file changed, calibrated bounds checked at run time.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::cli;
use common::test_rng;
use engine::error::ErrorKind;
use engine::fixed::FixedPoint;
use engine::io::{load_labels, OutputFile};
use engine::nn::plain::{Layer, Sequential};
use engine::nn::range::{analyse, ModelBounds};
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::PartyId;
use ndarray::{Array1, Array2};
use rand::Rng;
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "secure-serving-refusals-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `d` with its bytes.
fn snapshot(d: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap_or_default();
            (p, b)
        })
        .collect()
}

/// Write `[name, shape, f32 values]` tensors.
fn write_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f64>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, sh, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, sh.clone(), b).unwrap(),
            )
        })
        .collect();
    serialize_to_file(views, &None, path).unwrap();
}

fn write_linear_model(path: &Path, layers: &[(usize, usize, Vec<f64>, Vec<f64>)], stride: usize) {
    let mut t = Vec::new();
    for (i, (inp, out, w, b)) in layers.iter().enumerate() {
        t.push((
            format!("{}.weight", i * stride),
            vec![*out, *inp],
            w.clone(),
        ));
        t.push((format!("{}.bias", i * stride), vec![*out], b.clone()));
    }
    write_tensors(path, &t);
}

fn write_x(path: &Path, rows: usize, cols: usize, v: &[f64]) {
    let x32: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    ndarray_npy::write_npy(path, &Array2::from_shape_vec((rows, cols), x32).unwrap()).unwrap();
}

fn argmax_rows(v: &[f64], classes: usize) -> Vec<i64> {
    v.chunks(classes)
        .map(|r| (0..classes).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as i64)
        .collect()
}

/// The example: 784 features in [0, 120], weights in [0, 1], `--frac-bits 24`.
#[test]
fn overflow_example_is_refused_before_sharing_and_a_safe_frac_bits_classifies() {
    let mut rng = test_rng("overflow_example");
    let (n, d, classes) = (30, 784, 10);
    let w: Vec<f64> = (0..d * classes)
        .map(|_| rng.gen_range(0.0..1.0f32) as f64)
        .collect();
    let b = vec![0.0; classes];
    let x: Vec<f64> = (0..n * d)
        .map(|_| rng.gen_range(0.0..120.0f32) as f64)
        .collect();
    let dd = dir("overflow");
    let (mp, xp, yp, op) = (
        dd.join("m.safetensors"),
        dd.join("x.npy"),
        dd.join("y.npy"),
        dd.join("pred.npy"),
    );
    write_linear_model(&mp, &[(d, classes, w.clone(), b.clone())], 1);
    write_x(&xp, n, d, &x);
    let model = Sequential::new(vec![Layer::linear(d, classes, w, b).unwrap()]).unwrap();
    let plain = model.forward_f64(&x, n).unwrap();
    let expected = argmax_rows(&plain, classes);
    ndarray_npy::write_npy(&yp, &Array1::from(expected.clone())).unwrap();
    let before = snapshot(&dd);
    let base = [
        "classify",
        "--model",
        s(&mp),
        "--arch",
        "linear",
        "--input",
        s(&xp),
        "--labels",
        s(&yp),
        "--output",
        s(&op),
    ];
    // Default input bound (16): the client refuses its own out-of-bound rows.
    let r = cli::run([&base[..], &["--frac-bits", "24"]].concat());
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: row 0, column ", s(&xp)))
            && err.contains("outside the model's declared input bound ±16"),
        "{err}"
    );
    // Declared bound 120 at 24 fractional bits: the range analysis refuses before sharing.
    let r = cli::run([&base[..], &["--frac-bits", "24", "--input-bound", "120"]].concat());
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("layer 0 Linear(784, 10) can overflow: its accumulator bound is 2^6")
            && err.contains("at or above the safe limit 2^62")
            && err.contains("nothing was shared"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&r.stdout).contains("Accuracy"));
    assert_eq!(snapshot(&dd), before, "a refused run changed a file");
    let safe: u32 = err
        .split("the largest safe --frac-bits is ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no safe --frac-bits in: {err}"));
    assert!((20..24).contains(&safe), "{err}");
    let safe_bound: f64 = err
        .split("the largest safe input bound at --frac-bits 24 is ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no safe input bound in: {err}"));
    assert!(safe_bound > 1.0 && safe_bound < 120.0, "{err}");
    // Both suggestions are safe and tight: one more bit (or a 10% larger bound) is refused.
    let bounds = ModelBounds::worst_case(120.0);
    let report = analyse(&model, &FixedPoint::new(safe).unwrap(), &bounds).unwrap();
    assert!(analyse(&model, &FixedPoint::new(safe + 1).unwrap(), &bounds).is_err());
    let f24 = FixedPoint::new(24).unwrap();
    assert!(analyse(&model, &f24, &ModelBounds::worst_case(safe_bound)).is_ok());
    assert!(analyse(&model, &f24, &ModelBounds::worst_case(safe_bound * 1.1)).is_err());
    // At the safe setting the secure predictions equal plaintext wherever the top-2 gap exceeds
    // twice the proven logit error (here: every row).
    let r = cli::run(
        [
            &base[..],
            &["--frac-bits", &safe.to_string(), "--input-bound", "120"],
        ]
        .concat(),
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        out.contains("headroom") && out.contains("worst layer 0 Linear(784, 10)"),
        "{out}"
    );
    let preds = load_labels(s(&op)).unwrap();
    for (i, row) in plain.chunks(classes).enumerate() {
        let mut v = row.to_vec();
        v.sort_by(|a, b| b.total_cmp(a));
        if v[0] - v[1] > 2.0 * report.logit_error {
            assert_eq!(preds[i], expected[i], "row {i}");
        }
    }
    assert!(out.contains(&format!("Accuracy: {n}/{n} (100%)")), "{out}");
}

/// Each refusal: exit code 1, the message, and no file in the directory changed.
#[test]
fn cli_refuses_bad_input_before_work_and_changes_no_file() {
    let mut rng = test_rng("cli_refusals");
    let dd = dir("cli");
    let lin = |rng: &mut rand_chacha::ChaCha20Rng, i: usize, o: usize| {
        (
            i,
            o,
            (0..i * o)
                .map(|_| rng.gen_range(-0.5..0.5))
                .collect::<Vec<f64>>(),
            (0..o)
                .map(|_| rng.gen_range(-0.5..0.5))
                .collect::<Vec<f64>>(),
        )
    };
    let (mp, m3, m0) = (
        dd.join("m.safetensors"),
        dd.join("m3.safetensors"),
        dd.join("m0.safetensors"),
    );
    write_linear_model(&mp, &[lin(&mut rng, 4, 3)], 1);
    write_linear_model(
        &m3,
        &[
            lin(&mut rng, 4, 5),
            lin(&mut rng, 5, 5),
            lin(&mut rng, 5, 3),
        ],
        2,
    );
    write_linear_model(&m0, &[(4, 0, vec![], vec![])], 1);
    let (xp, yp, x0, prev) = (
        dd.join("x.npy"),
        dd.join("y.npy"),
        dd.join("x0.npy"),
        dd.join("prev.npy"),
    );
    let x: Vec<f64> = (0..5 * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
    write_x(&xp, 5, 4, &x);
    write_x(&x0, 0, 4, &[]);
    ndarray_npy::write_npy(&yp, &Array1::from(vec![0i64, 1, 2, 0, 1])).unwrap();
    let (y_class, y_short) = (dd.join("y-class.npy"), dd.join("y-short.npy"));
    ndarray_npy::write_npy(&y_class, &Array1::from(vec![0i64, 1, 3, 0, 1])).unwrap();
    ndarray_npy::write_npy(&y_short, &Array1::from(vec![0i64, 1, 2])).unwrap();
    std::fs::write(&prev, b"previous predictions, must survive").unwrap();
    // A 128-byte .npy whose header claims a huge shape; one with trailing bytes; a 3-D one.
    let npy = |shape: &str, descr: &str, data: usize| {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(vec![0u8; data]);
        b
    };
    let (huge, trailing, dims3, ints) = (
        dd.join("huge.npy"),
        dd.join("trail.npy"),
        dd.join("d3.npy"),
        dd.join("ints.npy"),
    );
    let h = npy("(1000000000000, 4)", "<f4", 0);
    std::fs::write(&huge, npy("(1000000000000, 4)", "<f4", 128 - h.len())).unwrap();
    assert_eq!(std::fs::metadata(&huge).unwrap().len(), 128);
    std::fs::write(&trailing, npy("(2, 4)", "<f8", 2 * 4 * 8 + 3)).unwrap();
    std::fs::write(&dims3, npy("(2, 2, 1)", "<f8", 32)).unwrap();
    std::fs::write(&ints, npy("(2, 4)", "<i4", 32)).unwrap();
    let link = dd.join("x-link.npy");
    std::os::unix::fs::symlink(&xp, &link).unwrap();
    let hard = dd.join("x-hard.npy");
    std::fs::hard_link(&xp, &hard).unwrap();
    let missing = dd.join("no-such-dir").join("pred.npy");
    let good = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "classify",
            "--model",
            s(&mp),
            "--arch",
            "linear",
            "--input",
            s(&xp),
            "--labels",
            s(&yp),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let with = |args: Vec<String>, flag: &str, value: &str| -> Vec<String> {
        let mut v = args;
        let i = v.iter().position(|a| a == flag).unwrap();
        v[i + 1] = value.to_string();
        v
    };
    let relative_x = format!(
        "{}/../{}/x.npy",
        s(&dd),
        dd.file_name().unwrap().to_str().unwrap()
    );
    let cases: Vec<(Vec<String>, String)> = vec![
        (good(&["--output", s(&xp)]), format!("--output {} is the same file as --input", s(&xp))),
        (good(&["--output", &relative_x]), "is the same file as --input".into()),
        (good(&["--output", s(&link)]), "is the same file as --input".into()),
        (good(&["--output", s(&hard)]), "is the same file as --input".into()),
        (good(&["--output", s(&yp)]), "is the same file as --labels".into()),
        (good(&["--output", s(&mp)]), "is the same file as --model".into()),
        (good(&["--output", s(&missing)]), format!("the output directory {} does not exist", s(&dd.join("no-such-dir")))),
        (good(&["--output", s(&dd)]), "is a directory, not an output file".into()),
        (good(&["--output", "/proc/pred.npy"]), "the output directory /proc is not writable".into()),
        (good(&["--batch", "0", "--output", s(&prev)]), "--batch must be at least 1".into()),
        (with(good(&["--output", s(&prev)]), "--model", s(&m0)), "has no features".into()),
        (with(good(&["--output", s(&prev)]), "--input", s(&x0)), format!("{}: no input rows", s(&x0))),
        (with(good(&["--output", s(&prev)]), "--model", s(&m3)), "4 tensor(s) under prefix '' are not used by --arch linear: 2.bias, 2.weight, 4.bias, 4.weight".into()),
        (with(good(&["--output", s(&prev)]), "--input", s(&huge)), "file too short: the header claims shape [1000000000000, 4] of '<f4'".into()),
        (with(good(&["--output", s(&prev)]), "--input", s(&trailing)), "trailing bytes: shape [2, 4] of '<f8' needs 64 data bytes, the file has 67 (3 more)".into()),
        (with(good(&["--output", s(&prev)]), "--input", s(&dims3)), "wrong number of dimensions: shape [2, 2, 1] has 3".into()),
        (with(good(&["--output", s(&prev)]), "--input", s(&ints)), "dtype '<i4' is not supported".into()),
        (with(good(&["--output", s(&prev)]), "--labels", s(&xp)), "wrong number of dimensions: shape [5, 4] has 2, expected a 1-D int64/int32 array [N]".into()),
        (with(good(&["--output", s(&prev)]), "--arch", "LINEAR,relu,linear"), "tensor '2.weight' is missing".into()),
        (with(good(&["--output", s(&prev)]), "--labels", s(&y_class)), format!("{}: invalid argument: label 3 at index 2 is not a class index in 0..3", s(&y_class))),
        (with(good(&["--output", s(&prev)]), "--labels", s(&y_short)), "3 labels for 5 inputs".into()),
    ];
    let before = snapshot(&dd);
    for (args, msg) in &cases {
        let r = cli::run(args);
        cli::refused(args, msg);
        assert!(
            !String::from_utf8_lossy(&r.stdout).contains("Accuracy"),
            "{args:?} did work"
        );
        assert_eq!(snapshot(&dd), before, "{args:?} changed a file");
    }
    // A declared input bound that is not a positive number is refused while parsing (clap's
    // usage error, exit code 2), before any file is read.
    for bound in ["0", "-1", "nan", "inf"] {
        let flag = format!("--input-bound={bound}");
        let r = cli::run(
            good(&["--output", s(&prev), &flag])
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>(),
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains("must be a positive number"), "{flag}: {err}");
        assert_eq!(snapshot(&dd), before, "{flag} changed a file");
    }
    // With the explicit flag the extra tensors are accepted; a good run replaces the output whole.
    let r = cli::run(
        with(
            good(&["--output", s(&prev), "--allow-unused-tensors"]),
            "--model",
            s(&m3),
        )
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>(),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(load_labels(s(&prev)).unwrap().len(), 5);
    let after = snapshot(&dd);
    assert_eq!(
        after.len(),
        before.len(),
        "a temporary file was left behind"
    );
    // Presets are case-insensitive.
    assert_eq!(
        engine::nn::plain::parse_arch("VGG16-Head").unwrap(),
        engine::nn::plain::parse_arch("vgg16-head").unwrap()
    );
}

/// A failed write leaves the previous file intact and no temporary file behind.
#[test]
fn output_is_written_atomically() {
    let dd = dir("atomic");
    let p = dd.join("out.npy");
    std::fs::write(&p, b"old content").unwrap();
    let before = snapshot(&dd);
    let out = OutputFile::create(s(&p)).unwrap();
    let e = out
        .commit(|w| {
            w.write_all(b"half of the new")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("disk full"), "{e}");
    assert_eq!(snapshot(&dd), before);
    drop(OutputFile::create(s(&p)).unwrap());
    assert_eq!(snapshot(&dd), before);
    OutputFile::create(s(&p))
        .unwrap()
        .commit_predictions(&[3, 1])
        .unwrap();
    assert_eq!(load_labels(s(&p)).unwrap(), vec![3, 1]);
    assert_eq!(snapshot(&dd).len(), 1);
}

/// Calibrated bounds: in range the result equals plaintext; a value outside its calibrated range
/// fails the batch inside the secure computation, revealing one flag.
#[test]
fn calibrated_bounds_are_checked_at_run_time() {
    let mut rng = test_rng("calibrated");
    let (d, h, c) = (6, 5, 3);
    let mut lin = |i: usize, o: usize| {
        Layer::linear(
            i,
            o,
            (0..i * o).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            (0..o).map(|_| rng.gen_range(-0.1..0.1)).collect(),
        )
        .unwrap()
    };
    let model = Sequential::new(vec![
        lin(d, h),
        Layer::ReLU,
        lin(h, h),
        Layer::ReLU,
        lin(h, c),
    ])
    .unwrap();
    let n = 9;
    let x: Vec<f64> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let cal = engine::nn::range::calibrate(&model, &x, n, 1.5).unwrap();
    assert_eq!(cal.len(), 2);
    let bounds = ModelBounds {
        input_bound: 4.0,
        calibrated: Some(cal),
    };
    let mut s = common::computation(
        engine::LocalConfig::default(),
        engine::FixedPoint::default(),
    )
    .unwrap();
    let shared = s
        .share_model_with(PartyId::ModelOwner, &model, &bounds)
        .unwrap();
    assert!(shared
        .range()
        .expect("the owner's report")
        .summary()
        .contains("checked at run time"));
    let err = shared.range().expect("the owner's report").logit_error;
    let logits = s.logits_for_client(&shared, &x, 4).unwrap();
    let plain = model.forward_f64(&x, n).unwrap();
    for (a, b) in logits.iter().zip(&plain) {
        assert!((a - b).abs() <= err, "{a} vs {b} (bound {err})");
    }
    // Inputs at 4x the calibration data's scale (still within the input bound) leave the range.
    let big: Vec<f64> = x.iter().map(|v| v * 4.0).collect();
    let mut clf = SecureClassifier::upload(
        s.deployment(),
        &model,
        &engine::FixedPoint::default(),
        &bounds,
    )
    .unwrap();
    let e = clf
        .classify(&big, None, &ClassifyOptions { batch: 4 })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OverflowDetected, "{e}");
    assert!(e.to_string().contains("left its calibrated range"), "{e}");
    // The deployment still works afterwards.
    let r = clf
        .classify(&x, None, &ClassifyOptions { batch: 4 })
        .unwrap();
    assert_eq!(r.predictions, argmax_rows(&plain, c));
}

/// A successful GPU run prints nothing on stderr (no driver noise), and `demo` prints the margin.
#[test]
fn gpu_demo_prints_no_driver_noise() {
    let r = cli::bin()
        .args(["demo", "--backend", "gpu"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    if !r.status.success() && std::env::var("CI").as_deref() != Ok("true") {
        eprintln!("SKIP gpu demo: {err}");
        return;
    }
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{out}{err}");
    assert!(err.is_empty(), "stderr of a successful GPU run: {err}");
    assert!(
        out.contains("headroom") && out.contains("Accuracy: 1/1"),
        "{out}"
    );
}

/// A fixed operand used with another weight share than the one it was registered with is an
/// error, not a silently wrong product.
#[test]
fn fixed_operand_is_bound_to_its_weight() {
    let mut s = common::computation(
        engine::LocalConfig::default(),
        engine::FixedPoint::default(),
    )
    .unwrap();
    let w1 = s
        .share(PartyId::ModelOwner, &[2, 2], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    let w2 = s
        .share(PartyId::ModelOwner, &[2, 2], &[5.0, 6.0, 7.0, 8.0])
        .unwrap();
    let (i1, i2) = (w1.id(), w2.id());
    let [r, _] = s
        .run(move |p| {
            let w1 = p.kept(i1)?;
            let fid = p.fix_operand(&w1)?.id();
            // The registered weight (fetched again from the store) is accepted.
            p.fixed_operand(fid, &p.kept(i1)?)?;
            Ok(p.fixed_operand(fid, &p.kept(i2)?)
                .map(|_| ())
                .unwrap_err()
                .to_string())
        })
        .unwrap();
    assert!(
        r.contains("was registered with another weight share"),
        "{r}"
    );
}

/// Model-file errors: long tensor lists cut to a few with a count, safetensors errors in words.
#[test]
fn model_file_errors_say_what_to_fix() {
    let dd = dir("model_errors");
    let many = dd.join("many.safetensors");
    let t: Vec<(String, Vec<usize>, Vec<f64>)> = (0..2000)
        .map(|i| (format!("features.{i}.weight"), vec![1], vec![0.0]))
        .collect();
    write_tensors(&many, &t);
    let e = engine::io::load_safetensors_model(s(&many), "linear", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "tensor '0.weight' is missing (file has 2000: features.0.weight, features.1.weight,"
        ) && e.contains(" and 1994 more)"),
        "{e}"
    );
    assert!(e.len() < 400, "{e}");
    let garbage = dd.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    let e = engine::io::load_safetensors_model(s(&garbage), "linear", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a valid safetensors file: the header is larger than 100 MB"),
        "{e}"
    );
    let short = dd.join("short.safetensors");
    std::fs::write(&short, b"abc").unwrap();
    let e = engine::io::load_safetensors_model(s(&short), "linear", "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shorter than the 8-byte header size"), "{e}");
    // Unused tensors under a prefix: only those under the prefix count.
    let prefixed = dd.join("prefixed.safetensors");
    write_tensors(
        &prefixed,
        &[
            ("classifier.0.weight".into(), vec![2, 3], vec![0.1; 6]),
            ("classifier.0.bias".into(), vec![2], vec![0.0; 2]),
            ("features.0.weight".into(), vec![1], vec![0.0]),
        ],
    );
    let m = engine::io::load_safetensors_model(s(&prefixed), "linear", "classifier.").unwrap();
    assert_eq!((m.in_features(), m.out_features()), (3, 2));
    let e = engine::io::load_safetensors_model(s(&prefixed), "linear", "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor '0.weight' is missing"), "{e}");
}

/// `--calibrate`: a run within the calibrated ranges succeeds; inputs beyond them fail inside the
/// secure computation with exit code 1 and leave the previous output intact.
#[test]
fn cli_calibrated_mode_detects_out_of_range_batches() {
    let mut rng = test_rng("cli_calibrated");
    let dd = dir("cli_calibrated");
    let mut lin = |i: usize, o: usize| {
        (
            i,
            o,
            (0..i * o)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect::<Vec<f64>>(),
            (0..o)
                .map(|_| rng.gen_range(-0.1..0.1))
                .collect::<Vec<f64>>(),
        )
    };
    let layers = [lin(5, 7), lin(7, 3)];
    let mp = dd.join("m.safetensors");
    write_linear_model(&mp, &layers, 2);
    let n = 6;
    let x: Vec<f64> = (0..n * 5)
        .map(|i| ((i * 7919) % 200) as f64 / 100.0 - 1.0)
        .collect();
    let (xp, cp, bigp, op) = (
        dd.join("x.npy"),
        dd.join("cal.npy"),
        dd.join("big.npy"),
        dd.join("out.npy"),
    );
    write_x(&xp, n, 5, &x);
    write_x(&cp, n, 5, &x);
    write_x(&bigp, n, 5, &x.iter().map(|v| v * 8.0).collect::<Vec<_>>());
    let args = |input: &Path| -> Vec<String> {
        [
            "classify",
            "--model",
            s(&mp),
            "--arch",
            "linear,relu,linear",
            "--input",
            s(input),
            "--calibrate",
            s(&cp),
            "--output",
            s(&op),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let out = cli::ok(args(&xp));
    assert!(
        out.contains("calibrated bounds, checked at run time"),
        "{out}"
    );
    let before = snapshot(&dd);
    cli::refused(args(&bigp), "left its calibrated range");
    assert_eq!(snapshot(&dd), before, "a failed run changed a file");
}

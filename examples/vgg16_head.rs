//! A random-weight VGG16 classifier head (25088-4096-4096-7 by default) classifying a large
//! batch of random features under encryption, printing load time, throughput, traffic and the
//! peak memory of each role.
//!
//! The model owner streams the model from a safetensors file (written first, with random f32
//! weights) through a memory map to in-process services; classify makes each batch's
//! preprocessing while the previous batch runs online.
//!
//! `cargo run --release --example vgg16_head -- [input hidden classes inputs batch]`

use engine::io::ModelFile;
use engine::nn::ModelSource;
use engine::service::classifier::ClassifyOptions;
use engine::{FixedPoint, LocalConfig, LocalDeployment, PartyId};
use rand::{Rng, SeedableRng};

#[global_allocator]
static ALLOC: engine::memory::CountingAllocator = engine::memory::CountingAllocator;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numeric arguments: input hidden classes inputs batch")
        })
        .collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (input, hidden, classes, inputs, batch) = (
        get(0, 25088),
        get(1, 4096),
        get(2, 7),
        get(3, 256),
        get(4, 64),
    );
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let path = std::env::temp_dir().join(format!("vgg16-head-{}.safetensors", std::process::id()));
    secure_serving::bench::write_random_head(&path, input, hidden, classes, &mut rng)
        .expect("write the model file");
    let deployment = LocalDeployment::start(LocalConfig::default()).expect("in-process services");
    engine::memory::reset_peaks();
    let t = std::time::Instant::now();
    let file =
        ModelFile::open(path.to_str().expect("utf-8 path"), "vgg16-head", "").expect("open model");
    println!(
        "VGG16 head {input}-{hidden}-{hidden}-{classes}: {} parameters",
        file.parameter_count()
    );
    let mut clf = secure_serving::local::upload_with_progress(
        &deployment,
        &file,
        &FixedPoint::default(),
        &engine::nn::range::ModelBounds::default(),
    )
    .expect("upload");
    println!(
        "model loaded (mmap), encoded, shared, masked and prepacked in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let share_bytes = 8 * file.parameter_count() as u64;
    drop(file);
    let _ = std::fs::remove_file(&path);
    let data: Vec<f64> = (0..inputs * input)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    let labels: Vec<i64> = (0..inputs)
        .map(|_| rng.gen_range(0..classes as i64))
        .collect();
    let r = clf
        .classify(&data, Some(&labels), &ClassifyOptions { batch })
        .expect("classify");
    println!(
        "{} inputs in {:.2} s: {:.1} inputs/s (preprocessing included; {} of {} batches on material made ahead); correct (random labels): {}",
        r.inputs,
        r.seconds,
        r.inputs as f64 / r.seconds,
        r.pooled_batches,
        r.batches,
        r.correct.unwrap_or(0)
    );
    for (i, t) in r.traffic.iter().enumerate() {
        println!(
            "{}: {:.1} MB sent per batch, {} rounds per batch",
            PartyId::compute(i),
            t.bytes_sent as f64 / 1e6 / r.batches as f64,
            t.rounds / r.batches as u64
        );
    }
    drop(clf);
    secure_serving::bench_memory::print_memory(share_bytes);
    if let Some(rss) = engine::memory::process_peak_rss_bytes() {
        println!(
            "process peak resident memory (VmHWM, everything incl. the example's own data): {:.2} GB",
            rss as f64 / 1e9
        );
    }
}

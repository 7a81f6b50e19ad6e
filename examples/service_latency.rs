//! Latency of the tutorial's Linear(1,1) request through the in-process services:
//! `cargo run --release --example service_latency -- [channels|tcp|tls] [REQUESTS]`.

use engine::nn::{ModelBounds, Sequential};
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::{FixedPoint, TransportKind};

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let transport: TransportKind = args.get(1).map_or(Ok(TransportKind::Tls), |s| s.parse())?;
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let d = LocalDeployment::start(LocalConfig {
        transport,
        ..Default::default()
    })?;
    let model = Sequential::tutorial_linear();
    let mut owner = d.model_owner()?;
    owner.upload(
        "linear",
        &model,
        &FixedPoint::default(),
        &ModelBounds::default(),
        &mut |_, _| {},
    )?;
    let mut client = d.client()?;
    client.classify("linear", &[0.0], Some(&[0]), 1)?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let r = client.classify("linear", &[0.0], Some(&[0]), 1)?;
        assert_eq!(r.predictions, vec![0]);
        times.push(r.stats.seconds * 1e3);
        // The tutorial's model owner then learns the correct count (not timed).
        assert_eq!(owner.score(r.stats.request)?, 1);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{transport:?}: {n} Linear(1,1) requests (share input and label, forward, argmax, eq, sum, reveal): p50 {:.3} ms, p99 {:.3} ms",
        times[n / 2],
        times[n * 99 / 100]
    );
    Ok(())
}

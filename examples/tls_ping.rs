//! Round trips over the mutually authenticated TLS transport between alice (listening at her
//! address in a deployment file) and bob, for `scripts/netsim.sh`.
//!
//! ```text
//! tls_ping server DEPLOY.toml KEYDIR
//! tls_ping client DEPLOY.toml KEYDIR [ROUNDS] [BIG_WORDS]
//! ```
//! The server echoes every message until bob disconnects. The client measures ROUNDS one-word
//! round trips and one echo of BIG_WORDS words, and prints the median and 99th-percentile round
//! trip and the large echo's time.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use engine::deploy::keys::read_credentials;
use engine::deploy::{Deployment, Role};
use engine::transport::{StreamOptions, StreamTransport, TlsEndpoint, Transport};
use engine::{EngineError, PartyId, Result};

fn endpoint(d: &Deployment, keys: &Path, role: Role) -> Result<TlsEndpoint> {
    let (ca, creds) = read_credentials(keys, &role)?;
    TlsEndpoint::new(&d.name, role, &ca, Some(&creds))
}

fn io(e: std::io::Error) -> EngineError {
    EngineError::Protocol(e.to_string())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(EngineError::Invalid(
            "usage: tls_ping server|client DEPLOY.toml KEYDIR [ROUNDS] [BIG_WORDS]".into(),
        ));
    }
    let d = Deployment::load(Path::new(&args[2]))?;
    let keys = Path::new(&args[3]);
    let mut options = StreamOptions::with_timeout(d.timeout());
    options.max_frame_words = d.max_frame_words();
    match args[1].as_str() {
        "server" => {
            let me = endpoint(&d, keys, Role::Alice)?;
            let listener = TcpListener::bind(&d.alice).map_err(io)?;
            let (stream, _) = listener.accept().map_err(io)?;
            let (_, link) = me.accept(stream, &[Role::Bob], d.timeout())?;
            let mut t = StreamTransport::new(PartyId::Alice, options);
            t.add_link(PartyId::Bob, link);
            loop {
                match t.recv(PartyId::Bob) {
                    Ok(m) => t.send(PartyId::Bob, m)?,
                    Err(EngineError::Disconnected { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        "client" => {
            let rounds: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(200);
            let big: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
            let me = endpoint(&d, keys, Role::Bob)?;
            let start = Instant::now();
            let stream = loop {
                match TcpStream::connect(&d.alice) {
                    Ok(s) => break s,
                    Err(e) if start.elapsed() < d.timeout() => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(io(e)),
                }
            };
            let t0 = Instant::now();
            let link = me.connect(stream, &Role::Alice, d.timeout())?;
            let handshake = t0.elapsed();
            let mut t = StreamTransport::new(PartyId::Bob, options);
            t.add_link(PartyId::Alice, link);
            let mut times = Vec::with_capacity(rounds);
            for i in 0..rounds {
                let t0 = Instant::now();
                t.send(PartyId::Alice, vec![i as u64])?;
                let got = t.recv(PartyId::Alice)?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                if got != [i as u64] {
                    return Err(EngineError::Protocol("echo differs".into()));
                }
            }
            times.sort_by(f64::total_cmp);
            let msg: Vec<u64> = (0..big as u64).collect();
            let t0 = Instant::now();
            t.send(PartyId::Alice, msg.clone())?;
            let got = t.recv(PartyId::Alice)?;
            let big_ms = t0.elapsed().as_secs_f64() * 1e3;
            if got != msg {
                return Err(EngineError::Protocol("large echo differs".into()));
            }
            let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
            println!(
                "handshake {:.2} ms; {rounds} round trips: p50 {:.3} ms, p99 {:.3} ms; echo of {} \
                 MiB: {big_ms:.1} ms (about {:.0} Mbit/s one way)",
                handshake.as_secs_f64() * 1e3,
                pct(0.5),
                pct(0.99),
                (big * 8) >> 20,
                64.0 * big as f64 / (big_ms / 2e3) / 1e6
            );
            Ok(())
        }
        other => Err(EngineError::Invalid(format!(
            "unknown mode '{other}' (server or client)"
        ))),
    }
}

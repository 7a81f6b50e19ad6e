//! A user-space TCP delay proxy for network emulation where the kernel has no `netem`
//! (`scripts/service-bench.sh` uses it): forwards every connection accepted on a listen address
//! to a target address, holding each chunk read for a fixed one-way delay per direction while
//! keeping the order of the bytes. Bandwidth is shaped elsewhere (`tc tbf`).
//!
//! `delay_proxy --delay-us D --seconds S LISTEN=TARGET [LISTEN=TARGET ...]`
//!
//! Each direction of a connection is a reader thread that timestamps every chunk and a writer
//! thread that sends it once its time has come (a FIFO channel keeps the order). The proxy
//! exits after S seconds (bounded run time), closing every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes read at most per chunk.
const CHUNK: usize = 64 * 1024;

fn usage() -> ! {
    eprintln!("usage: delay_proxy --delay-us D --seconds S LISTEN=TARGET [LISTEN=TARGET ...]");
    std::process::exit(2);
}

/// Copy `from` to `to`, each chunk delayed by `delay` after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        // An empty chunk marks the end of the stream.
        while let Ok((due, bytes)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if bytes.is_empty() || to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = tx.send((Instant::now() + delay, Vec::new()));
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

fn serve(listen: String, target: String, delay: Duration) {
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("delay_proxy: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let target = target.clone();
        std::thread::spawn(move || {
            let upstream = match TcpStream::connect(&target) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("delay_proxy: cannot reach {target}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                return;
            };
            let back = std::thread::spawn(move || pump(u2, c2, delay));
            pump(client, upstream, delay);
            let _ = back.join();
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut delay_us, mut seconds, mut routes) = (None, None, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--delay-us" => delay_us = args.next().and_then(|v| v.parse::<u64>().ok()),
            "--seconds" => seconds = args.next().and_then(|v| v.parse::<u64>().ok()),
            route => match route.split_once('=') {
                Some((l, t)) if !l.is_empty() && !t.is_empty() => {
                    routes.push((l.to_string(), t.to_string()))
                }
                _ => usage(),
            },
        }
    }
    let (Some(delay_us), Some(seconds)) = (delay_us, seconds) else {
        usage()
    };
    if routes.is_empty() || seconds == 0 || delay_us > 10_000_000 {
        usage();
    }
    let delay = Duration::from_micros(delay_us);
    for (l, t) in routes {
        eprintln!("delay_proxy: {l} -> {t}, {delay_us} us each way");
        std::thread::spawn(move || serve(l, t, delay));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    eprintln!("delay_proxy: {seconds} s are up, exiting");
}

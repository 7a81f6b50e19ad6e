//! Transports: TCP framing, no deadlock on simultaneous large sends, timeouts, disconnects, and
//! whole protocols over loopback TCP giving the same bits and byte counts as channels.

mod common;

use std::time::Duration;

use common::test_rng;
use engine::nn::plain::vgg16_head;
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::transport::{tcp_mesh, tcp_mesh_with, StreamOptions, Transport};
use engine::{Computation, PartyId, TransportKind};
use rand::Rng;

#[test]
fn tcp_exchanges_large_messages_both_ways_at_once() {
    let mut rng = test_rng("tcp_large");
    let mut mesh = tcp_mesh(&[PartyId::Alice, PartyId::Bob], Duration::from_secs(30)).unwrap();
    let mut alice = mesh.remove(&PartyId::Alice).unwrap();
    let mut bob = mesh.remove(&PartyId::Bob).unwrap();
    // Far larger than any socket buffer: both send first, then both receive.
    let a: Vec<u64> = (0..3_000_000).map(|_| rng.gen()).collect();
    let b: Vec<u64> = (0..2_000_001).map(|_| rng.gen()).collect();
    let (a2, b2) = (a.clone(), b.clone());
    let t = std::thread::spawn(move || {
        bob.send(PartyId::Alice, b2).unwrap();
        bob.send(PartyId::Alice, vec![]).unwrap();
        let got = bob.recv(PartyId::Alice).unwrap();
        (got, bob)
    });
    alice.send(PartyId::Bob, a2).unwrap();
    assert_eq!(alice.recv(PartyId::Bob).unwrap(), b);
    assert_eq!(alice.recv(PartyId::Bob).unwrap(), Vec::<u64>::new());
    let (got, bob) = t.join().unwrap();
    assert_eq!(got, a);
    let stats = alice.meter_ref().stats().total();
    assert_eq!(stats.bytes_sent, 8 * a.len() as u64);
    assert_eq!(stats.bytes_received, 8 * b.len() as u64);
    drop(bob);
}

#[test]
fn tcp_reports_stalls_and_closed_peers() {
    // Links send heartbeats, so a peer that is alive but sends nothing is caught by `max_wait`
    // (a silent link, without heartbeats, by `timeout`).
    let options = StreamOptions {
        max_wait: Duration::from_millis(500),
        ..StreamOptions::with_timeout(Duration::from_millis(200))
    };
    let mut mesh = tcp_mesh_with(&[PartyId::Alice, PartyId::Bob], options).unwrap();
    let mut alice = mesh.remove(&PartyId::Alice).unwrap();
    let e = alice.recv(PartyId::Bob).unwrap_err();
    assert!(
        e.to_string()
            .contains("alice: bob is alive but sent nothing for 500ms"),
        "{e}"
    );
    // The failed link is dropped; a peer that closes its end is reported as closed.
    let mut mesh = tcp_mesh(&[PartyId::Alice, PartyId::Bob], Duration::from_millis(200)).unwrap();
    let mut alice = mesh.remove(&PartyId::Alice).unwrap();
    drop(mesh);
    let e = alice.recv(PartyId::Bob).unwrap_err();
    assert!(
        e.to_string().contains("alice: connection to bob closed"),
        "{e}"
    );
}

fn run_flow(transport: TransportKind, seed: u64) -> (Vec<Vec<u64>>, Option<u64>, Vec<u64>) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    // Material on demand only (pool 0): material made ahead in the background would change the
    // order in which the dealer draws request seeds, and with it the bits.
    let mut s = common::computation(
        engine::LocalConfig {
            transport,
            test_seed: Some(seed),
            pool: 0,
            ..Default::default()
        },
        engine::FixedPoint::default(),
    )
    .unwrap();
    let (m, k, n) = (9usize, 40usize, 13usize);
    let x: Vec<u64> = (0..m * k)
        .map(|_| rng.gen_range(-(1i64 << 20)..(1i64 << 20)) as u64)
        .collect();
    let w: Vec<u64> = (0..k * n)
        .map(|_| rng.gen_range(-(1i64 << 16)..(1i64 << 16)) as u64)
        .collect();
    let wh = s.share_ring(PartyId::ModelOwner, &[k, n], &w).unwrap();
    let xh = s.share_ring(PartyId::Client, &[m, k], &x).unwrap();
    let (wid, xid) = (wh.id(), xh.id());
    let [ids, _] = s
        .run(move |p| {
            let (w, x) = (p.kept(wid)?, p.kept(xid)?);
            let fixed = p.fix_operand(&w)?;
            let z = p.matmul_fixed(&x, &fixed)?;
            let r = p.relu(&z)?;
            let a = p.argmax_last(&r)?;
            Ok([p.keep(z), p.keep(r), p.keep(a)])
        })
        .unwrap();
    let revealed = ids
        .iter()
        .map(|&id| {
            s.reveal_ring(PartyId::ModelOwner, &Computation::handle(id, &[1]))
                .unwrap()
        })
        .collect();
    let head = vgg16_head(32, 16, 5, &mut rng);
    let data: Vec<f64> = (0..24 * 32).map(|_| rng.gen_range(0.0..1.0)).collect();
    let labels: Vec<i64> = (0..24).map(|_| rng.gen_range(0..5)).collect();
    let mut clf = SecureClassifier::upload(
        s.deployment(),
        &head,
        &engine::FixedPoint::default(),
        &Default::default(),
    )
    .unwrap();
    let r = clf
        .classify(&data, Some(&labels), &ClassifyOptions { batch: 10 })
        .unwrap();
    let bytes = vec![
        r.traffic[0].bytes_sent,
        r.traffic[1].bytes_sent,
        r.traffic[0].rounds,
    ];
    (revealed, r.correct, bytes)
}

use rand::SeedableRng;

#[test]
fn protocols_over_tcp_give_the_same_bits_and_bytes_as_channels() {
    let seed: u64 = test_rng("tcp_flow").gen();
    let over_tcp = run_flow(TransportKind::Tcp, seed);
    let over_channels = run_flow(TransportKind::Channels, seed);
    assert_eq!(over_tcp, over_channels);
}

#[test]
fn protocols_over_tls_give_the_same_bits_and_bytes_as_channels() {
    let seed: u64 = test_rng("tls_flow").gen();
    let over_tls = run_flow(TransportKind::Tls, seed);
    let over_channels = run_flow(TransportKind::Channels, seed);
    assert_eq!(over_tls, over_channels);
}

/// A stream endpoint for `PartyId::Alice` whose only link is a raw socket the test writes to.
fn raw_peer(max_frame_words: u64) -> (engine::transport::StreamTransport, std::net::TcpStream) {
    use engine::transport::{Link, StreamOptions, StreamTransport};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut t = StreamTransport::new(
        PartyId::Alice,
        StreamOptions {
            timeout: Duration::from_secs(5),
            max_frame_words,
            max_wait: Duration::from_secs(5),
            ..StreamOptions::with_timeout(Duration::from_secs(5))
        },
    );
    t.add_link(PartyId::Bob, Link::tcp(accepted, None).unwrap());
    (t, raw)
}

#[test]
fn oversized_truncated_and_garbage_frames_are_refused() {
    use std::io::Write;
    // A header claiming 2^40 words (8 TiB) against a 1000-word limit: refused before allocating.
    let (mut alice, mut raw) = raw_peer(1000);
    raw.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
    let e = alice.recv(PartyId::Bob).unwrap_err().to_string();
    assert!(
        e.contains("bob sent a frame of 1099511627776 words, over the limit of 1000 words"),
        "{e}"
    );
    // The link is dropped for good: the stream is out of step.
    let e = alice.recv(PartyId::Bob).unwrap_err().to_string();
    assert!(e.contains("alice has no link to bob"), "{e}");

    // A frame cut short by a disconnect: the peer left (a typed `Disconnected` naming it, so a
    // request's failure is put on the peer that went away; how much arrived is logged at debug).
    let (mut alice, mut raw) = raw_peer(1000);
    raw.write_all(&10u64.to_le_bytes()).unwrap();
    raw.write_all(&[7u8; 24]).unwrap();
    drop(raw);
    let e = alice.recv(PartyId::Bob).unwrap_err().to_string();
    assert!(e.contains("alice: connection to bob closed"), "{e}");

    // A header cut short (garbage of 3 bytes, then close).
    let (mut alice, mut raw) = raw_peer(1000);
    raw.write_all(&[1, 2, 3]).unwrap();
    drop(raw);
    let e = alice.recv(PartyId::Bob).unwrap_err().to_string();
    assert!(e.contains("alice: connection to bob closed"), "{e}");

    // Exactly at the limit (envelope included) is fine, heartbeats (empty frames) are
    // skipped, and the link stays usable.
    let step = engine::transport::step_code("other");
    let (mut alice, mut raw) = raw_peer(4);
    for (seq, msg) in [vec![7u64], vec![]].into_iter().enumerate() {
        raw.write_all(&0u64.to_le_bytes()).unwrap(); // heartbeat
        raw.write_all(&(3 + msg.len() as u64).to_le_bytes())
            .unwrap();
        for w in [0, seq as u64, step].iter().chain(&msg) {
            raw.write_all(&w.to_le_bytes()).unwrap();
        }
        assert_eq!(alice.recv(PartyId::Bob).unwrap(), msg);
    }

    // A frame too short to carry an envelope is garbage.
    let (mut alice, mut raw) = raw_peer(100);
    raw.write_all(&2u64.to_le_bytes()).unwrap();
    raw.write_all(&[9u8; 16]).unwrap();
    let e = alice.recv(PartyId::Bob).unwrap_err().to_string();
    assert!(
        e.contains("bob sent a malformed frame (2 words, no envelope)"),
        "{e}"
    );

    // A well-formed message of another request, or out of sequence, is refused, never data.
    for (request, seq, what) in [
        (5u64, 0u64, "request 5 (expected request 0)"),
        (0, 1, "message 1 (expected message 0)"),
    ] {
        let (mut alice, mut raw) = raw_peer(100);
        raw.write_all(&4u64.to_le_bytes()).unwrap();
        for w in [request, seq, step, 42] {
            raw.write_all(&w.to_le_bytes()).unwrap();
        }
        let e = alice.recv(PartyId::Bob).unwrap_err().to_string();
        assert!(
            e.contains(&format!("bob sent a message for {what}: out of step")),
            "{e}"
        );
    }
}

/// A failure notice: the receiver's next receive fails with the sender's failure (its kind,
/// reason and the service it is about) instead of waiting or only seeing the link close; a
/// notice of an earlier request (a link kept for reuse) reads as a closed link.
#[test]
fn a_failure_notice_fails_the_peers_next_receive_with_its_reason() {
    use engine::error::ErrorKind;
    use engine::transport::{Link, StreamTransport};
    use engine::EngineError;
    for (request_at_alice, same) in [(7u64, true), (8, false)] {
        let (to_bob, to_alice) = Link::in_process();
        let options = StreamOptions::with_timeout(Duration::from_secs(30));
        let mut alice = StreamTransport::new(PartyId::Alice, options);
        let mut bob = StreamTransport::new(PartyId::Bob, options);
        alice.add_link(PartyId::Bob, to_bob);
        bob.add_link(PartyId::Alice, to_alice);
        alice.set_request(request_at_alice);
        bob.set_request(7);
        bob.send_failure(
            PartyId::Alice,
            ErrorKind::Refused,
            Some(PartyId::Dealer),
            "the dealer's reason",
        )
        .unwrap();
        let e = alice.recv(PartyId::Bob).expect_err("a failure");
        match (same, e) {
            (
                true,
                EngineError::Remote {
                    party,
                    kind,
                    detail,
                    about,
                },
            ) => {
                assert_eq!(
                    (party, kind, detail.as_str(), about),
                    (
                        PartyId::Bob,
                        ErrorKind::Refused,
                        "the dealer's reason",
                        Some(PartyId::Dealer)
                    )
                );
            }
            (false, EngineError::Disconnected { me, peer }) => {
                assert_eq!((me, peer), (PartyId::Alice, PartyId::Bob));
            }
            (_, e) => panic!("request {request_at_alice}: unexpected {e}"),
        }
    }
}

//! Mutually authenticated TLS: keys from the deployment file, role checks on both sides, and
//! refusals (wrong role, another CA, no certificate) that are logged.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::deploy::{generate_keys, keys::read_credentials, write_keys, Deployment, KeySet, Role};
use engine::transport::{Link, StreamOptions, StreamTransport, TlsEndpoint, Transport};
use engine::PartyId;
use rustls::pki_types::pem::PemObject;

const TIMEOUT: Duration = Duration::from_secs(10);
const DEPLOYMENT: &str = "test";

fn roles() -> Vec<Role> {
    vec![
        Role::Alice,
        Role::Bob,
        Role::Dealer,
        Role::ModelOwner("hospital".into()),
        Role::Client("clinic".into()),
    ]
}

fn endpoint(keys: &KeySet, role: Role) -> TlsEndpoint {
    let creds = keys.credentials(&role).unwrap();
    TlsEndpoint::new(DEPLOYMENT, role, &keys.ca.cert_pem, Some(creds)).unwrap()
}

/// Log lines captured from `tracing` on the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn transport(me: PartyId, peer: PartyId, link: Link) -> StreamTransport {
    let mut t = StreamTransport::new(me, StreamOptions::with_timeout(TIMEOUT));
    t.add_link(peer, link);
    t
}

/// `client` connects to `server` (expecting it to be `expect`); `server` accepts `allowed`.
/// On success both exchange one message. Returns (server result, client result, server logs,
/// client logs).
fn handshake(
    server: TlsEndpoint,
    allowed: Vec<Role>,
    client: TlsEndpoint,
    expect: Role,
) -> (Result<Role, String>, Result<(), String>, String, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client_thread = std::thread::spawn(move || {
        with_logs(|| -> Result<(), String> {
            let stream = TcpStream::connect(addr).unwrap();
            let link = client
                .connect(stream, &expect, TIMEOUT)
                .map_err(|e| e.to_string())?;
            let mut t = transport(PartyId::Bob, PartyId::Alice, link);
            t.send(PartyId::Alice, vec![1, 2, 3])
                .map_err(|e| e.to_string())?;
            let got = t.recv(PartyId::Alice).map_err(|e| e.to_string())?;
            assert_eq!(got, vec![4, 5]);
            Ok(())
        })
    });
    let (server_result, server_logs) = with_logs(|| {
        let (stream, _) = listener.accept().unwrap();
        let (role, link) = server
            .accept(stream, &allowed, TIMEOUT)
            .map_err(|e| e.to_string())?;
        let mut t = transport(PartyId::Alice, PartyId::Bob, link);
        assert_eq!(t.recv(PartyId::Bob).unwrap(), vec![1, 2, 3]);
        t.send(PartyId::Bob, vec![4, 5]).unwrap();
        // Keep the link until the client has read the reply.
        std::thread::sleep(Duration::from_millis(50));
        Ok(role)
    });
    let (client_result, client_logs) = client_thread.join().unwrap();
    (server_result, client_result, server_logs, client_logs)
}

#[test]
fn peers_with_the_right_roles_connect() {
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    let (s, c, _, _) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob, Role::Client("clinic".into())],
        endpoint(&keys, Role::Bob),
        Role::Alice,
    );
    assert_eq!(s.unwrap(), Role::Bob);
    c.unwrap();
    // A named data owner is identified by name.
    let (s, c, _, _) = handshake(
        endpoint(&keys, Role::Bob),
        vec![Role::Alice, Role::Client("clinic".into())],
        endpoint(&keys, Role::Client("clinic".into())),
        Role::Bob,
    );
    assert_eq!(s.unwrap(), Role::Client("clinic".into()));
    c.unwrap();
}

#[test]
fn a_client_certificate_for_another_role_is_refused_and_logged() {
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    // A client (data owner) tries to reach alice where only bob is allowed.
    let (s, c, server_logs, _) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob],
        endpoint(&keys, Role::Client("clinic".into())),
        Role::Alice,
    );
    let e = s.unwrap_err();
    assert!(
        e.contains("alice: TLS connection with an incoming peer"),
        "{e}"
    );
    assert!(e.contains("refused"), "{e}");
    assert!(c.is_err(), "the refused client must not get a working link");
    assert!(
        server_logs.contains("TLS connection refused"),
        "{server_logs}"
    );
    assert!(server_logs.contains("NotValidForName"), "{server_logs}");
}

#[test]
fn a_server_certificate_for_another_role_is_refused_and_logged() {
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    // Bob means to reach the dealer but the service answering is alice.
    let (s, c, _, client_logs) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob],
        endpoint(&keys, Role::Bob),
        Role::Dealer,
    );
    let e = c.unwrap_err();
    assert!(e.contains("bob: TLS connection with dealer"), "{e}");
    assert!(e.contains("refused"), "{e}");
    assert!(s.is_err());
    assert!(
        client_logs.contains("TLS connection refused"),
        "{client_logs}"
    );
}

#[test]
fn certificates_from_another_ca_are_refused_both_ways() {
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    // Same deployment name and role names, different CA.
    let other = generate_keys(DEPLOYMENT, &roles()).unwrap();
    let (s, c, server_logs, _) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob],
        endpoint(&other, Role::Bob),
        Role::Alice,
    );
    assert!(c.is_err());
    let e = s.unwrap_err();
    assert!(e.contains("refused"), "{e}");
    assert!(
        server_logs.contains("TLS connection refused"),
        "{server_logs}"
    );
    // A client that trusts the right CA but holds a certificate from another deployment's
    // CA is refused and reads the alert that says why.
    let foreign = generate_keys("elsewhere", &roles()).unwrap();
    let stranger = TlsEndpoint::new(
        DEPLOYMENT,
        Role::Bob,
        &keys.ca.cert_pem,
        foreign.credentials(&Role::Bob),
    )
    .unwrap();
    let (s, c, _, _) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob],
        stranger,
        Role::Alice,
    );
    assert!(s.unwrap_err().contains("UnknownIssuer"));
    let e = c.unwrap_err();
    assert!(e.contains("unknown CA"), "{e}");
    // A server whose certificate comes from another CA: the client refuses it.
    let (s, c, _, client_logs) = handshake(
        endpoint(&other, Role::Alice),
        vec![Role::Bob],
        endpoint(&keys, Role::Bob),
        Role::Alice,
    );
    assert!(s.is_err());
    let e = c.unwrap_err();
    assert!(e.contains("invalid peer certificate"), "{e}");
    assert!(
        client_logs.contains("TLS connection refused"),
        "{client_logs}"
    );
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    let anonymous = TlsEndpoint::new(DEPLOYMENT, Role::Bob, &keys.ca.cert_pem, None).unwrap();
    let (s, c, server_logs, _) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob],
        anonymous,
        Role::Alice,
    );
    assert!(c.is_err());
    let e = s.unwrap_err();
    assert!(e.contains("refused"), "{e}");
    assert!(
        server_logs.contains("TLS connection refused"),
        "{server_logs}"
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ss-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn keygen_writes_private_keys_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let deployment = Deployment::parse(
        r#"
name = "test"
[alice]
address = "127.0.0.1:4000"
[bob]
address = "127.0.0.1:4001"
[dealer]
address = "127.0.0.1:4002"
[[data_owner]]
name = "hospital"
role = "model-owner"
[[data_owner]]
name = "clinic"
role = "client"
"#,
    )
    .unwrap();
    let dir = temp_dir("keygen");
    let files = write_keys(&deployment, &dir, false).unwrap();
    assert_eq!(files.len(), 2 + 2 * 5);
    let mut keys = 0;
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        if f.extension().unwrap() == "key" {
            keys += 1;
            assert_eq!(mode, 0o600, "{}", f.display());
        } else {
            assert_eq!(mode, 0o644, "{}", f.display());
        }
    }
    assert_eq!(keys, 1 + 5, "the CA's key and one per role");
    // Nothing but the planned files (no temporary file left behind).
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), files.len());
    let e = write_keys(&deployment, &dir, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing to overwrite existing keys"), "{e}");
    assert!(e.contains("--force"), "{e}");
    let before = std::fs::read(dir.join("alice.key")).unwrap();
    write_keys(&deployment, &dir, true).unwrap();
    assert_ne!(std::fs::read(dir.join("alice.key")).unwrap(), before);
    // The written files make working endpoints.
    let load = |role: Role| {
        let (ca, creds) = read_credentials(&dir, &role).unwrap();
        TlsEndpoint::new("test", role, &ca, Some(&creds)).unwrap()
    };
    let (s, c, _, _) = handshake(
        load(Role::Bob),
        vec![Role::ModelOwner("hospital".into())],
        load(Role::ModelOwner("hospital".into())),
        Role::Bob,
    );
    assert_eq!(s.unwrap(), Role::ModelOwner("hospital".into()));
    c.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keygen_command_writes_keys_and_reports_bad_files() {
    let dir = temp_dir("keygen-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("deploy.toml");
    let bin = env!("CARGO_BIN_EXE_secure-serving");
    let keygen = |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["keygen", "--deployment"])
            .arg(&file)
            .arg("--out")
            .arg(dir.join("keys"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(
        &file,
        "name = \"cli\"\n[alice]\naddress = \"127.0.0.1:1\"\n[bob]\naddress = \"127.0.0.1:2\"\n\
         [dealer]\naddress = \"127.0.0.1:3\"\n[[data_owner]]\nname = \"x\"\nrole = \"auditor\"\n",
    )
    .unwrap();
    let (ok, _, err) = keygen(&[]);
    assert!(!ok);
    assert!(
        err.contains("data owner 'x': unknown role 'auditor'"),
        "{err}"
    );
    assert!(!dir.join("keys").exists(), "nothing written for a bad file");
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("auditor", "client"),
    )
    .unwrap();
    let (ok, out, err) = keygen(&[]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote a CA and 4 certificates"), "{out}");
    assert!(dir.join("keys/client-x.key").exists());
    let (ok, _, err) = keygen(&[]);
    assert!(!ok);
    assert!(err.contains("refusing to overwrite existing keys"), "{err}");
    let (ok, _, err) = keygen(&["--force"]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run one rustls handshake over loopback between `server` (accepting `allowed`) and a client
/// with `client_config` that means to reach `expect`; returns both connections (or the errors).
fn raw_handshake(
    server: &TlsEndpoint,
    allowed: &[Role],
    client_config: Arc<rustls::ClientConfig>,
    expect: &Role,
) -> (
    Result<rustls::ServerConnection, String>,
    Result<rustls::ClientConnection, String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from(expect.subject_name(DEPLOYMENT)).unwrap();
    let client = std::thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c =
            rustls::ClientConnection::new(client_config, name).map_err(|e| e.to_string())?;
        while c.is_handshaking() {
            c.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        // The server's verdict on this client's certificate comes after the client's Finished.
        c.writer().write_all(b"ping").unwrap();
        c.complete_io(&mut sock).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        while c.reader().read_exact(&mut buf).is_err() {
            c.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        assert_eq!(&buf, b"pong");
        Ok(c)
    });
    let config = server.server_config(allowed).unwrap();
    let server_result = (|| {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut s = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        while s.is_handshaking() {
            s.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        let mut buf = [0u8; 4];
        while s.reader().read_exact(&mut buf).is_err() {
            s.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        s.writer().write_all(b"pong").unwrap();
        s.complete_io(&mut sock).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(s)
    })();
    (server_result, client.join().unwrap())
}

#[test]
fn handshakes_negotiate_x25519mlkem768_over_tls13_and_tls12_is_refused() {
    use rustls::{NamedGroup, ProtocolVersion};
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    let alice = endpoint(&keys, Role::Alice);
    let bob = endpoint(&keys, Role::Bob);
    let (s, c) = raw_handshake(&alice, &[Role::Bob], bob.client_config(), &Role::Alice);
    let (s, c) = (s.unwrap(), c.unwrap());
    for (side, group, version) in [
        (
            "server",
            s.negotiated_key_exchange_group().map(|g| g.name()),
            s.protocol_version(),
        ),
        (
            "client",
            c.negotiated_key_exchange_group().map(|g| g.name()),
            c.protocol_version(),
        ),
    ] {
        assert_eq!(group, Some(NamedGroup::X25519MLKEM768), "{side}");
        assert_eq!(version, Some(ProtocolVersion::TLSv1_3), "{side}");
    }

    // A client offering only TLS 1.2 (with bob's valid certificate) is refused by the
    // services' accepting side.
    let creds = keys.credentials(&Role::Bob).unwrap();
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(keys.ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name =
        rustls::pki_types::ServerName::try_from(Role::Alice.subject_name(DEPLOYMENT)).unwrap();
    let client = std::thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(tls12), name).unwrap();
        while c.is_handshaking() {
            c.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    });
    let (stream, _) = listener.accept().unwrap();
    let (accepted, logs) = with_logs(|| alice.accept(stream, &[Role::Bob], TIMEOUT));
    let e = accepted
        .err()
        .expect("a TLS 1.2 client must be refused")
        .to_string();
    assert!(e.contains("refused"), "{e}");
    assert!(logs.contains("TLS connection refused"), "{logs}");
    let e = client.join().unwrap().unwrap_err();
    assert!(e.contains("ProtocolVersion"), "{e}");
}

#[test]
fn certificates_are_valid_for_a_year_or_as_the_deployment_file_says() {
    use engine::deploy::keys::{generate_keys_with, summarize};
    use engine::deploy::KeySettings;
    let der = |pem: &str| {
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = |t: i64| (t - now) as f64 / 86400.0;
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    for (role, creds) in &keys.members {
        let s = summarize(&der(&creds.cert_pem)).unwrap();
        let (from, until) = (s.not_before.unix_timestamp(), s.not_after.unix_timestamp());
        assert!((364.9..=365.1).contains(&days(until)), "{role}: {s}");
        assert!(from <= now && now - from <= 2 * 3600, "{role}: {s}");
        assert_eq!(s.names, vec![role.subject_name(DEPLOYMENT)]);
    }
    let ca = summarize(&der(&keys.ca.cert_pem)).unwrap();
    assert!(
        (3649.9..=3650.1).contains(&days(ca.not_after.unix_timestamp())),
        "{ca}"
    );
    let short = KeySettings {
        validity_days: 30,
        ca_validity_days: 60,
        revoked: Vec::new(),
    };
    let keys = generate_keys_with(DEPLOYMENT, &[Role::Alice], &short).unwrap();
    let s = summarize(&der(&keys.members[0].1.cert_pem)).unwrap();
    assert!(
        (29.9..=30.1).contains(&days(s.not_after.unix_timestamp())),
        "{s}"
    );
}

#[test]
fn revoked_certificates_are_refused_both_ways_with_the_reason_and_logged_once() {
    use engine::deploy::{Fingerprint, Revocations};
    let keys = generate_keys(DEPLOYMENT, &roles()).unwrap();
    let fingerprint = |role: &Role| {
        let pem = &keys.credentials(role).unwrap().cert_pem;
        Fingerprint::of_der(
            &rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
        )
    };
    let clinic = Role::Client("clinic".into());
    let with_list = |role: Role, revoked: &[Role]| {
        let creds = keys.credentials(&role).unwrap();
        let list = Revocations::new(revoked.iter().map(fingerprint));
        TlsEndpoint::with_revocations(DEPLOYMENT, role, &keys.ca.cert_pem, Some(creds), list)
            .unwrap()
    };
    // Alice refuses the revoked client, twice; the client learns why; one warning in all.
    let alice = Arc::new(with_list(Role::Alice, std::slice::from_ref(&clinic)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = alice.clone();
    let (refusals, server_logs) = with_logs(|| {
        let client = std::thread::spawn({
            let keys = keys.clone();
            let clinic = clinic.clone();
            move || {
                (0..2)
                    .map(|_| {
                        let me = endpoint(&keys, clinic.clone());
                        let link = me
                            .connect(TcpStream::connect(addr).unwrap(), &Role::Alice, TIMEOUT)
                            .map_err(|e| e.to_string())?;
                        let mut t = transport(PartyId::Client, PartyId::Alice, link);
                        t.send(PartyId::Alice, vec![1]).map_err(|e| e.to_string())?;
                        t.recv(PartyId::Alice)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Vec<_>>()
            }
        });
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            let e = server
                .accept(stream, std::slice::from_ref(&clinic), TIMEOUT)
                .err()
                .unwrap();
            assert!(e.to_string().contains("Revoked"), "{e}");
        }
        client.join().unwrap()
    });
    for r in refusals {
        let e = r.unwrap_err();
        assert!(
            e.contains("certificate revoked"),
            "the client sees why: {e}"
        );
    }
    assert_eq!(
        server_logs.matches("revoked certificate refused").count(),
        1,
        "{server_logs}"
    );
    assert_eq!(server_logs.matches(" WARN ").count(), 1, "{server_logs}");
    assert!(
        server_logs.contains(&fingerprint(&clinic).to_string()),
        "{server_logs}"
    );

    // Bob refuses a server whose certificate is revoked (here: alice's).
    let (s, c, _, client_logs) = handshake(
        endpoint(&keys, Role::Alice),
        vec![Role::Bob],
        with_list(Role::Bob, &[Role::Alice]),
        Role::Alice,
    );
    assert!(s.is_err());
    let e = c.unwrap_err();
    assert!(
        e.contains("bob: TLS connection with alice") && e.contains("Revoked"),
        "{e}"
    );
    assert!(
        client_logs.contains("revoked certificate refused"),
        "{client_logs}"
    );
    // Unrevoked peers still connect.
    let (s, c, _, _) = handshake(
        with_list(Role::Alice, std::slice::from_ref(&clinic)),
        vec![Role::Bob],
        with_list(Role::Bob, &[clinic]),
        Role::Alice,
    );
    assert_eq!(s.unwrap(), Role::Bob);
    c.unwrap();
}

#[test]
fn keygen_adds_and_renews_with_the_existing_ca_and_prints_fingerprints() {
    let dir = temp_dir("keygen-rotate");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("deploy.toml");
    let keys = dir.join("keys");
    let bin = env!("CARGO_BIN_EXE_secure-serving");
    let keygen = |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("keygen")
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (f, k) = (file.display().to_string(), keys.display().to_string());
    let base = "name = \"rot\"\n[alice]\naddress = \"127.0.0.1:1\"\n[bob]\naddress = \
                \"127.0.0.1:2\"\n[dealer]\naddress = \"127.0.0.1:3\"\n[[data_owner]]\nname = \
                \"clinic\"\nrole = \"client\"\n";
    std::fs::write(&file, base).unwrap();
    // --add and --renew need the CA first.
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k, "--add"]);
    assert!(!ok && err.contains("ca.pem is missing"), "{err}");
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k]);
    assert!(ok, "{err}");
    let snapshot = || -> std::collections::BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let before = snapshot();
    // Nothing to add yet; a new data owner gets keys and nothing else changes.
    let (ok, out, err) = keygen(&["--deployment", &f, "--out", &k, "--add"]);
    assert!(ok && out.contains("nothing written"), "{out}{err}");
    assert_eq!(snapshot(), before);
    std::fs::write(
        &file,
        format!("{base}[[data_owner]]\nname = \"lab\"\nrole = \"client\"\n"),
    )
    .unwrap();
    let (ok, out, err) = keygen(&["--deployment", &f, "--out", &k, "--add"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("client 'lab': new certificate and key"),
        "{out}"
    );
    let after = snapshot();
    assert_eq!(after.len(), before.len() + 2);
    for (name, bytes) in &before {
        assert_eq!(&after[name], bytes, "{name} changed");
    }
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(keys.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("client-lab.key"), 0o600);
    // The new owner's keys work against a service's keys from the first run.
    let load = |role: Role| {
        let (ca, creds) = read_credentials(&keys, &role).unwrap();
        TlsEndpoint::new("rot", role, &ca, Some(&creds)).unwrap()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lab = load(Role::Client("lab".into()));
    let c = std::thread::spawn(move || {
        lab.connect(TcpStream::connect(addr).unwrap(), &Role::Alice, TIMEOUT)
            .map(|_| ())
    });
    let (stream, _) = listener.accept().unwrap();
    let (role, _link) = load(Role::Alice)
        .accept(stream, &[Role::Client("lab".into())], TIMEOUT)
        .unwrap();
    assert_eq!(role, Role::Client("lab".into()));
    c.join().unwrap().unwrap();

    // Renewing one role replaces only its two files.
    let (ok, out, err) = keygen(&["--deployment", &f, "--out", &k, "--renew", "clinic"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("client 'clinic': new certificate and key"),
        "{out}"
    );
    let renewed = snapshot();
    for (name, bytes) in &after {
        let changed = renewed[name] != *bytes;
        assert_eq!(changed, name.starts_with("client-clinic."), "{name}");
    }
    // The printed fingerprint is the certificate's, and --fingerprint prints the same.
    let (ok, fp_out, err) = keygen(&["--fingerprint", &format!("{k}/client-clinic.pem")]);
    assert!(ok, "{err}");
    let fp = fp_out.lines().next().unwrap();
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp_out}");
    assert!(out.contains(fp), "{out} vs {fp}");
    assert!(fp_out.contains("clinic.client.rot"), "{fp_out}");
    let (ok, _, err) = keygen(&["--fingerprint", &format!("{k}/client-clinic.key")]);
    assert!(!ok && err.contains("no certificate"), "{err}");

    // Unknown roles, a missing CA key and a plain keygen over existing keys are refused.
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k, "--renew", "carol"]);
    assert!(!ok && err.contains("has no role 'carol'"), "{err}");
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k]);
    assert!(
        !ok && err.contains("refusing to overwrite existing keys"),
        "{err}"
    );
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k, "--add", "--force"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    std::fs::rename(keys.join("ca.key"), dir.join("ca.key.offline")).unwrap();
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k, "--renew", "alice"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("ca.key is missing") && err.contains("machine that keeps ca.key"),
        "{err}"
    );
    // Another deployment's CA is refused.
    std::fs::rename(dir.join("ca.key.offline"), keys.join("ca.key")).unwrap();
    std::fs::write(&file, base.replace("\"rot\"", "\"other\"")).unwrap();
    let (ok, _, err) = keygen(&["--deployment", &f, "--out", &k, "--renew", "alice"]);
    assert!(
        !ok && err.contains("is not the CA of deployment 'other'"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_key_directory_says_to_run_keygen() {
    let d = Deployment::parse(
        "name = \"t\"\n[alice]\naddress = \"127.0.0.1:1\"\n[bob]\naddress = \"127.0.0.1:2\"\n\
         [dealer]\naddress = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    let missing = temp_dir("no-keys");
    let e = engine::service::net::Net::new(d, Role::Alice, Some(&missing))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("does not exist") && e.contains("secure-serving keygen"),
        "{e}"
    );
}

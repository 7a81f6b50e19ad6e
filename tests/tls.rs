//! Mutually authenticated TLS: keys from the deployment file, role checks on both sides, and
//! refusals (wrong role, another CA, no certificate) that are logged.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::deploy::{generate_keys, keys::read_credentials, write_keys, Deployment, KeySet, Role};
use engine::transport::{Link, StreamOptions, StreamTransport, TlsEndpoint, Transport};
use engine::PartyId;

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

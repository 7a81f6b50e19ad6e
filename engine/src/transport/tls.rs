//! Mutually authenticated TLS 1.3 links (rustls with the aws-lc-rs provider).
//!
//! Key exchange is the hybrid post-quantum group X25519MLKEM768 only (ML-KEM-768 with X25519):
//! traffic recorded today cannot be decrypted later by breaking either one, and since every
//! endpoint runs this code there is no classical group to fall back to. TLS 1.2 is refused.
//!
//! Every endpoint holds its deployment's CA certificate and its own certificate, which binds its
//! [`Role`] as a DNS name (see [`crate::deploy`]). The connecting side checks that the server's
//! certificate chains to the CA, names the role it meant to reach and is not revoked; the
//! accepting side checks that the client's certificate chains to the CA, names one of the roles
//! it accepts and is not revoked ([`Revocations`], read from the deployment file). Anything else
//! (a certificate for another role, from another CA, revoked, expired, or none) fails the
//! handshake with the matching TLS alert, and the refusal is logged with `tracing`. A refused
//! client reads the alert, so its error says why ("certificate revoked", "unknown CA", ...).
//!
//! After the handshake a link is the same framed stream as plain TCP ([`super::stream`]): the
//! TLS connection is shared by a reading half and a writing half, each holding the lock only
//! while rustls encrypts or decrypts, never while waiting on the socket.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection,
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, ServerConnection,
    SignatureScheme,
};

use super::stream::{
    read_socket_paced, Link, Pace, ReadHalf, StreamOptions, StreamTransport, WriteHalf,
};
use super::PartyId;
use crate::deploy::{generate_keys, Credentials, Revocations, Role};
use crate::error::{EngineError, Result};
use crate::ratelog::RateLog;

/// The crypto provider of every link: aws-lc-rs, with X25519MLKEM768 as the only key exchange.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
    Arc::new(p)
}

/// The refusal of a revoked certificate.
fn revoked() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Revoked)
}

/// Whether a failed handshake was the refusal of a revoked certificate (logged once per
/// certificate by [`Revocations::check`], so not again per retry).
fn is_revocation(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| *r == revoked())
}

/// What a TLS alert from the peer means for this endpoint, in words.
fn alert_text(alert: AlertDescription) -> String {
    let why = match alert {
        AlertDescription::CertificateRevoked => {
            "certificate revoked: this endpoint's certificate is listed in the deployment \
             file's [keys] revoked"
        }
        AlertDescription::UnknownCA => {
            "unknown CA: this endpoint's certificate is not signed by the peer's deployment CA \
             (keys from another keygen run?)"
        }
        AlertDescription::CertificateExpired => {
            "certificate expired or not yet valid (renew it with `secure-serving keygen \
             --renew ROLE`, or check the clocks)"
        }
        AlertDescription::BadCertificate => {
            "bad certificate: this endpoint's certificate names a role that may not connect there"
        }
        AlertDescription::CertificateRequired => "a certificate is required",
        AlertDescription::ProtocolVersion => "TLS 1.3 is required",
        AlertDescription::HandshakeFailure => {
            "handshake failure (the peer requires TLS 1.3 with X25519MLKEM768)"
        }
        _ => "",
    };
    if why.is_empty() {
        format!("the peer refused the connection (TLS alert {alert:?})")
    } else {
        format!("the peer refused the connection: {why}")
    }
}

/// A TLS failure as an I/O error, with a received alert put in words.
fn tls_io_error(e: rustls::Error) -> io::Error {
    match e {
        rustls::Error::AlertReceived(a) => io::Error::new(ErrorKind::InvalidData, alert_text(a)),
        e => io::Error::new(ErrorKind::InvalidData, e),
    }
}

fn bad_key(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("{what}: {e}"))
}

/// Does `cert` name `role` in `deployment`?
fn names_role(cert: &CertificateDer<'_>, deployment: &str, role: &Role) -> bool {
    let Ok(name) = ServerName::try_from(role.subject_name(deployment)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
        .unwrap_or(false)
}

/// The accepting side's check: the CA chain (webpki), then the role named by the certificate,
/// then the revocation list.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deployment: String,
    allowed: Vec<Role>,
    revoked: Arc<Revocations>,
}

impl ClientCertVerifier for RoleVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self
            .allowed
            .iter()
            .any(|r| names_role(end_entity, &self.deployment, r))
        {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        if self.revoked.check(end_entity).is_some() {
            return Err(revoked());
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The connecting side's check: the CA chain and name (webpki), then the revocation list.
#[derive(Debug)]
struct RevocationCheck {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Arc<Revocations>,
}

impl ServerCertVerifier for RevocationCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.revoked.check(end_entity).is_some() {
            return Err(revoked());
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One endpoint's TLS identity: its role, its certificate and key, the deployment CA and the
/// revocation list.
pub struct TlsEndpoint {
    deployment: String,
    role: Role,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Option<PrivateKeyDer<'static>>,
    client: Arc<ClientConfig>,
    revoked: Arc<Revocations>,
    log: RateLog,
}

impl TlsEndpoint {
    /// An endpoint of `deployment` acting as `role`, trusting only the CA in `ca_pem`.
    ///
    /// `credentials` may be `None` only to build an endpoint that connects without a
    /// certificate (which every accepting side refuses; for tests of that refusal).
    pub fn new(
        deployment: &str,
        role: Role,
        ca_pem: &str,
        credentials: Option<&Credentials>,
    ) -> Result<TlsEndpoint> {
        TlsEndpoint::with_revocations(deployment, role, ca_pem, credentials, Revocations::none())
    }

    /// [`Self::new`], refusing peers whose certificates `revoked` lists (checked on every
    /// handshake, on both sides; the list may change while the endpoint is in use).
    pub fn with_revocations(
        deployment: &str,
        role: Role,
        ca_pem: &str,
        credentials: Option<&Credentials>,
        revoked: Arc<Revocations>,
    ) -> Result<TlsEndpoint> {
        let mut roots = RootCertStore::empty();
        let mut found = 0;
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let c = c.map_err(|e| bad_key("CA certificate", e))?;
            roots.add(c).map_err(|e| bad_key("CA certificate", e))?;
            found += 1;
        }
        if found == 0 {
            return Err(EngineError::Invalid(
                "CA certificate: no certificate in the PEM text".into(),
            ));
        }
        let roots = Arc::new(roots);
        let (chain, key) = match credentials {
            Some(c) => {
                let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad_key(&format!("{role} certificate"), e))?;
                if chain.is_empty() {
                    return Err(EngineError::Invalid(format!(
                        "{role} certificate: no certificate in the PEM text"
                    )));
                }
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                    .map_err(|e| bad_key(&format!("{role} private key"), e))?;
                (chain, Some(key))
            }
            None => (Vec::new(), None),
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| bad_key("server verifier", e))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad_key("TLS", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RevocationCheck {
                inner: webpki,
                revoked: revoked.clone(),
            }));
        let client = match &key {
            Some(k) => builder
                .with_client_auth_cert(chain.clone(), k.clone_key())
                .map_err(|e| bad_key(&format!("{role} credentials"), e))?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsEndpoint {
            deployment: deployment.to_string(),
            role,
            roots,
            chain,
            key,
            client: Arc::new(client),
            revoked,
            log: RateLog::new(Duration::from_secs(10)),
        })
    }

    /// Log refused handshakes through `log` (rate-limited: a flood of refusals costs a line
    /// per interval; see [`RateLog`]).
    pub fn with_rate_log(mut self, log: RateLog) -> TlsEndpoint {
        self.log = log;
        self
    }

    /// This endpoint's role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The revocation list this endpoint checks its peers against.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revoked
    }

    /// The rustls configuration of this endpoint's outgoing connections (TLS 1.3,
    /// X25519MLKEM768, its certificate, the CA and revocation checks); for tests that run a
    /// handshake themselves.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The rustls configuration with which this endpoint accepts a connection from one of
    /// `allowed`; for tests that run a handshake themselves.
    pub fn server_config(&self, allowed: &[Role]) -> Result<Arc<ServerConfig>> {
        let Some(key) = &self.key else {
            return Err(EngineError::Invalid(format!(
                "{} has no certificate and cannot accept connections",
                self.role
            )));
        };
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| bad_key("client verifier", e))?;
        let verifier = Arc::new(RoleVerifier {
            inner,
            deployment: self.deployment.clone(),
            allowed: allowed.to_vec(),
            revoked: self.revoked.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad_key("TLS", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), key.clone_key())
            .map_err(|e| bad_key(&format!("{} credentials", self.role), e))?;
        // Links are long-lived and never resumed: no session tickets.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    fn refused(
        &self,
        peer: &str,
        addr: Option<SocketAddr>,
        e: impl std::fmt::Display,
    ) -> EngineError {
        self.refused_quietly(peer, addr, e, false)
    }

    /// [`Self::refused`], logged at debug level only when `quiet` (a refusal already logged).
    fn refused_quietly(
        &self,
        peer: &str,
        addr: Option<SocketAddr>,
        e: impl std::fmt::Display,
        quiet: bool,
    ) -> EngineError {
        let addr = addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        if quiet || !self.log.admit("TLS connection refused") {
            tracing::debug!(me = %self.role, peer, %addr, error = %e, "TLS connection refused");
        } else {
            tracing::warn!(me = %self.role, peer, %addr, error = %e, "TLS connection refused");
        }
        EngineError::Protocol(format!(
            "{}: TLS connection with {peer} at {addr} refused: {e}",
            self.role
        ))
    }

    /// The refusal of a failed handshake: a revoked certificate's was logged already; an alert
    /// from the peer is put in words.
    fn handshake_refused(&self, peer: &str, addr: Option<SocketAddr>, e: io::Error) -> EngineError {
        let quiet = is_revocation(&e);
        let alert = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .and_then(|r| match r {
                rustls::Error::AlertReceived(a) => Some(*a),
                _ => None,
            });
        match alert {
            Some(a) => self.refused_quietly(peer, addr, alert_text(a), quiet),
            None => self.refused_quietly(peer, addr, e, quiet),
        }
    }

    /// Run the handshake on `stream` (at most `timeout` per read or write) and make a link.
    fn finish(
        &self,
        mut conn: Connection,
        mut stream: TcpStream,
        timeout: Duration,
    ) -> io::Result<(Connection, TcpStream)> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let deadline = std::time::Instant::now() + timeout * 2;
        while conn.is_handshaking() {
            // Every read waits at most `timeout`, the whole handshake at most twice that (a
            // peer that sends a byte now and then cannot hold a connection).
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(ErrorKind::TimedOut, "handshake too slow"));
            }
            stream.set_read_timeout(Some(left.min(timeout)))?;
            conn.complete_io(&mut stream)?;
        }
        // Flush what the handshake left queued (the client's Finished).
        while conn.wants_write() {
            conn.write_tls(&mut stream)?;
        }
        // A peer that stops reading fails a write after ten timeouts (at least 5 minutes), so
        // its writer thread and queue are not kept forever; a peer that is only computing
        // for a while is not taken for dead.
        stream.set_write_timeout(Some((timeout * 10).max(Duration::from_secs(300))))?;
        stream.set_nodelay(true)?;
        Ok((conn, stream))
    }

    /// Connect over `stream` to the service acting as `peer`; its certificate must chain to the
    /// deployment CA and name `peer`.
    pub fn connect(&self, stream: TcpStream, peer: &Role, timeout: Duration) -> Result<Link> {
        let addr = stream.peer_addr().ok();
        let peer_name = peer.to_string();
        let name = ServerName::try_from(peer.subject_name(&self.deployment))
            .map_err(|e| bad_key("peer name", e))?;
        let conn = ClientConnection::new(self.client.clone(), name)
            .map_err(|e| self.refused(&peer_name, addr, e))?;
        let (conn, stream) = self
            .finish(Connection::Client(conn), stream, timeout)
            .map_err(|e| self.handshake_refused(&peer_name, addr, e))?;
        link_up(&self.role, &peer_name, &conn);
        tls_link(conn, stream, timeout / 3).map_err(|e| self.refused(&peer_name, addr, e))
    }

    /// [`Self::connect`] without the link: the raw TLS byte stream after the handshake (no
    /// framing, no heartbeats), for load tools and tests that play a misbehaving peer byte by
    /// byte.
    pub fn connect_raw(
        &self,
        stream: TcpStream,
        peer: &Role,
        timeout: Duration,
    ) -> Result<rustls::StreamOwned<ClientConnection, TcpStream>> {
        let addr = stream.peer_addr().ok();
        let peer_name = peer.to_string();
        let name = ServerName::try_from(peer.subject_name(&self.deployment))
            .map_err(|e| bad_key("peer name", e))?;
        let conn = ClientConnection::new(self.client.clone(), name)
            .map_err(|e| self.refused(&peer_name, addr, e))?;
        let (conn, stream) = self
            .finish(Connection::Client(conn), stream, timeout)
            .map_err(|e| self.handshake_refused(&peer_name, addr, e))?;
        match conn {
            Connection::Client(c) => Ok(rustls::StreamOwned::new(c, stream)),
            Connection::Server(_) => unreachable!("a connecting side is a client"),
        }
    }

    /// Accept a connection on `stream` from one of `allowed`; its certificate must chain to the
    /// deployment CA and name an allowed role. Returns the peer's role and the link.
    pub fn accept(
        &self,
        stream: TcpStream,
        allowed: &[Role],
        timeout: Duration,
    ) -> Result<(Role, Link)> {
        let addr = stream.peer_addr().ok();
        let who = "an incoming peer";
        let config = self.server_config(allowed)?;
        let conn = ServerConnection::new(config).map_err(|e| self.refused(who, addr, e))?;
        let linger = stream.try_clone().ok();
        let (conn, stream) = match self.finish(Connection::Server(conn), stream, timeout) {
            Ok(done) => done,
            Err(e) => {
                if let Some(s) = linger {
                    close_after_alert(s);
                }
                return Err(self.handshake_refused(who, addr, e));
            }
        };
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| self.refused(who, addr, "no client certificate"))?;
        let role = allowed
            .iter()
            .find(|r| names_role(cert, &self.deployment, r))
            .cloned()
            .ok_or_else(|| self.refused(who, addr, "certificate names no allowed role"))?;
        link_up(&self.role, &role.to_string(), &conn);
        let link = tls_link(conn, stream, timeout / 3).map_err(|e| self.refused(who, addr, e))?;
        Ok((role, link))
    }
}

/// Log a link that is up, with what it negotiated.
fn link_up(me: &Role, peer: &str, conn: &Connection) {
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    tracing::debug!(%me, peer, %group, %version, "TLS link up");
}

/// After a refused handshake (the alert already written): end the sending side and read what
/// the peer still sends, for at most a second, before closing. Closing at once with unread
/// bytes (a client's first message, sent right after its part of the handshake) would reset
/// the connection, and the peer would lose the alert that says why it was refused.
fn close_after_alert(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < (1 << 20) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

type SharedConn = Arc<Mutex<Connection>>;

fn lock(conn: &SharedConn) -> io::Result<MutexGuard<'_, Connection>> {
    conn.lock()
        .map_err(|_| io::Error::other("TLS connection state poisoned"))
}

/// The reading half: decrypts records as they arrive.
struct TlsReader {
    conn: SharedConn,
    sock: TcpStream,
    raw: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadHalf for TlsReader {
    fn read_paced(&mut self, buf: &mut [u8], pace: &mut Pace) -> io::Result<usize> {
        loop {
            {
                let mut c = lock(&self.conn)?;
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut pending = &self.raw[self.start..self.end];
                    let n = c.read_tls(&mut pending)?;
                    self.start += n;
                    c.process_new_packets().map_err(tls_io_error)?;
                    continue;
                }
            }
            // Every socket read is paced, so a peer dribbling a TLS record byte by byte is cut
            // off like one dribbling a frame.
            let n = read_socket_paced(
                &mut self.sock,
                TcpStream::set_read_timeout,
                &mut self.raw,
                pace,
            )?;
            if n == 0 {
                return Ok(0);
            }
            (self.start, self.end) = (0, n);
        }
    }
}

/// The writing half: encrypts under the lock, writes to the socket outside it.
struct TlsWriter {
    conn: SharedConn,
    sock: TcpStream,
    out: Vec<u8>,
}

impl TlsWriter {
    fn drain(&mut self, c: &mut Connection) -> io::Result<()> {
        self.out.clear();
        while c.wants_write() {
            c.write_tls(&mut self.out)?;
        }
        Ok(())
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let conn = self.conn.clone();
        let n = {
            let mut c = lock(&conn)?;
            let n = c.writer().write(buf)?;
            self.drain(&mut c)?;
            n
        };
        self.sock.write_all(&self.out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl WriteHalf for TlsWriter {
    fn close(&mut self) {
        let conn = self.conn.clone();
        if let Ok(mut c) = lock(&conn) {
            c.send_close_notify();
            if self.drain(&mut c).is_err() {
                return;
            }
        }
        let _ = self.sock.write_all(&self.out);
        let _ = self.sock.shutdown(Shutdown::Write);
    }
}

fn tls_link(conn: Connection, sock: TcpStream, heartbeat: Duration) -> io::Result<Link> {
    let conn = Arc::new(Mutex::new(conn));
    let reader = TlsReader {
        conn: conn.clone(),
        sock: sock.try_clone()?,
        raw: vec![0u8; 1 << 16],
        start: 0,
        end: 0,
    };
    let writer = TlsWriter {
        conn,
        sock,
        out: Vec::with_capacity(1 << 17),
    };
    Link::new(Box::new(reader), Box::new(writer), Some(heartbeat))
}

/// The role each in-process endpoint takes in [`tls_mesh`].
fn mesh_role(id: PartyId) -> Role {
    match id {
        PartyId::Alice => Role::Alice,
        PartyId::Bob => Role::Bob,
        PartyId::Dealer => Role::Dealer,
        PartyId::ModelOwner => Role::ModelOwner("owner".into()),
        PartyId::Client => Role::Client("client".into()),
    }
}

/// Connect every endpoint in `ids` to every other over loopback TLS (127.0.0.1), with a fresh
/// in-memory deployment CA and certificates (nothing is written to disk).
pub fn tls_mesh(
    ids: &[PartyId],
    options: StreamOptions,
) -> Result<HashMap<PartyId, StreamTransport>> {
    const DEPLOYMENT: &str = "in-process";
    let roles: Vec<Role> = ids.iter().map(|&id| mesh_role(id)).collect();
    let keys = generate_keys(DEPLOYMENT, &roles)?;
    let mut endpoints = HashMap::new();
    for (id, role) in ids.iter().zip(&roles) {
        let creds = keys.credentials(role).expect("generated");
        endpoints.insert(
            *id,
            Arc::new(TlsEndpoint::new(
                DEPLOYMENT,
                role.clone(),
                &keys.ca.cert_pem,
                Some(creds),
            )?),
        );
    }
    let mut out: HashMap<PartyId, StreamTransport> = ids
        .iter()
        .map(|&id| (id, StreamTransport::new(id, options)))
        .collect();
    let io_err = |e: io::Error| EngineError::Protocol(format!("TLS mesh set-up failed: {e}"));
    for (i, &a) in ids.iter().enumerate() {
        for &b in &ids[i + 1..] {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err)?;
            let addr = listener.local_addr().map_err(io_err)?;
            let server = endpoints[&a].clone();
            let expect = mesh_role(b);
            let timeout = options.timeout;
            let accepting = std::thread::spawn(move || -> Result<Link> {
                let (stream, _) = listener.accept().map_err(io_err)?;
                let (_, link) = server.accept(stream, &[expect], timeout)?;
                Ok(link)
            });
            let stream = TcpStream::connect(addr).map_err(io_err)?;
            let link_b = endpoints[&b].connect(stream, &mesh_role(a), timeout);
            let link_a = accepting
                .join()
                .map_err(|_| EngineError::Protocol("TLS accept thread panicked".into()))?;
            out.get_mut(&a).expect("endpoint").add_link(b, link_a?);
            out.get_mut(&b).expect("endpoint").add_link(a, link_b?);
        }
    }
    Ok(out)
}

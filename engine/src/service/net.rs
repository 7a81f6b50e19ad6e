//! How a service reaches and admits its peers: addresses from the deployment file, mutually
//! authenticated TLS (or plain TCP behind an explicit insecure switch), a hello naming the role,
//! and pools of idle links to reuse across requests.
//!
//! Every connection starts with the connecting side's hello: its role, as a control message.
//! Under TLS the accepting side checks it against the role the certificate names (so a hello
//! cannot claim another role); on plain TCP the hello is all there is, which is why plain TCP
//! needs `--insecure`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::deploy::keys::read_credentials;
use crate::deploy::{Deployment, Revocations, Role};
use crate::error::{EngineError, Result};
use crate::ratelog::RateLog;
use crate::transport::{step_code, Envelope, Link, StreamOptions, TlsEndpoint};
use crate::wire::control::{decode, encode};

/// The step of a connection's hello.
pub const HELLO_STEP: &str = "hello";

/// A role as written in a hello (`alice`, `bob`, `dealer`, `owner-NAME`, `client-NAME`).
fn role_text(role: &Role) -> String {
    role.file_stem()
}

fn parse_role(text: &str) -> Option<Role> {
    Some(match text {
        "alice" => Role::Alice,
        "bob" => Role::Bob,
        "dealer" => Role::Dealer,
        t => match (t.strip_prefix("owner-"), t.strip_prefix("client-")) {
            (Some(n), _) => Role::ModelOwner(n.to_string()),
            (_, Some(n)) => Role::Client(n.to_string()),
            _ => return None,
        },
    })
}

/// An in-process network: services listen by role and connections are socket pairs (the same
/// framed links as across hosts, without TCP). For deployments inside one process.
#[derive(Default)]
pub struct MemoryNet {
    listeners: Mutex<HashMap<Role, Sender<Link>>>,
}

impl MemoryNet {
    /// An empty in-process network.
    pub fn new() -> Arc<MemoryNet> {
        Arc::new(MemoryNet::default())
    }

    /// Stop taking connections: every listener's queue closes.
    pub fn close(&self) {
        if let Ok(mut l) = self.listeners.lock() {
            l.clear();
        }
    }
}

/// A raw byte stream to a service (see [`Net::connect_raw`]).
pub trait RawStream: std::io::Read + std::io::Write + Send {
    /// How long a read may wait (`None`: forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl RawStream for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl RawStream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

/// Where a service takes its connections from.
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// An in-process network's queue of connections to this service.
    Memory(Receiver<Link>),
}

/// A connection a service has not admitted yet.
pub enum Incoming {
    /// A TCP connection (TLS or plain, as the deployment says).
    Tcp(TcpStream),
    /// An in-process link.
    Memory(Link),
}

impl Listener {
    /// The next connection (`None` when the listener is closed).
    pub fn accept(&self) -> Option<Incoming> {
        match self {
            Listener::Tcp(l) => loop {
                match l.accept() {
                    Ok((s, _)) => return Some(Incoming::Tcp(s)),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            },
            Listener::Memory(rx) => rx.recv().ok().map(Incoming::Memory),
        }
    }

    /// Where it listens, for messages.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Memory(_) => "the in-process network".into(),
        }
    }
}

/// How an endpoint authenticates its links.
enum Security {
    /// Mutually authenticated TLS.
    Tls(Arc<TlsEndpoint>),
    /// Plain TCP (`--insecure`).
    Plain,
    /// An in-process network.
    Memory(Arc<MemoryNet>),
}

/// One endpoint's view of the deployment: who it is, how it authenticates, its limits.
pub struct Net {
    deployment: Deployment,
    me: Role,
    security: Security,
    options: StreamOptions,
    /// Connections accepted and not yet authenticated: in all, and per source address.
    admitting: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Established data-owner connections: in all, and per data owner.
    established: Mutex<(usize, HashMap<Role, usize>)>,
    /// Refusals a peer can repeat at will are logged through this (rate-limited).
    log: RateLog,
    /// The local address outgoing connections come from (`None`: the system's choice).
    source: Option<IpAddr>,
}

/// A connection being authenticated, counted in [`Net`]'s admission limits until dropped.
struct AdmitSlot<'a> {
    net: &'a Net,
    source: Option<IpAddr>,
}

impl Drop for AdmitSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut a) = self.net.admitting.lock() {
            a.0 = a.0.saturating_sub(1);
            if let Some(ip) = self.source {
                if let Some(n) = a.1.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        a.1.remove(&ip);
                    }
                }
            }
        }
    }
}

/// An established data-owner connection, counted in [`Net`]'s connection limits until dropped.
pub struct ConnectionSlot {
    net: Arc<Net>,
    role: Role,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut e) = self.net.established.lock() {
            e.0 = e.0.saturating_sub(1);
            if let Some(n) = e.1.get_mut(&self.role) {
                *n -= 1;
                if *n == 0 {
                    e.1.remove(&self.role);
                }
            }
        }
    }
}

impl Net {
    /// The endpoint of `me` in `deployment`, with its credentials from `keys` (written by
    /// `secure-serving keygen`); `keys = None` means plain TCP without authentication. Under
    /// TLS, peers whose certificates the deployment revokes are refused (see
    /// [`Self::revocations`] to keep that list live).
    pub fn new(deployment: Deployment, me: Role, keys: Option<&Path>) -> Result<Net> {
        if me.party_id().is_data_owner() && !deployment.data_owners.contains(&me) {
            return Err(EngineError::Invalid(format!(
                "{me} is not a data owner of deployment '{}'",
                deployment.name
            )));
        }
        let security = match keys {
            Some(dir) => {
                let (ca, creds) = read_credentials(dir, &me)?;
                let revoked = Revocations::new(deployment.keys.revoked.iter().copied());
                TlsEndpoint::with_revocations(
                    &deployment.name,
                    me.clone(),
                    &ca,
                    Some(&creds),
                    revoked,
                )?
            }
            None => return Ok(Net::with(deployment, me, Security::Plain)),
        };
        Ok(Net::with_tls(deployment, security))
    }

    fn with(deployment: Deployment, me: Role, security: Security) -> Net {
        let log = RateLog::new(deployment.limits.log_interval());
        Net::with_log(deployment, me, security, log)
    }

    fn with_log(deployment: Deployment, me: Role, security: Security, log: RateLog) -> Net {
        let mut options = StreamOptions::with_timeout(deployment.timeout());
        options.max_frame_words = deployment.max_frame_words();
        options.min_rate = deployment.limits.min_rate();
        Net {
            deployment,
            me,
            security,
            options,
            admitting: Mutex::new((0, HashMap::new())),
            established: Mutex::new((0, HashMap::new())),
            log,
            source: None,
        }
    }

    /// This endpoint, its outgoing connections coming from the local address `ip` (load tools
    /// on one host: a hostile client's connections from a source apart from the others').
    pub fn with_source(mut self, ip: IpAddr) -> Net {
        self.source = Some(ip);
        self
    }

    /// A plain-TCP endpoint (never authenticated: loopback benchmarks, and tests that play a
    /// misbehaving peer).
    pub fn insecure(deployment: Deployment, me: Role) -> Net {
        Net::with(deployment, me, Security::Plain)
    }

    /// An endpoint with an explicit TLS identity (in-process deployments with keys made in
    /// memory; tests of refused certificates).
    pub fn with_tls(deployment: Deployment, tls: TlsEndpoint) -> Net {
        let me = tls.role().clone();
        let log = RateLog::new(deployment.limits.log_interval());
        let tls = tls.with_rate_log(log.clone());
        Net::with_log(deployment, me, Security::Tls(Arc::new(tls)), log)
    }

    /// An endpoint on an in-process network.
    pub fn in_memory(deployment: Deployment, me: Role, network: Arc<MemoryNet>) -> Net {
        Net::with(deployment, me, Security::Memory(network))
    }

    /// This endpoint's role.
    pub fn me(&self) -> &Role {
        &self.me
    }

    /// The deployment.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// Timeouts and frame limit of every link.
    pub fn options(&self) -> StreamOptions {
        self.options
    }

    /// The options of a wait for the next request on an idle link of another service:
    /// heartbeats keep it open however long it stays idle (only inside a request is a silent
    /// peer given up).
    pub fn idle_options(&self) -> StreamOptions {
        StreamOptions {
            max_wait: Duration::MAX,
            ..self.options
        }
    }

    /// The options of a wait for a data owner's next request: its link is closed after
    /// `limits.idle_secs` without one, heartbeats or not.
    pub fn owner_idle_options(&self) -> StreamOptions {
        StreamOptions {
            max_wait: self.deployment.limits.idle(),
            ..self.options
        }
    }

    /// The rate-limited log of refusals a peer can repeat at will.
    pub fn rate_log(&self) -> &RateLog {
        &self.log
    }

    /// Whether links are authenticated TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.security, Security::Tls(_))
    }

    /// The revocation list checked on every TLS handshake (`None` without TLS); call
    /// [`Revocations::watch`] on it to follow the deployment file.
    pub fn revocations(&self) -> Option<Arc<Revocations>> {
        match &self.security {
            Security::Tls(t) => Some(t.revocations().clone()),
            _ => None,
        }
    }

    /// Listen on this service's address (or on the in-process network).
    pub fn listen(&self) -> Result<Listener> {
        if let Security::Memory(network) = &self.security {
            let (tx, rx) = channel();
            network
                .listeners
                .lock()
                .map_err(|_| EngineError::Protocol("in-process network poisoned".into()))?
                .insert(self.me.clone(), tx);
            return Ok(Listener::Memory(rx));
        }
        let addr = self.deployment.address(&self.me).ok_or_else(|| {
            EngineError::Invalid(format!("{} does not listen (not a service)", self.me))
        })?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            EngineError::Invalid(format!("{}: cannot listen on {addr}: {e}", self.me))
        })?;
        widen_backlog(&listener);
        Ok(Listener::Tcp(listener))
    }

    /// An in-process connection to `peer`: one end goes to its listener, the other is returned.
    fn connect_memory(&self, network: &MemoryNet, peer: &Role) -> Result<Link> {
        let lost = |e: String| self.unreachable(peer, e);
        let tx = network
            .listeners
            .lock()
            .map_err(|_| lost("in-process network poisoned".into()))?
            .get(peer)
            .cloned()
            .ok_or_else(|| lost("not listening".into()))?;
        let (mine, theirs) = Link::in_process();
        tx.send(theirs).map_err(|_| lost("stopped".into()))?;
        Ok(mine)
    }

    /// Connect to service `peer` (its address from the deployment), authenticate, say hello.
    pub fn connect(&self, peer: &Role) -> Result<Link> {
        let link = match &self.security {
            Security::Memory(network) => self.connect_memory(network, peer)?,
            _ => self.connect_tcp(peer)?,
        };
        let hello = Envelope {
            request: 0,
            seq: 0,
            step: step_code(HELLO_STEP),
        };
        link.send(hello, encode(&role_text(&self.me)))
            .map_err(|_| self.unreachable(peer, format!("{peer} closed the connection")))?;
        Ok(link)
    }

    /// The error of a failed connection to `peer`: it names this endpoint and the peer.
    fn unreachable(&self, peer: &Role, detail: String) -> EngineError {
        EngineError::Unreachable {
            me: self.me.to_string(),
            peer: peer.party_id(),
            detail,
        }
    }

    /// A TCP connection to service `peer` (its address from the deployment).
    fn tcp_to(&self, peer: &Role) -> Result<TcpStream> {
        let addr = self
            .deployment
            .address(peer)
            .ok_or_else(|| EngineError::Invalid(format!("{peer} is not a service")))?;
        let lost = |e: String| self.unreachable(peer, format!("{addr}: {e}"));
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| lost(e.to_string()))?
            .collect();
        let mut last = "no address".to_string();
        for a in addrs {
            match crate::transport::connect_from(self.source, a, self.options.timeout) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        Err(lost(last))
    }

    /// A byte stream to service `peer`, authenticated like a link (TLS, or plain TCP when
    /// insecure) but without framing, hello or heartbeats: for load tools and tests that play
    /// a misbehaving peer byte by byte.
    pub fn connect_raw(&self, peer: &Role) -> Result<Box<dyn RawStream>> {
        let stream = self.tcp_to(peer)?;
        match &self.security {
            Security::Tls(tls) => Ok(Box::new(tls.connect_raw(
                stream,
                peer,
                self.options.timeout,
            )?)),
            Security::Plain => Ok(Box::new(stream)),
            Security::Memory(_) => Err(EngineError::Invalid(
                "an in-process network has no byte streams".into(),
            )),
        }
    }

    fn connect_tcp(&self, peer: &Role) -> Result<Link> {
        let addr = self
            .deployment
            .address(peer)
            .unwrap_or_default()
            .to_string();
        let lost = |e: String| self.unreachable(peer, format!("{addr}: {e}"));
        let stream = self.tcp_to(peer)?;
        match &self.security {
            Security::Tls(tls) => tls
                .connect(stream, peer, self.options.timeout)
                .map_err(|e| match e {
                    EngineError::Protocol(m) => {
                        let mine = format!("{}: ", self.me);
                        self.unreachable(peer, m.strip_prefix(&mine).unwrap_or(&m).to_string())
                    }
                    other => other,
                }),
            _ => stream
                .set_write_timeout(Some(self.options.max_wait))
                .and_then(|()| Link::tcp(stream, Some(self.options.heartbeat())))
                .map_err(|e| lost(e.to_string())),
        }
    }

    /// Reserve a place among the connections being authenticated (in all and from `source`);
    /// `Err` names the limit reached.
    fn reserve_admission(
        &self,
        source: Option<IpAddr>,
    ) -> std::result::Result<AdmitSlot<'_>, String> {
        let l = &self.deployment.limits;
        let mut a = self
            .admitting
            .lock()
            .map_err(|_| "admission state poisoned".to_string())?;
        if a.0 >= l.max_admitting {
            return Err(format!(
                "{} connections are being authenticated (limits.max_admitting)",
                l.max_admitting
            ));
        }
        if let Some(ip) = source {
            let n = a.1.entry(ip).or_insert(0);
            if *n >= l.admitting_per_source() {
                return Err(format!(
                    "{} connections from {ip} are being authenticated \
                     (limits.max_admitting_per_source)",
                    l.admitting_per_source()
                ));
            }
            *n += 1;
        }
        a.0 += 1;
        Ok(AdmitSlot { net: self, source })
    }

    /// Count an established connection of data owner `role` against `limits.max_connections`
    /// and `limits.max_connections_per_owner` (other services' links are bounded by their
    /// pools and not counted); `Err` says which limit it is over. The slot is given back when
    /// dropped.
    pub fn establish(
        self: &Arc<Self>,
        role: &Role,
    ) -> std::result::Result<Option<ConnectionSlot>, String> {
        if !role.party_id().is_data_owner() {
            return Ok(None);
        }
        let l = &self.deployment.limits;
        let mut e = self
            .established
            .lock()
            .map_err(|_| "connection state poisoned".to_string())?;
        if e.0 >= l.max_connections {
            return Err(format!(
                "{} data-owner connections are open (limits.max_connections)",
                l.max_connections
            ));
        }
        let mine = e.1.get(role).copied().unwrap_or(0);
        if mine >= l.connections_per_owner() {
            return Err(format!(
                "{role} has {mine} connections open (limits.max_connections_per_owner)"
            ));
        }
        e.0 += 1;
        *e.1.entry(role.clone()).or_insert(0) += 1;
        Ok(Some(ConnectionSlot {
            net: self.clone(),
            role: role.clone(),
        }))
    }

    /// Log a refusal a peer can repeat at will: the first of its `kind` per interval in full,
    /// the rest summed up (see [`RateLog`]).
    pub fn log_refusal(&self, kind: &str, addr: &str, why: &str) {
        if self.log.admit(kind) {
            tracing::warn!(me = %self.me, %addr, why, "{kind}");
        } else {
            tracing::debug!(me = %self.me, %addr, why, "{kind}");
        }
    }

    /// Admit `incoming` from one of `allowed` on a thread of its own and hand the
    /// authenticated link to `serve` there. Connections being authenticated are bounded
    /// (`limits.max_admitting` in all, `limits.max_admitting_per_source` per source address);
    /// past that, or when no thread can be made, the connection is closed unread and the
    /// refusal logged (rate-limited). A data owner over its connection limits
    /// ([`Self::establish`]) is handed to `refuse` with the reason instead, still counted as
    /// being authenticated (so refusals cannot pile up either).
    pub fn admit_on_thread(
        self: &Arc<Self>,
        incoming: Incoming,
        allowed: Vec<Role>,
        serve: impl FnOnce(Role, Link, Option<ConnectionSlot>) + Send + 'static,
        refuse: impl FnOnce(Role, Link, String) + Send + 'static,
    ) {
        let (source, addr) = match &incoming {
            Incoming::Tcp(s) => match s.peer_addr() {
                Ok(a) => (Some(a.ip()), a.to_string()),
                Err(_) => (None, String::new()),
            },
            Incoming::Memory(_) => (None, "in-process".to_string()),
        };
        match self.reserve_admission(source) {
            // Given back by the admitting thread (or below, if it cannot start).
            Ok(slot) => std::mem::forget(slot),
            Err(why) => {
                self.log_refusal("connection closed unread", &addr, &why);
                return;
            }
        }
        let net = self.clone();
        let at = addr.clone();
        let spawned = std::thread::Builder::new()
            .name("admit".into())
            .spawn(move || {
                // The place reserved above, given back when this thread is done with it.
                let slot = AdmitSlot { net: &net, source };
                match net.accept(incoming, &allowed) {
                    Ok((role, link)) => match net.establish(&role) {
                        Ok(conn) => {
                            drop(slot);
                            serve(role, link, conn);
                        }
                        Err(why) => {
                            net.log_refusal(
                                "connection refused: over a connection limit",
                                &at,
                                &why,
                            );
                            refuse(role, link, why);
                            drop(slot);
                        }
                    },
                    // Logged where it was refused (TLS or the hello).
                    Err(e) => tracing::debug!(me = %net.me, error = %e, "connection refused"),
                }
            });
        if let Err(e) = spawned {
            // The thread never ran: give the place back here.
            drop(AdmitSlot { net: self, source });
            self.log_refusal("connection closed: no thread", &addr, &e.to_string());
        }
    }

    /// Admit a connection from one of `allowed`: authenticate it and read its hello. Returns
    /// the peer's role and the link. The connection's first byte must come within
    /// `limits.first_byte_secs`, the handshake within two timeouts, the hello within one.
    pub fn accept(&self, incoming: Incoming, allowed: &[Role]) -> Result<(Role, Link)> {
        let stream = match incoming {
            Incoming::Memory(link) => return self.admit(link, None, "in-process", allowed),
            Incoming::Tcp(s) => s,
        };
        let addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let first = self.deployment.limits.first_byte();
        let mut byte = [0u8; 1];
        let arrived = stream
            .set_read_timeout(Some(first))
            .and_then(|()| stream.peek(&mut byte));
        if !matches!(arrived, Ok(1)) {
            let why = match arrived {
                Ok(_) => "closed before its first byte".to_string(),
                Err(e) => format!("no first byte within {first:?} ({e})"),
            };
            self.log_refusal("connection closed before authentication", &addr, &why);
            return Err(EngineError::Protocol(format!(
                "{}: connection from {addr}: {why}",
                self.me
            )));
        }
        let (cert_role, link) = match &self.security {
            Security::Tls(tls) => {
                let (r, l) = tls.accept(stream, allowed, self.options.timeout)?;
                (Some(r), l)
            }
            _ => (
                None,
                stream
                    .set_write_timeout(Some(self.options.max_wait))
                    .and_then(|()| Link::tcp(stream, Some(self.options.heartbeat())))
                    .map_err(|e| {
                        self.log_refusal("connection refused", &addr, &e.to_string());
                        EngineError::Protocol(format!("{}: connection from {addr}: {e}", self.me))
                    })?,
            ),
        };
        self.admit(link, cert_role, &addr, allowed)
    }

    /// Read a new link's hello and check it against the certificate's role and `allowed`.
    fn admit(
        &self,
        mut link: Link,
        cert_role: Option<Role>,
        addr: &str,
        allowed: &[Role],
    ) -> Result<(Role, Link)> {
        let me = self.me.party_id();
        let unknown = crate::transport::PartyId::Client;
        // The hello must come within one timeout (heartbeats do not extend it).
        let hello_wait = StreamOptions {
            max_wait: self.options.timeout,
            ..self.options
        };
        let hello = link
            .recv(me, unknown, &hello_wait)
            .and_then(|(env, msg)| Ok((env, decode::<String>(&msg, "hello")?)));
        let (env, claimed) = hello.inspect_err(|e| {
            self.log_refusal("connection refused: no hello", addr, &e.to_string());
        })?;
        let role = parse_role(&claimed);
        let expected = Envelope {
            request: 0,
            seq: 0,
            step: step_code(HELLO_STEP),
        };
        let refuse = |why: String| {
            self.log_refusal("connection refused: bad hello", addr, &why);
            Err(EngineError::Protocol(format!(
                "{}: connection from {addr} refused: {why}",
                self.me
            )))
        };
        match (role, cert_role) {
            _ if env != expected => refuse("no hello".into()),
            (None, _) => refuse(format!("unknown role '{claimed}'")),
            (Some(r), Some(c)) if r != c => {
                refuse(format!("hello claims {r} but the certificate names {c}"))
            }
            (Some(r), _) if !allowed.contains(&r) => refuse(format!("{r} may not connect here")),
            (Some(r), _) => Ok((r, link)),
        }
    }
}

/// Connections the kernel queues for `accept` (std listens with 128). A flood of reconnecting
/// sockets fills a short queue, and then a data owner's handshake is dropped and retransmitted
/// (seconds late, past the first-byte deadline); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Raise `listener`'s accept queue to [`LISTEN_BACKLOG`] (`listen` again on a listening socket
/// only changes its backlog); best effort, the default stays where it fails.
fn widen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: `listen` on a descriptor this listener owns and keeps open across the call.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "accept queue left at its default");
    }
}

/// Idle links to one service, reused across requests (a link is returned only after a request
/// that ended in step on it).
pub struct LinkPool {
    peer: Role,
    idle: Mutex<Vec<Link>>,
}

impl LinkPool {
    /// An empty pool of links to `peer`.
    pub fn new(peer: Role) -> LinkPool {
        LinkPool {
            peer,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle link, or a new connection when there is none. The flag says whether the link
    /// was reused (it may have died while idle: the caller retries once on a fresh one).
    pub fn get(&self, net: &Net) -> Result<(Link, bool)> {
        if let Some(l) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok((l, true));
        }
        Ok((net.connect(&self.peer)?, false))
    }

    /// Drop every idle link (their peers see the connections close).
    pub fn clear(&self) {
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
    }

    /// Return a link after a request that ended in step on it.
    pub fn put(&self, link: Link) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < 64 {
                v.push(link);
            }
        }
    }
}

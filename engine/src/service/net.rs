//! How a service reaches and admits its peers: addresses from the deployment file, mutually
//! authenticated TLS (or plain TCP behind an explicit insecure switch), a hello naming the role,
//! and pools of idle links to reuse across requests.
//!
//! Every connection starts with the connecting side's hello: its role, as a control message.
//! Under TLS the accepting side checks it against the role the certificate names (so a hello
//! cannot claim another role); on plain TCP the hello is all there is, which is why plain TCP
//! needs `--insecure`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::deploy::keys::read_credentials;
use crate::deploy::{Deployment, Revocations, Role};
use crate::error::{EngineError, Result};
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
    /// Connections accepted and not yet authenticated.
    admitting: Arc<AtomicUsize>,
}

/// Connections a service authenticates at once; past this, new ones are closed unread (a flood
/// of unauthenticated connections cannot exhaust threads).
pub const MAX_ADMITTING: usize = 256;

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
                Security::Tls(Arc::new(TlsEndpoint::with_revocations(
                    &deployment.name,
                    me.clone(),
                    &ca,
                    Some(&creds),
                    revoked,
                )?))
            }
            None => Security::Plain,
        };
        Ok(Net::with(deployment, me, security))
    }

    fn with(deployment: Deployment, me: Role, security: Security) -> Net {
        let mut options = StreamOptions::with_timeout(deployment.timeout());
        options.max_frame_words = deployment.max_frame_words();
        Net {
            deployment,
            me,
            security,
            options,
            admitting: Arc::new(AtomicUsize::new(0)),
        }
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
        Net::with(deployment, me, Security::Tls(Arc::new(tls)))
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

    /// The options of a wait for the next request on an idle link: heartbeats keep it open
    /// however long it stays idle (only inside a request is a silent peer given up).
    pub fn idle_options(&self) -> StreamOptions {
        StreamOptions {
            max_wait: std::time::Duration::MAX,
            ..self.options
        }
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
        TcpListener::bind(addr)
            .map(Listener::Tcp)
            .map_err(|e| EngineError::Invalid(format!("{}: cannot listen on {addr}: {e}", self.me)))
    }

    /// An in-process connection to `peer`: one end goes to its listener, the other is returned.
    fn connect_memory(&self, network: &MemoryNet, peer: &Role) -> Result<Link> {
        let lost = |e: String| EngineError::PartyFailed {
            party: peer.party_id(),
            detail: format!("cannot connect to {peer}: {e}"),
        };
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
            .map_err(|_| EngineError::PartyFailed {
                party: peer.party_id(),
                detail: format!("{peer} closed the connection"),
            })?;
        Ok(link)
    }

    fn connect_tcp(&self, peer: &Role) -> Result<Link> {
        let addr = self
            .deployment
            .address(peer)
            .ok_or_else(|| EngineError::Invalid(format!("{peer} is not a service")))?;
        let lost = |e: String| EngineError::PartyFailed {
            party: peer.party_id(),
            detail: format!("cannot connect to {peer} at {addr}: {e}"),
        };
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| lost(e.to_string()))?
            .collect();
        let mut last = "no address".to_string();
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.options.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let stream = stream.ok_or_else(|| lost(last))?;
        match &self.security {
            Security::Tls(tls) => tls.connect(stream, peer, self.options.timeout),
            _ => stream
                .set_write_timeout(Some(self.options.max_wait))
                .and_then(|()| Link::tcp(stream, Some(self.options.heartbeat())))
                .map_err(|e| lost(e.to_string())),
        }
    }

    /// Admit `incoming` from one of `allowed` on a thread of its own and hand the
    /// authenticated link to `serve` there. At most [`MAX_ADMITTING`] connections are being
    /// authenticated at once; past that, or when no thread can be made, the connection is
    /// closed and the refusal logged (the service keeps accepting).
    pub fn admit_on_thread(
        self: &Arc<Self>,
        incoming: Incoming,
        allowed: Vec<Role>,
        serve: impl FnOnce(Role, Link) + Send + 'static,
    ) {
        if self.admitting.fetch_add(1, Ordering::SeqCst) >= MAX_ADMITTING {
            self.admitting.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(me = %self.me, "too many connections being authenticated: one closed");
            return;
        }
        let net = self.clone();
        let spawned = std::thread::Builder::new()
            .name("admit".into())
            .spawn(move || {
                let admitted = net.accept(incoming, &allowed);
                net.admitting.fetch_sub(1, Ordering::SeqCst);
                match admitted {
                    Ok((role, link)) => serve(role, link),
                    // Logged once where it was refused (TLS or the hello).
                    Err(e) => tracing::debug!(me = %net.me, error = %e, "connection refused"),
                }
            });
        if let Err(e) = spawned {
            self.admitting.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(me = %self.me, error = %e, "cannot make a thread: connection closed");
        }
    }

    /// Admit a connection from one of `allowed`: authenticate it and read its hello. Returns
    /// the peer's role and the link.
    pub fn accept(&self, incoming: Incoming, allowed: &[Role]) -> Result<(Role, Link)> {
        let stream = match incoming {
            Incoming::Memory(link) => return self.admit(link, None, "in-process", allowed),
            Incoming::Tcp(s) => s,
        };
        let addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
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
                        tracing::warn!(me = %self.me, %addr, error = %e, "connection refused");
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
            tracing::warn!(me = %self.me, %addr, error = %e, "connection refused: no hello");
        })?;
        let role = parse_role(&claimed);
        let expected = Envelope {
            request: 0,
            seq: 0,
            step: step_code(HELLO_STEP),
        };
        let refuse = |why: String| {
            tracing::warn!(me = %self.me, %addr, why, "connection refused");
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

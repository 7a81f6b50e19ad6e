//! How a service reaches and admits its peers: addresses from the deployment file, mutually
//! authenticated TLS (or plain TCP behind an explicit insecure switch), a hello naming the role,
//! and pools of idle links to reuse across requests.
//!
//! Every connection starts with the connecting side's hello: its role, as a control message.
//! Under TLS the accepting side checks it against the role the certificate names (so a hello
//! cannot claim another role); on plain TCP the hello is all there is, which is why plain TCP
//! needs `--insecure`.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::deploy::keys::read_credentials;
use crate::deploy::{Deployment, Role};
use crate::error::{EngineError, Result};
use crate::service::wire::{decode, encode};
use crate::transport::{step_code, Envelope, Link, StreamOptions, TlsEndpoint};

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

/// One endpoint's view of the deployment: who it is, how it authenticates, its limits.
pub struct Net {
    deployment: Deployment,
    me: Role,
    tls: Option<Arc<TlsEndpoint>>,
    options: StreamOptions,
}

impl Net {
    /// The endpoint of `me` in `deployment`, with its credentials from `keys` (written by
    /// `secure-serving keygen`); `keys = None` means plain TCP without authentication.
    pub fn new(deployment: Deployment, me: Role, keys: Option<&Path>) -> Result<Net> {
        if me.party_id().is_data_owner() && !deployment.data_owners.contains(&me) {
            return Err(EngineError::Invalid(format!(
                "{me} is not a data owner of deployment '{}'",
                deployment.name
            )));
        }
        let tls = match keys {
            Some(dir) => {
                let (ca, creds) = read_credentials(dir, &me)?;
                Some(Arc::new(TlsEndpoint::new(
                    &deployment.name,
                    me.clone(),
                    &ca,
                    Some(&creds),
                )?))
            }
            None => None,
        };
        let mut options = StreamOptions::with_timeout(deployment.timeout());
        options.max_frame_words = deployment.max_frame_words();
        Ok(Net {
            deployment,
            me,
            tls,
            options,
        })
    }

    /// A plain-TCP endpoint for tests that play a misbehaving peer (never authenticated).
    pub fn insecure(deployment: Deployment, me: Role) -> Net {
        let options = StreamOptions::with_timeout(deployment.timeout());
        Net {
            deployment,
            me,
            tls: None,
            options,
        }
    }

    /// An endpoint with an explicit TLS identity (tests of refused certificates).
    pub fn with_tls(deployment: Deployment, tls: TlsEndpoint) -> Net {
        let options = StreamOptions::with_timeout(deployment.timeout());
        Net {
            me: tls.role().clone(),
            deployment,
            tls: Some(Arc::new(tls)),
            options,
        }
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

    /// Whether links are authenticated TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Listen on this service's address (port 0: any free port).
    pub fn listen(&self) -> Result<TcpListener> {
        let addr = self.deployment.address(&self.me).ok_or_else(|| {
            EngineError::Invalid(format!("{} does not listen (not a service)", self.me))
        })?;
        TcpListener::bind(addr)
            .map_err(|e| EngineError::Invalid(format!("{}: cannot listen on {addr}: {e}", self.me)))
    }

    /// Connect to service `peer` (its address from the deployment), authenticate, say hello.
    pub fn connect(&self, peer: &Role) -> Result<Link> {
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
        let link = match &self.tls {
            Some(tls) => tls.connect(stream, peer, self.options.timeout)?,
            None => Link::tcp(stream, Some(self.options.heartbeat()))
                .map_err(|e| lost(e.to_string()))?,
        };
        let hello = Envelope {
            request: 0,
            seq: 0,
            step: step_code(HELLO_STEP),
        };
        link.send(hello, encode(&role_text(&self.me)))
            .map_err(|_| lost("connection closed".into()))?;
        Ok(link)
    }

    /// Admit a connection from one of `allowed`: authenticate it and read its hello. Returns
    /// the peer's role and the link.
    pub fn accept(&self, stream: TcpStream, allowed: &[Role]) -> Result<(Role, Link)> {
        let addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (cert_role, mut link) = match &self.tls {
            Some(tls) => {
                let (r, l) = tls.accept(stream, allowed, self.options.timeout)?;
                (Some(r), l)
            }
            None => (
                None,
                Link::tcp(stream, Some(self.options.heartbeat())).map_err(|e| {
                    EngineError::Protocol(format!("{}: connection from {addr}: {e}", self.me))
                })?,
            ),
        };
        let me = self.me.party_id();
        let unknown = crate::transport::PartyId::Client;
        let (env, msg) = link.recv(me, unknown, &self.options)?;
        let claimed: String = decode(&msg, "hello")?;
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

    /// Return a link after a request that ended in step on it.
    pub fn put(&self, link: Link) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < 64 {
                v.push(link);
            }
        }
    }
}

//! A deployment of real processes for end-to-end tests: the dealer, alice and bob started from
//! the `secure-serving` binary, data owners run as CLI commands.
//!
//! Where this process may create network namespaces (root, `ip netns`), every service and the
//! data owners get a namespace of their own, joined by veth links to a bridge in a hub namespace
//! made here (addresses in 10.201-250.x.0/24, used nowhere else); otherwise everything runs on
//! loopback on ports chosen at run time, and the reason is printed. Everything made is removed
//! when the cluster is dropped; every process is killed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_secure-serving");

/// The services of a deployment.
pub const SERVICES: [&str; 3] = ["dealer", "alice", "bob"];

/// How to set a cluster up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Plain TCP (`--insecure` everywhere) instead of mutual TLS.
    pub insecure: bool,
    /// `limits.timeout_secs`.
    pub timeout_secs: u64,
    /// `limits.max_requests`.
    pub max_requests: usize,
    /// Try network namespaces (falls back to loopback when they cannot be made).
    pub netns: bool,
    /// `RUST_LOG` of the services (their default level when `None`).
    pub log_filter: Option<String>,
    /// More lines of the deployment file's `[limits]` section (`key = value`, one a line).
    pub limits: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: false,
            timeout_secs: 10,
            max_requests: 32,
            netns: true,
            log_filter: None,
            limits: String::new(),
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Network namespaces made for one cluster.
struct Netns {
    tag: String,
    /// Namespace of each member: dealer, alice, bob, owner, attacker.
    names: HashMap<&'static str, String>,
    hub: String,
}

impl Netns {
    fn ns(&self, who: &str) -> &str {
        &self.names[who]
    }
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Make the namespaces: one per member plus a hub with a bridge; `subnet` is the third octet
/// source of 10.<subnet>.0.0/24.
fn make_netns(subnet: u32) -> Result<(Netns, HashMap<&'static str, String>), String> {
    let tag = format!("ss{}x{}", std::process::id(), subnet);
    let hub = format!("{tag}h");
    let mut ns = Netns {
        tag: tag.clone(),
        names: HashMap::new(),
        hub: hub.clone(),
    };
    sh(&["ip", "netns", "add", &hub])?;
    let bridge = "br0";
    sh(&["ip", "-n", &hub, "link", "add", bridge, "type", "bridge"])?;
    sh(&["ip", "-n", &hub, "link", "set", bridge, "up"])?;
    let mut addrs = HashMap::new();
    for (i, who) in ["dealer", "alice", "bob", "owner", "attacker"]
        .into_iter()
        .enumerate()
    {
        let name = format!("{tag}{i}");
        sh(&["ip", "netns", "add", &name])?;
        ns.names.insert(who, name.clone());
        let (inner, outer) = (format!("{tag}v{i}"), format!("{tag}p{i}"));
        sh(&[
            "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ])?;
        sh(&["ip", "link", "set", &inner, "netns", &name])?;
        sh(&["ip", "link", "set", &outer, "netns", &hub])?;
        let ip = format!("10.{}.0.{}", 200 + subnet % 50, i + 1);
        sh(&[
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &inner,
        ])?;
        sh(&["ip", "-n", &name, "link", "set", &inner, "up"])?;
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &hub, "link", "set", &outer, "master", bridge])?;
        sh(&["ip", "-n", &hub, "link", "set", &outer, "up"])?;
        addrs.insert(who, ip);
    }
    Ok((ns, addrs))
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.names.values() {
            let _ = sh(&["ip", "netns", "del", n]);
        }
        let _ = sh(&["ip", "netns", "del", &self.hub]);
        let _ = &self.tag;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running deployment (see the module documentation).
pub struct Cluster {
    /// Working directory (config, keys, data, logs).
    pub dir: tempfile::TempDir,
    /// The deployment file.
    pub config: PathBuf,
    /// The options it was made with.
    pub options: Options,
    /// Each service's address.
    pub addrs: HashMap<&'static str, String>,
    procs: HashMap<&'static str, Child>,
    starts: HashMap<&'static str, u32>,
    netns: Option<Netns>,
}

impl Cluster {
    /// Write the deployment and keys and start the three services.
    pub fn start(options: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut netns = None;
        let mut addrs: HashMap<&'static str, String> = HashMap::new();
        if options.netns {
            let subnet = std::process::id() % 7 * 7 + COUNTER.fetch_add(1, Ordering::SeqCst);
            match make_netns(subnet) {
                Ok((ns, ips)) => {
                    for who in SERVICES {
                        addrs.insert(who, format!("{}:{}", ips[who], free_port()));
                    }
                    eprintln!("cluster: each service and the data owners in their own network namespace ({})", ns.tag);
                    netns = Some(ns);
                }
                Err(why) => eprintln!(
                    "cluster: network namespaces cannot be made here ({why}); running on loopback"
                ),
            }
        }
        if netns.is_none() {
            for who in SERVICES {
                addrs.insert(who, format!("127.0.0.1:{}", free_port()));
            }
        }
        let config = dir.path().join("deploy.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"e2e\"\n[alice]\naddress = \"{}\"\n[bob]\naddress = \"{}\"\n[dealer]\naddress = \"{}\"\n\
                 [[data_owner]]\nname = \"hospital\"\nrole = \"model-owner\"\n\
                 [[data_owner]]\nname = \"pharma\"\nrole = \"model-owner\"\n\
                 [[data_owner]]\nname = \"clinic\"\nrole = \"client\"\n\
                 [[data_owner]]\nname = \"lab\"\nrole = \"client\"\n\
                 [limits]\ntimeout_secs = {}\nmax_requests = {}\n{}\n",
                addrs["alice"], addrs["bob"], addrs["dealer"], options.timeout_secs, options.max_requests,
                options.limits
            ),
        )
        .expect("write deployment");
        let keys = dir.path().join("keys");
        let out = Command::new(BIN)
            .args(["keygen", "--deployment"])
            .arg(&config)
            .arg("--out")
            .arg(&keys)
            .output()
            .expect("keygen runs");
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c = Cluster {
            dir,
            config,
            options,
            addrs,
            procs: HashMap::new(),
            starts: HashMap::new(),
            netns,
        };
        for who in SERVICES {
            c.start_service(who);
        }
        c
    }

    /// Whether the members run in namespaces of their own.
    pub fn in_namespaces(&self) -> bool {
        self.netns.is_some()
    }

    fn prefix(&self, who: &str) -> Vec<String> {
        match &self.netns {
            Some(ns) => vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                ns.ns(who).into(),
            ],
            None => Vec::new(),
        }
    }

    fn command(&self, who: &str) -> Command {
        let mut argv = self.prefix(who);
        argv.push(BIN.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    fn common_args(&self) -> Vec<String> {
        let mut v = vec!["--config".to_string(), self.config.display().to_string()];
        if self.options.insecure {
            v.push("--insecure".into());
        }
        v
    }

    /// The log file of a service.
    pub fn log_path(&self, who: &str) -> PathBuf {
        self.dir.path().join(format!("{who}.log"))
    }

    /// A service's log so far (all its runs).
    pub fn log(&self, who: &str) -> String {
        std::fs::read_to_string(self.log_path(who)).unwrap_or_default()
    }

    /// The command line that runs service `who`.
    fn service_command(&self, who: &str) -> Command {
        let mut cmd = self.command(who);
        match who {
            "dealer" => cmd.arg("dealer"),
            role => cmd.args(["party", "--role", role]),
        };
        cmd.args(self.common_args());
        if let Some(f) = &self.options.log_filter {
            cmd.env("RUST_LOG", f);
        }
        cmd.arg("--data-dir")
            .arg(self.dir.path().join(format!("{who}-data")));
        cmd
    }

    /// Start (or restart) a service and wait until it listens.
    pub fn start_service(&mut self, who: &'static str) {
        let mut cmd = self.service_command(who);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(who))
            .expect("log file");
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        let child = cmd.spawn().expect("service starts");
        self.procs.insert(who, child);
        let n = self.starts.entry(who).or_insert(0);
        *n += 1;
        let want = *n;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log(who);
            if log.matches("listening on").count() >= want as usize {
                return;
            }
            if let Some(st) = self
                .procs
                .get_mut(who)
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{who} exited ({st}) before listening:\n{log}");
            }
            assert!(Instant::now() < deadline, "{who} did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start a service that must refuse to start; returns its output of this run.
    pub fn start_must_fail(&mut self, who: &'static str) -> String {
        let out = self.service_command(who).output().expect("service runs");
        assert!(!out.status.success(), "{who} started");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Kill a service (SIGKILL) and reap it.
    pub fn kill(&mut self, who: &str) {
        if let Some(mut c) = self.procs.remove(who) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal to a service (e.g. `STOP`, `CONT`).
    pub fn signal(&self, who: &str, sig: &str) {
        let pid = self.procs[who].id().to_string();
        sh(&["kill", &format!("-{sig}"), &pid]).expect("signal");
    }

    /// Whether a service is still running.
    pub fn alive(&mut self, who: &str) -> bool {
        self.procs
            .get_mut(who)
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// A data owner's command (run in the owners' namespace), with the deployment flags.
    pub fn owner_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("owner");
        cmd.args(args).args(self.common_args());
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Start a data owner's command with its output captured (for commands run concurrently).
    pub fn owner_spawn(&self, args: &[&str]) -> std::process::Child {
        self.owner_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("command starts")
    }

    /// `secure-serving attack` with `args`, from the attacker's namespace (a host of its own,
    /// apart from the data owners'), or from here on loopback; captured output.
    pub fn attack_spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = self.command("attacker");
        cmd.arg("attack").args(args).args(self.common_args());
        cmd.current_dir(self.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("attack starts")
    }

    /// The process id of a running service.
    pub fn pid(&self, who: &str) -> u32 {
        self.procs[who].id()
    }

    /// Run a data owner's command to completion.
    pub fn owner(&self, args: &[&str]) -> Output {
        self.owner_command(args).output().expect("command runs")
    }

    /// Run a data owner's command that must succeed; returns its stdout.
    pub fn owner_ok(&self, args: &[&str]) -> String {
        let out = self.owner(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the binary without deployment flags (an in-process run), in the working directory;
    /// returns stdout, panicking on failure.
    pub fn local_ok(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("command runs");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A path in the working directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The key directory.
    pub fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Run `f` inside the owners' namespace (for tests that open raw connections): returns
    /// `None` when the members do not run in namespaces (the caller connects from here).
    pub fn owner_netns(&self) -> Option<&str> {
        self.netns.as_ref().map(|n| n.ns("owner"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for who in SERVICES {
            self.kill(who);
        }
        if std::thread::panicking() {
            for who in SERVICES {
                eprintln!("---- {who} log ----\n{}", self.log(who));
            }
        }
    }
}

/// The directory of the committed test data.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

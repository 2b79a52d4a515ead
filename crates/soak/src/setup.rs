//! The soak's world: Redis, three testnodes, two gateways, their certificates; started as real
//! processes on free ports, killed and restarted by the fault schedule.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Args;

pub const NODES: usize = 3;

pub struct Env {
    pub dir: PathBuf,
    pub nodegate: String,
    testnode: String,
    /// The plain gateway (HTTP/1.1 and h2c), and its admin listener.
    pub plain: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS gateway (HTTP/1.1 and h2 by ALPN), and its admin listener.
    pub tls: SocketAddr,
    pub tls_admin: SocketAddr,
    pub nodes: Vec<SocketAddr>,
    redis_port: u16,
    /// The key the keyed client sends (`roles = ["key"]`).
    pub key: String,
    pub client_tls: Arc<rustls::ClientConfig>,
    ca: CertifiedIssuer<'static, KeyPair>,
    procs: Mutex<Procs>,
}

#[derive(Default)]
struct Procs {
    gateways: Vec<Child>,
    nodes: Vec<Option<Child>>,
    redis: Option<Child>,
}

/// A process the faults kill and start again.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Redis,
    Node(usize),
}

impl Procs {
    fn slot(&mut self, service: Service) -> &mut Option<Child> {
        match service {
            Service::Redis => &mut self.redis,
            Service::Node(i) => {
                self.nodes.resize_with(NODES, || None);
                &mut self.nodes[i]
            }
        }
    }
}

/// `n` free loopback addresses, distinct: each is held bound until all are chosen (one chosen and
/// let go at a time could be handed out twice).
fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let held = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    held.iter().map(|l| l.local_addr()).collect()
}

async fn wait_listening(addr: SocketAddr, what: &str) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what} never listened on {addr}"))
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Child, String> {
    cmd.spawn().map_err(|e| format!("cannot start {what} ({:?}): {e}", cmd.get_program()))
}

impl Env {
    pub async fn start(args: &Args) -> Result<Env, String> {
        let dir = match &args.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("nodegate-soak-{}", std::process::id())),
        };
        std::fs::create_dir_all(dir.join("bans")).map_err(|e| format!("{}: {e}", dir.display()))?;
        for bin in [&args.nodegate, &args.testnode] {
            if !Path::new(bin).exists() {
                return Err(format!("{bin} is missing: build it first (bench/soak does)"));
            }
        }
        let io = |e: std::io::Error| e.to_string();
        let mut addrs = free_addrs(5 + NODES).map_err(io)?;
        let nodes = addrs.split_off(5);
        let (plain, admin, tls, tls_admin, redis_port) = (addrs[0], addrs[1], addrs[2], addrs[3], addrs[4].port());

        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "soak CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
            roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        let client_tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        // A full handshake on every connection: a resumed session shows the certificate it was
        // made with, and the soak wants to see a renewed one reach new connections.
        let mut client_tls = client_tls;
        client_tls.resumption = rustls::client::Resumption::disabled();

        let key = format!("soak-key-{}", fastrand::u64(..));
        let out = Command::new(&args.nodegate).args(["key", "hash", &key]).output().map_err(io)?;
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !hash.starts_with("sha256:") {
            return Err(format!("nodegate key hash printed {hash:?}"));
        }

        let env = Env {
            dir,
            nodegate: args.nodegate.clone(),
            testnode: args.testnode.clone(),
            plain,
            admin,
            tls,
            tls_admin,
            nodes,
            redis_port,
            key,
            client_tls: Arc::new(client_tls),
            ca,
            procs: Mutex::new(Procs::default()),
        };
        env.renew_cert().map_err(io)?;
        env.launch(Service::Redis)?;
        wait_listening(SocketAddr::from(([127, 0, 0, 1], redis_port)), "redis-server").await?;
        for i in 0..NODES {
            env.launch(Service::Node(i))?;
            wait_listening(env.nodes[i], "testnode").await?;
        }
        for (name, listen, admin, tls) in [("plain", plain, admin, false), ("tls", tls, tls_admin, true)] {
            let config = env.dir.join(format!("{name}.toml"));
            std::fs::write(&config, env.config(listen, admin, tls, &hash)).map_err(io)?;
            let check = Command::new(&env.nodegate).args(["check", "--config"]).arg(&config).output().map_err(io)?;
            if !check.status.success() {
                return Err(format!("{name}.toml: {}", String::from_utf8_lossy(&check.stderr)));
            }
            let log = std::fs::File::create(env.dir.join(format!("{name}.log"))).map_err(io)?;
            let child = spawn(
                Command::new(&env.nodegate).args(["run", "--config"]).arg(&config).stdout(Stdio::null()).stderr(log),
                "nodegate",
            )?;
            env.procs().gateways.push(child);
            wait_listening(listen, "nodegate").await?;
            wait_listening(admin, "nodegate's admin").await?;
        }
        Ok(env)
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config(&self, listen: SocketAddr, admin: SocketAddr, tls: bool, hash: &str) -> String {
        let d = self.dir.display();
        let mut s = format!(
            r#"# bench/soak: one of two gateways sharing limits and bans through Redis.
[gateway]
listen = ["{listen}"]
profile = "iota-rebased"
header_timeout = "3s"
body_timeout = "4s"
send_timeout = "4s"
idle_timeout = "30s"

[access]
allow = ["127.0.0.0/8"]

[rate_limit]
per_client = "300/s"
burst = 600
# The distinct-address flood fills this within a minute; then the oldest clients are evicted.
max_clients = 20000

[cluster]
redis = "redis://127.0.0.1:{redis}"
sync_interval = "100ms"

[health]
interval = "1s"

[upstream]
response_timeout = "10s"

[admin]
listen = "{admin}"

[bans]
state_dir = "{d}/bans"
ignore = []
firewall = "none"

# The path-tricks attacker is banned for 20 s after 40 refusals in 10 s, again and again.
[[jail]]
name = "tricks"
source = "gateway"
reasons = ["not-exposed", "bad-request"]
maxretry = 40
findtime = "10s"
bantime = "20s"
increment = false

[log]
format = "json"
access = false
level = "info"

[[api_key]]
name = "soak"
hash = "{hash}"
roles = ["key"]

[[route]]
path = "/debug/*"
access = "public"
"#,
            redis = self.redis_port
        );
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!("\n[[node]]\nname = \"n{i}\"\nurl = \"http://{n}\"\n"));
        }
        if tls {
            s.push_str(&format!("\n[tls]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\nreload_interval = \"1s\"\n"));
        }
        s
    }

    /// A new key and certificate for `localhost` from the soak's CA, written as a renewal would
    /// (a new file renamed over the old one).
    pub fn renew_cert(&self) -> std::io::Result<()> {
        let other = |e: rcgen::Error| std::io::Error::other(e.to_string());
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).map_err(other)?;
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().map_err(other)?;
        let cert = p.signed_by(&key, &self.ca).map_err(other)?;
        for (name, text) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
            let tmp = self.dir.join(format!("{name}.new"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, self.dir.join(name))?;
        }
        Ok(())
    }

    /// Starts a service's process (on its port, as at the start).
    pub fn launch(&self, service: Service) -> Result<(), String> {
        let child = match service {
            Service::Redis => spawn(
                Command::new("redis-server")
                    .args([
                        "--port",
                        &self.redis_port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
                "redis-server",
            )?,
            Service::Node(i) => spawn(
                Command::new(&self.testnode)
                    .args(["--listen", &self.nodes[i].to_string(), "--name", &format!("n{i}"), "--threads", "1"])
                    .arg("--submissions-log")
                    .arg(self.dir.join(format!("submitted-n{i}.log")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
                "testnode",
            )?,
        };
        *self.procs().slot(service) = Some(child);
        Ok(())
    }

    fn addr(&self, service: Service) -> SocketAddr {
        match service {
            Service::Redis => SocketAddr::from(([127, 0, 0, 1], self.redis_port)),
            Service::Node(i) => self.nodes[i],
        }
    }

    fn alive(&self, service: Service) -> bool {
        self.procs().slot(service).as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills a service's process (SIGKILL) and reaps it.
    pub fn kill(&self, service: Service) {
        if let Some(mut c) = self.procs().slot(service).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, service: Service, signal: &str) {
        if let Some(c) = self.procs().slot(service) {
            signal_pid(c.id(), signal);
        }
    }

    /// Starts a killed service again on its port. While it was down, the port may have been taken
    /// as the local end of some outgoing connection (they come from the same range): then the
    /// process cannot bind, exits, and is started again a moment later.
    pub async fn restart(&self, service: Service) -> Result<(), String> {
        let addr = self.addr(service);
        for _ in 0..40 {
            self.launch(service)?;
            while self.alive(service) {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.kill(service);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("{service:?} could not listen on {addr} again"))
    }

    /// Sends `signal` (a name kill(1) knows) to both gateways.
    pub fn signal_gateways(&self, signal: &str) {
        for c in &self.procs().gateways {
            signal_pid(c.id(), signal);
        }
    }

    pub fn gateway_pids(&self) -> Vec<u32> {
        self.procs().gateways.iter().map(Child::id).collect()
    }

    /// Whether each gateway is still running.
    pub fn gateways_alive(&self) -> Vec<bool> {
        self.procs().gateways.iter_mut().map(|c| matches!(c.try_wait(), Ok(None))).collect()
    }

    pub fn stop(&self) {
        // Taken out, so that a second call (Drop after stop) signals no pid that may be reused.
        let Procs { mut gateways, mut nodes, mut redis } = std::mem::take(&mut *self.procs());
        for c in gateways.iter_mut().chain(nodes.iter_mut().flatten()).chain(redis.iter_mut()) {
            signal_pid(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Nothing outlives the soak, even when it stops half set up.
impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

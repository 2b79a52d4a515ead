//! The composition root: starts every part of a gateway from one config (balancer, health checks,
//! fleet sync, admin listener, TLS, listeners), reloads what can be reloaded, and drains on shutdown.
//! `main.rs` is the command line around it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::balancer::{Balancer, Node};
use crate::config::Config;
use crate::proxy::Proxy;
use crate::shutdown::Phase;
use crate::{admin, health, listener};

/// A started gateway.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    reloader: Arc<Reloader>,
    phase: watch::Sender<Phase>,
    /// Every accept loop and connection holds a sender; `recv` returning `None` means all are gone.
    alive: mpsc::Receiver<()>,
    cluster: Option<Arc<crate::cluster::ClusterState>>,
    redirect_addrs: Vec<SocketAddr>,
    refusals: crate::events::Refusals,
}

/// What a reload changes, shared by SIGHUP (`Gateway::reload`) and the admin API's
/// `POST /reload`; reloads are applied one at a time.
pub struct Reloader {
    /// The config in force.
    config: std::sync::Mutex<Arc<Config>>,
    proxy: Arc<Proxy>,
    balancer: Arc<Balancer>,
    tls: Option<Arc<crate::tls::TlsServer>>,
    /// iota-rebased: each node's latest checkpoint, for the health checks' lag.
    checkpoints: Arc<health::Checkpoints>,
    phase: watch::Receiver<Phase>,
    /// The rate limiters in force, for the cluster sync.
    limiters: watch::Sender<Vec<Arc<crate::pipeline::rate_limit::RateLimiter>>>,
    /// The listeners' connection caps.
    caps: Arc<listener::caps::Caps>,
    /// The jails running, with `[bans]`.
    jails: Option<Arc<crate::bans::engine::Jails>>,
}

/// What a reload did: the sections whose changes are in force, and the changed settings that
/// take a restart, by name (`gateway.listen`, `admin`, ...).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Reloaded {
    pub applied: Vec<&'static str>,
    pub restart_needed: Vec<&'static str>,
}

impl Gateway {
    /// Binds every `[gateway] listen` address and starts serving.
    pub async fn start(config: Config) -> io::Result<Gateway> {
        let config = Arc::new(config);
        let upstream = config.upstream.ready(https_nodes(&config.nodes)).map_err(io::Error::other)?;
        let nodes = config.nodes.iter().map(|n| Node::new(n, &upstream)).collect();
        let balancer = Arc::new(Balancer::new(nodes));
        let bans = Arc::new(match &config.bans {
            Some(b @ crate::bans::engine::Bans { state_dir: Some(dir), .. }) => {
                // A network's history matters while a jail can still raise its next ban.
                let history = b.jails.iter().map(|j| j.settings.max_bantime).max().unwrap_or_default();
                crate::bans::list::BanList::with_state(dir, history).map_err(io::Error::other)?
            }
            _ => crate::bans::list::BanList::default(),
        });
        let checkpoints = Arc::new(health::Checkpoints::default());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let pipeline = crate::proxy::Pipeline::new(
            config.clone(),
            balancer.clone(),
            bans.clone(),
            checkpoints.clone(),
            metrics.clone(),
        );
        let proxy = Arc::new(Proxy::new(pipeline));
        let refusals = proxy.refusals();
        let (phase, _) = watch::channel(Phase::Running);
        if config.health.active {
            for node in balancer.nodes().iter() {
                health::spawn(
                    node.clone(),
                    config.gateway.profile,
                    config.health.clone(),
                    checkpoints.clone(),
                    phase.subscribe(),
                );
            }
        }
        let (limiters, limiters_rx) = watch::channel(proxy.limiters());
        let cluster = config.cluster.as_ref().map(|c| crate::cluster::spawn(c, limiters_rx, phase.subscribe()));
        // Every accept loop, connection and state-keeping task holds a sender; shutdown waits for
        // them all.
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let mut ban_admin = admin::BanAdmin { list: bans.clone(), rails: None, jails: None, firewall: None };
        if let Some(b) = &config.bans {
            // Trusted proxies and the nodes themselves are never banned, whatever a jail says.
            let mut b = b.clone();
            let nodes: Vec<ipnet::IpNet> = config
                .nodes
                .iter()
                .filter_map(|n| n.authority.host().trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
                .map(ipnet::IpNet::from)
                .collect();
            b.ignore =
                b.ignore.union(&config.gateway.trusted_proxies).union(&crate::pipeline::ip_set::IpSet::new(&nodes));
            let rails = Arc::new(crate::bans::rails::Rails::new(b.ignore.clone(), b.ssh_ports.clone()));
            ban_admin.jails =
                Some(crate::bans::engine::Jails::start(&b, bans.clone(), rails.clone(), &refusals, &phase, &alive_tx));
            if let Some(c) = &config.cluster {
                crate::bans::share::spawn(&c.redis, &c.key_prefix, bans.clone(), rails.clone(), phase.subscribe());
            }
            ban_admin.rails = Some(rails);
            if b.firewall == crate::bans::engine::Firewall::Nftables {
                ban_admin.firewall = Some(crate::bans::nft::spawn(bans.clone(), b.verify_interval, phase.subscribe()));
            }
        }
        let tls = match &config.tls {
            Some(t) => {
                let server = crate::tls::TlsServer::new(t).map_err(io::Error::other)?;
                if let Some(acme) = &t.acme {
                    crate::tls::acme::preload(acme, &server.resolver);
                }
                server.watch(t.reload_interval, phase.subscribe());
                Some(server)
            }
            None => None,
        };
        let bound = listener::bind_all(&config, proxy.clone(), bans.clone(), tls.as_deref(), &phase, alive_tx).await?;
        if let (Some(acme), Some(server)) = (config.tls.as_ref().and_then(|t| t.acme.clone()), &tls) {
            let responders = crate::tls::acme::Responders { tls: server.resolver.clone(), http: bound.http01.clone() };
            crate::tls::acme::spawn(acme, responders, phase.subscribe());
        }
        let (addrs, redirect_addrs) = (bound.addrs, bound.redirect_addrs);
        let reloader = Arc::new(Reloader {
            config: std::sync::Mutex::new(config.clone()),
            proxy,
            balancer: balancer.clone(),
            tls,
            checkpoints,
            phase: phase.subscribe(),
            limiters,
            caps: bound.caps,
            jails: ban_admin.jails.clone(),
        });
        let admin = match config.admin {
            Some(addr) => {
                let parts = admin::Parts {
                    balancer,
                    cluster: cluster.clone(),
                    bans: ban_admin,
                    reloader: reloader.clone(),
                    metrics,
                    tls: reloader.tls.clone(),
                    refusals: refusals.clone(),
                };
                Some(admin::start(addr, parts, phase.subscribe()).await?)
            }
            None => None,
        };
        Ok(Gateway { addrs, redirect_addrs, admin, reloader, phase, alive, cluster, refusals })
    }

    /// The bound addresses: `[gateway] listen`, then `listen_proxy_protocol`, then
    /// `[tls.client_auth] listen`, in order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound `listen_http` (redirect) addresses.
    pub fn redirect_addrs(&self) -> &[SocketAddr] {
        &self.redirect_addrs
    }

    /// Loads the TLS certificate files again now (as SIGHUP does); an error keeps the old ones.
    pub fn reload_certificates(&self) -> Result<(), String> {
        self.reloader.reload_certificates()
    }

    /// Applies a new config (see `Reloader::apply`).
    pub fn reload(&self, new: Config) -> Result<Reloaded, String> {
        self.reloader.apply(new)
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.reloader.config()
    }

    /// What reloads go through (SIGHUP, the admin API).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Whether Redis answered the last limit sync: `"unknown"`, `"up"` or `"down"`; `None`
    /// without `[cluster]`.
    pub fn redis_status(&self) -> Option<&'static str> {
        self.cluster.as_ref().map(|c| c.redis())
    }

    /// Every request refused from now on, as a typed event (the ban engine's input).
    pub fn refusals(&self) -> tokio::sync::broadcast::Receiver<crate::events::Refusal> {
        self.refusals.subscribe()
    }

    /// The admin listener's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Stops accepting, lets in-flight requests finish for up to the drain timeout, then closes
    /// whatever is left. Returns once every connection is gone.
    pub async fn shutdown(mut self) {
        self.phase.send_replace(Phase::Draining);
        let timeout = self.reloader.config().gateway.drain_timeout;
        let drained = tokio::time::timeout(timeout, self.alive.recv()).await.is_ok();
        if !drained {
            tracing::warn!(?timeout, "drain timeout passed; closing remaining connections");
            self.phase.send_replace(Phase::Stopped);
            self.alive.recv().await;
        }
        tracing::info!("stopped");
    }
}

fn https_nodes(nodes: &[crate::balancer::NodeSettings]) -> bool {
    nodes.iter().any(|n| n.scheme == http::uri::Scheme::HTTPS)
}

impl admin::Reload for Reloader {
    fn reload_file(&self) -> Result<serde_json::Value, String> {
        Reloader::reload_file(self).map(|done| serde_json::json!(done))
    }

    fn config(&self) -> Arc<Config> {
        Reloader::config(self)
    }
}

impl Reloader {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the TLS certificate files again now; an error keeps the old ones.
    pub fn reload_certificates(&self) -> Result<(), String> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Reads the config file the running config came from again and applies it (the admin API's
    /// `POST /reload`, SIGHUP). A file that does not load changes nothing; the error names its
    /// file, line and column.
    pub fn reload_file(&self) -> Result<Reloaded, String> {
        let Some(path) = self.config().source.clone() else {
            return Err("the running config was not read from a file: nothing to reload".into());
        };
        let done = Config::load(&path).map_err(|e| e.to_string()).and_then(|new| self.apply(new));
        if done.is_err() {
            self.proxy.metrics().reloaded(false);
        }
        done
    }

    /// Puts a new config in force without dropping anything in flight: the request pipeline
    /// (access lists, routes, methods, API keys, JWT issuers, rate limits, trusted proxies, body
    /// and time limits, the access log switch) is swapped whole, so the next request on any
    /// connection is judged by the new rules; nodes are added, removed or re-weighted (see
    /// `Balancer::reload`); TLS certificate files are read again. Settings that need new
    /// listeners or tasks are left as they are and named in `restart_needed`.
    pub fn apply(&self, new: Config) -> Result<Reloaded, String> {
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let old = current.clone();
        let upstream = new
            .upstream
            .ready(https_nodes(&new.nodes))
            .map_err(|e| format!("the system's root certificates for https:// nodes did not load: {e}"))?;
        let report = changes(&old, &new);
        // The one part that can still fail goes first, so a failure changes nothing.
        if let (Some(server), Some(tls)) = (&self.tls, &new.tls) {
            server.update(tls).map_err(|e| format!("tls: {e}"))?;
        }
        let mut new = new;
        if new.source.is_none() {
            new.source = old.source.clone();
        }
        let new = Arc::new(new);
        let nodes = self.balancer.reload(&new.nodes, &upstream);
        if old.health.active {
            for node in &nodes.added {
                health::spawn(
                    node.clone(),
                    old.gateway.profile,
                    old.health.clone(),
                    self.checkpoints.clone(),
                    self.phase.clone(),
                );
            }
        }
        if let Err(e) = crate::logging::reload(&new.log) {
            tracing::warn!(error = %e, "log level and format not reloaded");
        }
        self.proxy.reload(new.clone());
        if let (Some(jails), Some(bans)) = (&self.jails, &new.bans) {
            let (started, stopped) = jails.reload(&bans.jails);
            if !started.is_empty() || !stopped.is_empty() {
                tracing::info!(?started, ?stopped, "jails reloaded");
            }
        }
        let g = &new.gateway;
        self.caps.update(g.max_connections, g.max_connections_per_client, g.trusted_proxies.clone());
        self.limiters.send_replace(self.proxy.limiters());
        *current = new;
        self.proxy.metrics().reloaded(true);
        let added: Vec<&str> = nodes.added.iter().map(|n| &*n.name).collect();
        tracing::info!(applied = ?report.applied, ?added, removed = ?nodes.removed, "config reloaded");
        if !report.restart_needed.is_empty() {
            tracing::warn!(settings = ?report.restart_needed, "changed settings that take a restart are left as they are");
        }
        Ok(report)
    }
}

/// Which sections differ between `old` and `new`, split into what a reload applies and what
/// takes a restart.
fn changes(old: &Config, new: &Config) -> Reloaded {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (o, n) = (&old.gateway, &new.gateway);
    let mut r = Reloaded::default();
    // A `[tls]` setting that differs between two configs that both have `[tls]`.
    fn tls_differs<T: PartialEq>(old: &Config, new: &Config, f: impl Fn(&crate::tls::Tls) -> T) -> bool {
        match (&old.tls, &new.tls) {
            (Some(a), Some(b)) => f(a) != f(b),
            _ => false,
        }
    }
    let applied = [
        ("node", differs(&old.nodes, &new.nodes)),
        ("access", old.access != new.access),
        ("route", differs(&old.routes, &new.routes)),
        ("method", old.methods != new.methods),
        ("api_key", differs(&old.api_keys, &new.api_keys)),
        ("jwt", old.jwts != new.jwts),
        ("rate_limit", old.rate_limit != new.rate_limit),
        ("gateway.trusted_proxies", o.trusted_proxies != n.trusted_proxies),
        ("gateway.max_connections", o.max_connections != n.max_connections),
        ("gateway.max_connections_per_client", o.max_connections_per_client != n.max_connections_per_client),
        ("gateway.client_ip_header", differs(&o.client_ip_header, &n.client_ip_header)),
        (
            "gateway (body, time and per-client limits)",
            differs(
                &(o.allow_encoded_percent, o.max_body, o.header_timeout, o.idle_timeout, o.drain_timeout),
                &(n.allow_encoded_percent, n.max_body, n.header_timeout, n.idle_timeout, n.drain_timeout),
            ) || differs(
                &(o.max_in_flight_per_client, o.body_timeout, o.min_body_rate, o.request_buffer, o.send_timeout),
                &(n.max_in_flight_per_client, n.body_timeout, n.min_body_rate, n.request_buffer, n.send_timeout),
            ) || differs(
                &(o.max_batch, o.max_logs_range, o.max_subscriptions_per_client, o.max_streams_per_client),
                &(n.max_batch, n.max_logs_range, n.max_subscriptions_per_client, n.max_streams_per_client),
            ),
        ),
        (
            "jail",
            old.bans.is_some()
                && new.bans.is_some()
                && differs(&old.bans.as_ref().map(|b| &b.jails), &new.bans.as_ref().map(|b| &b.jails)),
        ),
        ("log.access", old.log.access != new.log.access),
        ("log (level, format)", old.log.level != new.log.level || old.log.format != new.log.format),
        (
            "tls (certificates, client CA, hsts)",
            tls_differs(old, new, |t| (t.certs.clone(), t.hsts.clone(), t.client_auth.clone())),
        ),
        ("upstream (timeouts)", differs(&old.upstream, &new.upstream)),
    ];
    r.applied = applied.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect();
    // hyper's own cap on a request head is twice `max_header_size` as it was at start.
    let head_cap = o.max_header_size.saturating_mul(2).max(8192);
    let restart = [
        ("gateway.listen", o.listen != n.listen),
        ("gateway.listen_proxy_protocol", o.listen_proxy_protocol != n.listen_proxy_protocol),
        ("gateway.listen_http", o.listen_http != n.listen_http),
        ("gateway.workers", o.workers != n.workers),
        ("gateway.profile", o.profile != n.profile),
        ("gateway.max_header_size", n.max_header_size > head_cap),
        ("gateway.h2_max_concurrent_streams", o.h2_max_concurrent_streams != n.h2_max_concurrent_streams),
        ("admin", old.admin != new.admin),
        ("cluster", old.cluster != new.cluster),
        ("health", differs(&old.health, &new.health)),
        ("tls", old.tls.is_some() != new.tls.is_some()),
        ("tls.acme", old.tls.as_ref().map(|t| &t.acme) != new.tls.as_ref().map(|t| &t.acme)),
        ("tls.reload_interval", tls_differs(old, new, |t| t.reload_interval)),
        ("tls.client_auth.listen", tls_differs(old, new, |t| t.client_auth.as_ref().map(|c| c.listen.clone()))),
        (
            "bans",
            match (&old.bans, &new.bans) {
                (Some(a), Some(b)) => differs(
                    &(&a.state_dir, &a.ignore, a.firewall, a.verify_interval, &a.ssh_ports),
                    &(&b.state_dir, &b.ignore, b.firewall, b.verify_interval, &b.ssh_ports),
                ),
                (a, b) => a.is_some() != b.is_some(),
            },
        ),
    ];
    r.restart_needed = restart.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect();
    if o.max_header_size != n.max_header_size && n.max_header_size <= head_cap {
        r.applied.push("gateway.max_header_size");
    }
    r
}

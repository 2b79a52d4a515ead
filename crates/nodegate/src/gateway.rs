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
    /// `[upstream]` as the pools use it (with the system's roots loaded when needed).
    upstream: crate::upstream::Upstream,
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    config: Arc<Config>,
    balancer: Arc<Balancer>,
    phase: watch::Sender<Phase>,
    /// Every accept loop and connection holds a sender; `recv` returning `None` means all are gone.
    alive: mpsc::Receiver<()>,
    drain_timeout: std::time::Duration,
    cluster: Option<Arc<crate::cluster::ClusterState>>,
    tls: Option<Arc<crate::tls::TlsServer>>,
    redirect_addrs: Vec<SocketAddr>,
    refusals: crate::events::Refusals,
    /// iota-rebased: each node's latest checkpoint, for the health checks' lag.
    checkpoints: Arc<health::Checkpoints>,
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
        let proxy = Arc::new(Proxy::new(config.clone(), balancer.clone(), bans.clone(), checkpoints.clone()));
        let refusals = proxy.refusals().clone();
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
        let cluster =
            config.cluster.as_ref().map(|c| crate::cluster::spawn(c, proxy.limiters().all(), phase.subscribe()));
        // Every accept loop, connection and state-keeping task holds a sender; shutdown waits for
        // them all.
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let mut ban_admin = admin::BanAdmin { list: bans.clone(), rails: None, jails: Vec::new(), firewall: None };
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
                crate::bans::engine::spawn(&b, bans.clone(), rails.clone(), proxy.refusals(), &phase, &alive_tx);
            if let Some(c) = &config.cluster {
                crate::bans::share::spawn(&c.redis, &c.key_prefix, bans.clone(), rails.clone(), phase.subscribe());
            }
            ban_admin.rails = Some(rails);
            if b.firewall == crate::bans::engine::Firewall::Nftables {
                ban_admin.firewall = Some(crate::bans::nft::spawn(bans.clone(), b.verify_interval, phase.subscribe()));
            }
        }
        let admin = match config.admin {
            Some(addr) => {
                Some(admin::start(addr, balancer.clone(), cluster.clone(), ban_admin, phase.subscribe()).await?)
            }
            None => None,
        };
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
        let bound = listener::bind_all(&config, proxy, bans.clone(), tls.as_deref(), &phase, alive_tx).await?;
        if let (Some(acme), Some(server)) = (config.tls.as_ref().and_then(|t| t.acme.clone()), &tls) {
            let responders = crate::tls::acme::Responders { tls: server.resolver.clone(), http: bound.http01.clone() };
            crate::tls::acme::spawn(acme, responders, phase.subscribe());
        }
        let (addrs, redirect_addrs) = (bound.addrs, bound.redirect_addrs);
        let drain_timeout = config.gateway.drain_timeout;
        Ok(Gateway {
            upstream,
            addrs,
            redirect_addrs,
            admin,
            config,
            balancer,
            phase,
            alive,
            drain_timeout,
            cluster,
            tls,
            refusals,
            checkpoints,
        })
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
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Applies a new config's `[[node]]` list without dropping anything in flight: nodes are added,
    /// removed or re-weighted (see `Balancer::reload`). Other sections take a restart; a change to
    /// them is reported as a warning and left alone.
    pub fn reload(&self, new: &Config) {
        if let Err(e) = self.reload_certificates() {
            tracing::warn!(error = %e, "TLS certificates not reloaded: keeping the ones in use");
        }
        let upstream = match self.upstream.ready(https_nodes(&new.nodes)) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the system's root certificates for https:// nodes did not load");
                return;
            }
        };
        let changes = self.balancer.reload(&new.nodes, &upstream);
        if self.config.health.active {
            for node in &changes.added {
                health::spawn(
                    node.clone(),
                    self.config.gateway.profile,
                    self.config.health.clone(),
                    self.checkpoints.clone(),
                    self.phase.subscribe(),
                );
            }
        }
        let added: Vec<&str> = changes.added.iter().map(|n| &*n.name).collect();
        tracing::info!(?added, removed = ?changes.removed, kept = ?changes.kept, "nodes reloaded");
        let old = &self.config;
        if new.gateway.listen != old.gateway.listen
            || new.gateway.profile != old.gateway.profile
            || new.admin != old.admin
            || new.cluster != old.cluster
            || format!("{:?}{:?}{:?}{:?}", new.upstream, new.health, new.log, new.rate_limit)
                != format!("{:?}{:?}{:?}{:?}", old.upstream, old.health, old.log, old.rate_limit)
        {
            tracing::warn!("reload applies [[node]] changes only; other changed settings take a restart");
        }
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
        let drained = tokio::time::timeout(self.drain_timeout, self.alive.recv()).await.is_ok();
        if !drained {
            tracing::warn!(timeout = ?self.drain_timeout, "drain timeout passed; closing remaining connections");
            self.phase.send_replace(Phase::Stopped);
            self.alive.recv().await;
        }
        tracing::info!("stopped");
    }
}

fn https_nodes(nodes: &[crate::balancer::NodeSettings]) -> bool {
    nodes.iter().any(|n| n.scheme == http::uri::Scheme::HTTPS)
}

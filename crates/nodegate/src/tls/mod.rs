//! TLS termination with rustls (ring provider): TLS 1.2 and 1.3 only, rustls' modern cipher suites
//! (AEAD with forward secrecy), ALPN `h2` and `http/1.1`, resumption by session id and by
//! stateless tickets (keys rotated by rustls' ticketer).
//!
//! Certificates are chosen by SNI from a snapshot swapped whole on reload: `[tls] cert`/`key`, or
//! several `[[tls.cert]]` each for the names it lists (or, when it lists none, the DNS names in the
//! certificate). A name matches exactly or by one-label wildcard (`*.example.com`); a client that
//! sends no SNI, or one no certificate names, gets the first certificate. Files are checked for
//! changes every `reload_interval` and on SIGHUP; a new snapshot is built from every file and
//! replaces the old one only when all of them load and each key matches its certificate, so a
//! broken file keeps the old certificates (logged with the reason). Handshakes already done keep
//! their certificate: connections are never dropped by a reload.

pub mod acme;
mod client;

pub use client::{ClientIdentity, client_identity, load_roots};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::shutdown::Phase;

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One certificate with its key, loaded and checked, and the names it serves.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// The end-entity certificate's expiry.
    pub not_after: SystemTime,
}

/// Reads a PEM certificate chain and its private key (PKCS#8, PKCS#1 RSA or SEC1 EC: RSA, ECDSA and
/// Ed25519 keys), and checks that the key belongs to the certificate.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read `{}`: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no certificate", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from `{}`: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, der, &provider())
        .map_err(|e| format!("`{}` with `{}`: {e}", cert.display(), key.display()))?;
    let (names, not_after) = cert_facts(&certified.cert[0])
        .ok_or_else(|| format!("`{}`: the certificate cannot be parsed", cert.display()))?;
    Ok(Loaded { key: Arc::new(certified), names, not_after })
}

/// The DNS names (SANs, else the common name) and the expiry of a certificate.
pub fn cert_facts(der: &CertificateDer<'_>) -> Option<(Vec<String>, SystemTime)> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty()
        && let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_ascii_lowercase());
    }
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Some((names, SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
}

/// The certificates in force: looked up by SNI on every handshake, replaced whole on reload.
#[derive(Default)]
pub struct Certs {
    first: Option<Arc<CertifiedKey>>,
    /// Each certificate's first name and its expiry (`/metrics`, the status page).
    expiries: Vec<(String, SystemTime)>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    pub fn new(loaded: Vec<(Loaded, Vec<String>)>) -> Certs {
        let mut certs = Certs::default();
        for (l, configured) in loaded {
            let names = if configured.is_empty() { &l.names } else { &configured };
            for name in names {
                certs.insert(name, &l.key, false);
            }
            certs.first.get_or_insert_with(|| l.key.clone());
            certs.expiries.push((names.first().cloned().unwrap_or_default(), l.not_after));
        }
        certs
    }

    /// Files `key` under `name` (`*.example.com` under `example.com` as a wildcard); an earlier
    /// certificate for the same name stays unless `replace`.
    fn insert(&mut self, name: &str, key: &Arc<CertifiedKey>, replace: bool) {
        let name = name.to_ascii_lowercase();
        let (map, name) = match name.strip_prefix("*.") {
            Some(parent) => (&mut self.wildcard, parent.to_owned()),
            None => (&mut self.exact, name),
        };
        if replace || !map.contains_key(&name) {
            map.insert(name, key.clone());
        }
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.first.clone()
    }
}

/// Picks the certificate for each handshake; ACME's TLS-ALPN-01 answers go first.
#[derive(Default)]
pub struct Resolver {
    certs: ArcSwap<Certs>,
    /// Domain -> the self-signed certificate proving control of it (RFC 8737), while one is asked.
    pub alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.alpn().is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN)) {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.alpn_challenges.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
        }
        self.certs.load().find(hello.server_name())
    }
}

impl Resolver {
    /// Each certificate in force: its first name and when it expires.
    pub fn expiries(&self) -> Vec<(String, SystemTime)> {
        self.certs.load().expiries.clone()
    }

    pub fn set(&self, certs: Certs) {
        self.certs.store(Arc::new(certs));
    }

    /// Adds (or replaces) certificates without touching the others: ACME's, as they are issued.
    pub fn add(&self, loaded: Loaded) {
        let current = self.certs.load();
        let mut expiries = current.expiries.clone();
        let name = loaded.names.first().cloned().unwrap_or_default();
        expiries.retain(|(n, _)| *n != name);
        expiries.push((name, loaded.not_after));
        let mut next = Certs {
            expiries,
            first: current.first.clone().or_else(|| Some(loaded.key.clone())),
            exact: current.exact.clone(),
            wildcard: current.wildcard.clone(),
        };
        for name in &loaded.names {
            next.insert(name, &loaded.key, true);
        }
        self.certs.store(Arc::new(next));
    }
}

/// The server side of `[tls]`: the resolver, the configs the listeners use, and the files to watch.
/// A reload (`update`) swaps certificates and the client CA in place: handshakes after it use the
/// new ones, connections already open keep theirs.
pub struct TlsServer {
    pub resolver: Arc<Resolver>,
    /// For `[gateway] listen`.
    pub main: Arc<Acceptor>,
    /// For `[tls.client_auth] listen`, when configured.
    pub client_auth: Option<Arc<Acceptor>>,
    files: Mutex<Vec<CertFiles>>,
    seen: Mutex<Vec<Option<SystemTime>>>,
}

/// What a TLS listener accepts with: its rustls config, swapped whole when the client CA changes.
pub struct Acceptor {
    config: ArcSwap<ServerConfig>,
    /// On the client-certificate listener: the CA in force.
    pub trust: Option<ClientTrust>,
}

impl Acceptor {
    /// The config for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }
}

/// The client CA in force and its generation (one more at each change). A certificate verified
/// under an earlier CA is verified again under the current one before it counts on a connection
/// that outlived the change, so removing a CA by reload shuts out its clients at their next request.
pub struct ClientTrust {
    current: ArcSwap<TrustGeneration>,
    /// The CA file, whether a certificate is required, and the file's change time, as loaded.
    loaded: Mutex<(PathBuf, bool, Option<SystemTime>)>,
}

pub struct TrustGeneration {
    pub generation: u64,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl ClientTrust {
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Whether `chain` passes the CA in force now.
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((end, intermediates)) = chain.split_first() else { return false };
        let now = rustls::pki_types::UnixTime::now();
        self.current.load().verifier.verify_client_cert(end, intermediates, now).is_ok()
    }
}

impl TlsServer {
    pub fn new(tls: &Tls) -> Result<Arc<TlsServer>, String> {
        let resolver = Arc::new(Resolver::default());
        let main = Acceptor { config: ArcSwap::new(server_config(&resolver, None, tls.acme.is_some())?), trust: None };
        let client_auth = match &tls.client_auth {
            Some(ca) => {
                let verifier = client_verifier(&ca.ca, ca.required)?;
                let config = server_config(&resolver, Some(verifier.clone()), false)?;
                let trust = ClientTrust {
                    current: ArcSwap::from_pointee(TrustGeneration { generation: 0, verifier }),
                    loaded: Mutex::new((ca.ca.clone(), ca.required, modified(&ca.ca))),
                };
                Some(Arc::new(Acceptor { config: ArcSwap::new(config), trust: Some(trust) }))
            }
            None => None,
        };
        let server = TlsServer {
            main: Arc::new(main),
            client_auth,
            resolver,
            seen: Mutex::new(vec![None; tls.certs.len()]),
            files: Mutex::new(tls.certs.clone()),
        };
        server.reload()?;
        Ok(Arc::new(server))
    }

    /// Puts a reloaded `[tls]` in force: its certificate files (all must load, or nothing
    /// changes) and its client CA (read again when the file, its path or `required` changed).
    /// ACME, the listeners and `reload_interval` stay as they started (a restart applies them).
    pub fn update(&self, tls: &Tls) -> Result<(), String> {
        // (The client-certificate listener's acceptor always has a trust: `new` makes it so.)
        let listener = self.client_auth.as_ref().and_then(|a| a.trust.as_ref().map(|t| (a, t)));
        let renewed_trust = match (listener, &tls.client_auth) {
            (Some((acceptor, trust)), Some(ca)) => {
                let now = (ca.ca.clone(), ca.required, modified(&ca.ca));
                let changed = *trust.loaded.lock().unwrap_or_else(|e| e.into_inner()) != now;
                if changed {
                    let verifier = client_verifier(&ca.ca, ca.required)?;
                    let config = server_config(&self.resolver, Some(verifier.clone()), false)?;
                    Some((acceptor, trust, verifier, config, now))
                } else {
                    None
                }
            }
            _ => None,
        };
        let files_changed = *self.files.lock().unwrap_or_else(|e| e.into_inner()) != tls.certs;
        if files_changed {
            self.load(&tls.certs)?;
            *self.files.lock().unwrap_or_else(|e| e.into_inner()) = tls.certs.clone();
        } else {
            self.reload()?;
        }
        if let Some((acceptor, trust, verifier, config, now)) = renewed_trust {
            // A fresh config has fresh session tickets: a session resumed from before the change
            // cannot skip the new CA.
            acceptor.config.store(config);
            let generation = trust.generation() + 1;
            trust.current.store(Arc::new(TrustGeneration { generation, verifier }));
            *trust.loaded.lock().unwrap_or_else(|e| e.into_inner()) = now;
            tracing::info!(ca = %tls.client_auth.as_ref().map_or_else(String::new, |c| c.ca.display().to_string()), generation, "client CA loaded");
        }
        Ok(())
    }

    /// Loads every certificate file again; swaps them in only if all load.
    pub fn reload(&self) -> Result<(), String> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.load(&files)
    }

    fn load(&self, files: &[CertFiles]) -> Result<(), String> {
        if files.is_empty() {
            return Ok(());
        }
        let stamps = stamps(files);
        let mut loaded = Vec::with_capacity(files.len());
        for f in files {
            loaded.push((load_pair(&f.cert, &f.key)?, f.names.clone()));
        }
        let count = loaded.len();
        self.resolver.set(Certs::new(loaded));
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        tracing::info!(certificates = count, "TLS certificates loaded");
        Ok(())
    }

    /// Reloads if any file changed since the last load; a failure keeps the old certificates.
    fn reload_if_changed(&self) {
        let now = stamps(&self.files.lock().unwrap_or_else(|e| e.into_inner()));
        if *self.seen.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return;
        }
        if let Err(e) = self.reload() {
            // Not again until the files change once more.
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
            tracing::warn!(error = %e, "TLS certificates not reloaded: keeping the ones in use");
        }
    }

    /// Checks the files every `every` until the gateway stops.
    pub fn watch(self: &Arc<Self>, every: Duration, mut phase: watch::Receiver<Phase>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = phase.wait_for(|p| *p != Phase::Running) => return,
                }
                // File reads and parsing on the blocking pool, never on a worker.
                let me = me.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            }
        });
    }
}

/// When each certificate's files last changed (the later of cert and key).
fn stamps(files: &[CertFiles]) -> Vec<Option<SystemTime>> {
    files.iter().map(|f| modified(&f.cert).max(modified(&f.key))).collect()
}

/// Verifies client certificates against the CAs in `ca`; with `required`, a client must send one.
fn client_verifier(ca: &Path, required: bool) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let roots = Arc::new(load_roots(ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = if required { verifier } else { verifier.allow_unauthenticated() };
    verifier.build().map_err(|e| format!("`{}`: {e}", ca.display()))
}

/// Runs file I/O on tokio's blocking pool, so a slow disk never holds up a worker's requests.
pub(crate) async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("file task failed: {e}"))?
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The listener config: TLS 1.3 and 1.2, h2 then http/1.1, 4,096 TLS 1.2 sessions cached and
/// tickets for both versions; with a client verifier, client certificates are verified by it.
fn server_config(
    resolver: &Arc<Resolver>,
    client: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    acme: bool,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    if acme {
        // Only chosen by a client that offers nothing else: the CA validating TLS-ALPN-01.
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.session_storage = ServerSessionMemoryCache::new(4096);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// A self-signed certificate for development (`nodegate cert self-signed`): ECDSA P-256, valid for
/// `names` (DNS names or IP addresses) from the start of this year to the end of next year.
/// Returns the certificate and key, both PEM.
pub fn self_signed(names: &[String]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[derive(Debug, Clone, PartialEq)]
/// `[tls]`, as the TLS parts run on it.
pub struct Tls {
    pub certs: Vec<CertFiles>,
    pub hsts: Option<http::HeaderValue>,
    pub reload_interval: Duration,
    pub client_auth: Option<ClientAuth>,
    pub acme: Option<Acme>,
}

/// `[tls.acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    pub state_dir: std::path::PathBuf,
    pub challenge: AcmeChallenge,
    pub directory_ca: Option<std::path::PathBuf>,
    pub renew_before: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// SNI names; empty = the names in the certificate.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuth {
    pub ca: std::path::PathBuf,
    pub listen: Vec<std::net::SocketAddr>,
    pub required: bool,
    pub roles: Vec<crate::pipeline::auth::Role>,
}

//! `[tls.acme]`: certificates from an ACME CA (Let's Encrypt, or any RFC 8555 server), obtained and
//! renewed by the gateway itself, as Caddy does.
//!
//! The account key and the certificate with its key live in `state_dir` (keys readable by the
//! owner only), so a restart serves the stored certificate at once and only renews when due. A
//! certificate is renewed `renew_before` its expiry (30 days by default); a failed attempt is
//! retried after 10 s, doubling up to an hour. Each step is one log line: account, order, each
//! challenge, issuance, where the certificate is stored, when it will be renewed.
//!
//! Challenges: HTTP-01, answered on `[gateway] listen_http` (port 80 for a public CA), or
//! TLS-ALPN-01 (RFC 8737), answered on the HTTPS listener by a self-signed certificate carrying the
//! key authorization, given only to clients that ask for the `acme-tls/1` protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::{Acme, AcmeChallenge};
use super::{Loaded, Resolver, load_pair};
use crate::shutdown::Phase;

const ACCOUNT: &str = "account.json";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// HTTP-01 answers while an order is open: token -> key authorization, served by the
/// `listen_http` listeners.
#[derive(Default)]
pub struct Http01Tokens {
    pub challenges: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Http01Tokens {
    /// The key authorization for `token`, while its order asks for it.
    pub fn get(&self, token: &str) -> Option<String> {
        self.challenges.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }
}

/// Where challenge answers go while an order is open.
pub struct Responders {
    pub tls: Arc<Resolver>,
    pub http: Arc<Http01Tokens>,
}

/// Loads a stored certificate, or gets one, then keeps it renewed, until the gateway stops.
pub fn spawn(acme: Acme, responders: Responders, mut phase: watch::Receiver<Phase>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(10);
        loop {
            let reading = acme.clone();
            let stored_now = super::off_worker(move || Ok(stored(&reading))).await.unwrap_or(None);
            let wait = match stored_now {
                Some(loaded) if !due(&acme, &loaded) => {
                    let renew_at = loaded.not_after - acme.renew_before;
                    responders.tls.add(loaded);
                    let wait = renew_at.duration_since(SystemTime::now()).unwrap_or_default();
                    tracing::info!(domains = ?acme.domains, renew_in_hours = wait.as_secs() / 3600, "ACME certificate in use");
                    // Look again at least twice a day: clocks jump, files get replaced.
                    wait.clamp(Duration::from_secs(60), Duration::from_secs(12 * 3600))
                }
                stored => {
                    // An old certificate keeps serving while a new one is asked for.
                    if let Some(old) = stored {
                        tracing::info!(domains = ?acme.domains, "ACME certificate due for renewal");
                        responders.tls.add(old);
                    }
                    match obtain(&acme, &responders).await {
                        Ok(loaded) => {
                            backoff = Duration::from_secs(10);
                            responders.tls.add(loaded);
                            // Even a certificate due at once is not asked for again within a minute.
                            Duration::from_secs(60)
                        }
                        Err(e) => {
                            tracing::error!(domains = ?acme.domains, error = %e, retry_in_s = backoff.as_secs(), "ACME certificate not obtained");
                            let wait = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(3600));
                            wait
                        }
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
        }
    });
}

/// Serves the stored certificate, if there is one, due for renewal or not: called at start, before
/// the listeners take connections, so that it is there from the first handshake.
pub fn preload(acme: &Acme, resolver: &Resolver) {
    if let Some(loaded) = stored(acme) {
        resolver.add(loaded);
    }
}

fn stored(acme: &Acme) -> Option<Loaded> {
    let (cert, key) = (acme.state_dir.join(CERT), acme.state_dir.join(KEY));
    if !cert.exists() {
        return None;
    }
    match load_pair(&cert, &key) {
        Ok(loaded) => Some(loaded),
        Err(e) => {
            tracing::warn!(error = %e, "stored ACME certificate unusable: asking for a new one");
            None
        }
    }
}

/// Due when it expires within `renew_before`, or does not cover every configured domain.
fn due(acme: &Acme, loaded: &Loaded) -> bool {
    let soon = SystemTime::now() + acme.renew_before;
    loaded.not_after <= soon || acme.domains.iter().any(|d| !loaded.names.contains(&d.to_ascii_lowercase()))
}

async fn obtain(acme: &Acme, responders: &Responders) -> Result<Loaded, String> {
    let dir = acme.state_dir.clone();
    super::off_worker(move || {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create state_dir `{}`: {e}", dir.display()))
    })
    .await?;
    let account = account(acme).await?;
    let identifiers: Vec<Identifier> = acme.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| format!("new order: {e}"))?;
    tracing::info!(domains = ?acme.domains, url = order.url(), "ACME order placed");
    let kind = match acme.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut opened: Vec<(String, String)> = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let mut challenge =
                authz.challenge(kind.clone()).ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let domain = challenge.identifier().to_string();
            let key_authorization = challenge.key_authorization();
            match acme.challenge {
                AcmeChallenge::Http01 => {
                    let token = challenge.token.clone();
                    responders
                        .http
                        .challenges
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(token.clone(), key_authorization.as_str().to_owned());
                    opened.push((token, domain.clone()));
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = alpn_certificate(&domain, key_authorization.digest().as_ref())?;
                    responders
                        .tls
                        .alpn_challenges
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(domain.to_ascii_lowercase(), cert);
                    opened.push((String::new(), domain.clone()));
                }
            }
            challenge.set_ready().await.map_err(|e| format!("{domain}: challenge not accepted: {e}"))?;
            tracing::info!(%domain, challenge = ?kind, "ACME challenge ready");
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retry).await.map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the CA did not validate the order: {status:?}"));
        }
        tracing::info!(domains = ?acme.domains, "ACME challenges passed");
        let key_pem = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
        let chain = order.poll_certificate(&retry).await.map_err(|e| format!("certificate: {e}"))?;
        Ok::<_, String>((chain, key_pem))
    }
    .await;
    // Challenge answers are withdrawn whatever happened.
    for (token, domain) in &opened {
        responders.http.challenges.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
        responders.tls.alpn_challenges.lock().unwrap_or_else(|e| e.into_inner()).remove(&domain.to_ascii_lowercase());
    }
    let (chain, key_pem) = result?;
    // Written aside and renamed, so a crash never leaves half a certificate behind.
    let (cert_path, key_path) = (acme.state_dir.join(CERT), acme.state_dir.join(KEY));
    let (cert_at, key_at) = (cert_path.clone(), key_path.clone());
    let loaded = super::off_worker(move || {
        write_atomic(&key_at, key_pem.as_bytes(), true)?;
        write_atomic(&cert_at, chain.as_bytes(), false)?;
        load_pair(&cert_at, &key_at)
    })
    .await?;
    let days = loaded.not_after.duration_since(SystemTime::now()).unwrap_or_default().as_secs() / 86_400;
    tracing::info!(domains = ?acme.domains, path = %cert_path.display(), valid_days = days, "ACME certificate issued and stored");
    Ok(loaded)
}

/// The stored account, or a new one (stored for next time).
async fn account(acme: &Acme) -> Result<Account, String> {
    let path = acme.state_dir.join(ACCOUNT);
    let builder = || match &acme.directory_ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| format!("directory_ca `{}`: {e}", ca.display())),
        None => Account::builder().map_err(|e| e.to_string()),
    };
    let at = path.clone();
    if let Ok(text) = super::off_worker(move || std::fs::read(&at).map_err(|e| e.to_string())).await {
        let credentials: AccountCredentials =
            serde_json::from_slice(&text).map_err(|e| format!("`{}` is not an ACME account: {e}", path.display()))?;
        let account = builder()?.from_credentials(credentials).await.map_err(|e| format!("ACME account: {e}"))?;
        tracing::info!(id = account.id(), "ACME account loaded");
        return Ok(account);
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder()?
        .create(&new, acme.directory.clone(), None)
        .await
        .map_err(|e| format!("creating an ACME account at {}: {e}", acme.directory))?;
    let text = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    let at = path.clone();
    super::off_worker(move || write_atomic(&at, &text, true)).await?;
    tracing::info!(id = account.id(), path = %path.display(), "ACME account created and stored");
    Ok(account)
}

/// RFC 8737: a self-signed certificate for `domain` with the acmeIdentifier extension holding the
/// SHA-256 of the key authorization.
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists to carry.
    let signing = super::provider().key_provider.load_private_key(der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), String> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let _ = private;
    options
        .open(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

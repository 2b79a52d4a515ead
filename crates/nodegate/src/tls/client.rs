//! Client certificates (`[tls.client_auth]`): the trusted CAs, and the identity a verified
//! certificate gives its holder (its subject's common name, else its first DNS name).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Reads PEM CA certificates into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    for c in certs {
        roots.add(c).map_err(|e| format!("`{}`: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The identity in a verified client certificate chain (rustls has checked it before this),
/// accepted by `trust`.
pub fn client_identity(chain: &[CertificateDer<'static>], trust: &Arc<super::Acceptor>) -> Option<ClientIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let name = cn.or_else(|| super::cert_facts(chain.first()?).and_then(|(names, _)| names.into_iter().next()))?;
    // Printable, bounded: it ends up in logs, rate-limit keys and Redis.
    let name: String = name.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(128).collect();
    (!name.is_empty()).then(|| ClientIdentity::new(name, chain.to_vec(), trust.clone()))
}

/// Who a verified client certificate says the client is.
pub struct ClientIdentity {
    pub name: String,
    /// The chain verified at the handshake.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The listener's CA, and the generation of it the chain was verified under.
    pub trust: Arc<super::Acceptor>,
    pub generation: u64,
    /// The later CA generation the chain was verified under again, plus one, shifted left by
    /// one, with whether it passed in the low bit; 0 = not verified again.
    rechecked: AtomicU64,
}

impl ClientIdentity {
    pub fn new(
        name: String,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        trust: Arc<super::Acceptor>,
    ) -> ClientIdentity {
        let generation = trust.trust.as_ref().map_or(0, |t| t.generation());
        ClientIdentity { name, chain, trust, generation, rechecked: AtomicU64::new(0) }
    }

    /// Whether the certificate passes the client CA in force: at once when the CA has not changed
    /// since the handshake, else verified again (once per CA change).
    pub fn trusted(&self) -> bool {
        let Some(trust) = &self.trust.trust else { return true };
        let now = trust.generation();
        if now == self.generation {
            return true;
        }
        let seen = self.rechecked.load(Relaxed);
        if seen >> 1 == now + 1 {
            return seen & 1 == 1;
        }
        let ok = trust.verifies(&self.chain);
        self.rechecked.store(((now + 1) << 1) | u64::from(ok), Relaxed);
        ok
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("name", &self.name).field("generation", &self.generation).finish()
    }
}

//! Client certificates (`[tls.client_auth]`): the trusted CAs, and the identity a verified
//! certificate gives its holder (its subject's common name, else its first DNS name).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use crate::conn::ClientIdentity;

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

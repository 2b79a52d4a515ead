//! TLS toward nodes whose URL is `https://`: rustls with the system's root certificates, or the
//! CA bundle in `[upstream] ca` (for a node with its own CA). HTTP/1.1 is asked for by ALPN, and
//! `h2` for gRPC calls, which need HTTP/2.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The client side, built once from the config and shared by every https:// node: one
/// configuration offering `http/1.1`, one offering `h2` (same roots).
#[derive(Clone)]
pub struct TlsClient {
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.http1, &other.http1)
    }
}

impl TlsClient {
    /// Trusts `ca` (PEM) when given, else the operating system's roots.
    pub fn new(ca: Option<&Path>) -> Result<TlsClient, String> {
        let roots = match ca {
            Some(path) => crate::tls::load_roots(path)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                roots
            }
        };
        let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut h2 = config.clone();
        config.alpn_protocols = vec![crate::tls::ALPN_HTTP1.to_vec()];
        h2.alpn_protocols = vec![crate::tls::ALPN_H2.to_vec()];
        Ok(TlsClient { http1: Arc::new(config), h2: Arc::new(h2) })
    }

    /// A TLS connection that will speak HTTP/1.1, or HTTP/2 with `h2`. A node that does not
    /// agree to `h2` when asked is an error: speaking HTTP/2 to it anyway would fail obscurely.
    pub async fn connect(&self, host: &str, tcp: TcpStream, h2: bool) -> io::Result<NodeStream> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let config = if h2 { &self.h2 } else { &self.http1 };
        let tls = TlsConnector::from(config.clone()).connect(name, tcp).await?;
        if h2 && tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
            return Err(io::Error::other("the node did not agree to HTTP/2 (ALPN h2), which gRPC needs"));
        }
        Ok(NodeStream::Tls(Box::new(tls)))
    }
}

/// A connection to a node, with or without TLS.
pub enum NodeStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for NodeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Plain(s) => s.is_write_vectored(),
            NodeStream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

//! End-to-end TLS: a real gateway on 127.0.0.1:0 serving HTTPS with certificates from a test CA
//! made here (rcgen), reached by a rustls client; what the client sees is asserted.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key (PEM) for `names`; for client authentication when `client`.
    fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if client {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        (p.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn client_config(ca_pem: &str, alpn: &[&[u8]], client_cert: Option<&(String, String)>) -> Arc<ClientConfig> {
    client_config_versions(ca_pem, alpn, client_cert, rustls::DEFAULT_VERSIONS)
}

fn client_config_versions(
    ca_pem: &str,
    alpn: &[&[u8]],
    client_cert: Option<&(String, String)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match client_cert {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

async fn connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp).await
}

/// The names in the certificate the server presented.
fn served_names(tls: &TlsStream<TcpStream>) -> Vec<String> {
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    nodegate::tls::cert_facts(cert).unwrap().0
}

/// Whether the server refused this connection: at the handshake, or (TLS 1.3, where the client
/// finishes first) on the first request.
async fn refused(conn: std::io::Result<TlsStream<TcpStream>>) -> bool {
    let Ok(tls) = conn else { return true };
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let req = Request::get("https://gw/api/v1/info").header("host", "gw").body(Empty::<Bytes>::new()).unwrap();
        if h2 {
            let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            s.send_request(req).await
        } else {
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            s.send_request(req).await
        }
    })
    .await;
    !matches!(answered, Ok(Ok(_)))
}

/// One GET over an established TLS connection, HTTP/2 or HTTP/1.1 as ALPN chose.
async fn get_over(tls: TlsStream<TcpStream>, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // hyper's connection-level client sends no Host of its own; HTTP/1.1 requires one (RFC 9112).
    let req = Request::get(format!("https://gw{path}")).header("host", "gw").body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

fn tls_config(dir: &Path, ca: &Ca, names: &[&[&str]], extra: &str) -> String {
    let mut s = String::from("\n[tls]\nreload_interval = \"100ms\"\nhsts = \"max-age=31536000\"\n");
    s.push_str(extra);
    for (i, n) in names.iter().enumerate() {
        let (cert, key) = ca.leaf(n, false);
        let cert = write(dir, &format!("cert{i}.pem"), &cert);
        let key = write(dir, &format!("key{i}.pem"), &key);
        s.push_str(&format!("\n[[tls.cert]]\ncert = \"{cert}\"\nkey = \"{key}\"\n"));
    }
    s
}

#[tokio::test]
async fn https_speaks_h2_and_http1_by_alpn_and_sni_picks_the_certificate() {
    let n = node().await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("tls-sni");
    let gw =
        gateway(&[n.url()], &tls_config(&dir, &ca, &[&["a.test", "127.0.0.1"], &["b.test", "*.b.test"]], "")).await;
    let g = addr(&gw);
    for (sni, alpn, names, proto) in [
        ("a.test", &b"h2"[..], vec!["a.test"], "h2"),
        ("b.test", b"http/1.1", vec!["b.test", "*.b.test"], "http/1.1"),
        ("x.b.test", b"h2", vec!["b.test", "*.b.test"], "h2"),
        // No SNI (an address): the first certificate.
        ("127.0.0.1", b"http/1.1", vec!["a.test"], "http/1.1"),
    ] {
        let tls =
            connect(g, sni, client_config(&ca.pem(), &[alpn], None)).await.unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(served_names(&tls), names, "{sni}");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(proto.as_bytes()), "{sni}");
        let (status, headers, _) = get_over(tls, "/api/v1/info").await;
        assert_eq!(status, 200, "{sni}");
        assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    }
    // A name no certificate has: the first one too, which the client then refuses.
    let err = connect(g, "other.test", client_config(&ca.pem(), &[b"h2"], None)).await.unwrap_err();
    assert!(err.to_string().contains("a.test"), "{err}");
    // The node is told the client came over HTTPS.
    let tls = connect(g, "a.test", client_config(&ca.pem(), &[b"http/1.1"], None)).await.unwrap();
    let (_, _, body) = get_over(tls, "/debug/headers").await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let headers = seen["headers"].as_array().unwrap();
    let proto = headers.iter().find(|h| h[0] == "x-forwarded-proto").unwrap();
    assert_eq!(proto[1], "https");
    // Plain HTTP on the HTTPS port gets no answer, and TLS 1.1 is refused.
    let plain = raw(g, b"GET /api/v1/info HTTP/1.1\r\nhost: gw\r\n\r\n", Duration::from_secs(2)).await;
    assert!(!plain.contains("200 OK"), "{plain}");
}

#[tokio::test]
async fn sessions_resume_on_tls13_and_tls12() {
    let n = node().await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("tls-resume");
    let gw = gateway(&[n.url()], &tls_config(&dir, &ca, &[&["a.test"]], "")).await;
    let g = addr(&gw);
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        // One client config: its session cache carries the ticket (or session id) over.
        let config = client_config_versions(&ca.pem(), &[b"http/1.1"], None, versions);
        let first = connect(g, "a.test", config.clone()).await.unwrap();
        assert_eq!(first.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        // TLS 1.3 tickets arrive after the handshake: let the client read them.
        assert_eq!(get_over(first, "/api/v1/info").await.0, 200);
        let second = connect(g, "a.test", config).await.unwrap();
        assert_eq!(second.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed), "{versions:?}");
        assert_eq!(get_over(second, "/api/v1/info").await.0, 200);
    }
}

#[tokio::test]
async fn a_new_certificate_is_served_to_new_connections_while_old_ones_keep_working() {
    let n = node().await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("tls-reload");
    let gw = gateway(&[n.url()], &tls_config(&dir, &ca, &[&["a.test"]], "")).await;
    let g = addr(&gw);
    let config = client_config(&ca.pem(), &[b"http/1.1"], None);
    let der = |tls: &TlsStream<TcpStream>| tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();

    // An old connection, kept alive across the reload.
    let old = connect(g, "a.test", config.clone()).await.unwrap();
    let old_cert = der(&old);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old)).await.unwrap();
    tokio::spawn(conn);
    let req = || Request::get("https://gw/api/v1/info").header("host", "gw").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);

    // New files: new connections get the new certificate.
    let (cert, key) = ca.leaf(&["a.test"], false);
    write(&dir, "key0.pem", &key);
    write(&dir, "cert0.pem", &cert);
    let mut new_cert = old_cert.clone();
    eventually(async || {
        let tls = connect(g, "a.test", config.clone()).await.unwrap();
        new_cert = der(&tls);
        new_cert != old_cert
    })
    .await;
    let mut resp = sender.send_request(req()).await.unwrap();
    assert_eq!(resp.status(), 200, "the old connection broke on reload");
    while resp.frame().await.is_some() {}

    // A broken file is refused: the certificate in use stays.
    write(&dir, "cert0.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    let err = gw.reload_certificates().unwrap_err();
    assert!(err.contains("cert0.pem"), "{err}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tls = connect(g, "a.test", config.clone()).await.unwrap();
    assert_eq!(der(&tls), new_cert, "a broken file replaced the certificate");
    assert_eq!(get_over(tls, "/api/v1/info").await.0, 200);
    // And a key that belongs to another certificate is refused too.
    let (_, other_key) = ca.leaf(&["a.test"], false);
    write(&dir, "cert0.pem", &cert);
    write(&dir, "key0.pem", &other_key);
    assert!(gw.reload_certificates().unwrap_err().contains("key0.pem"));
    let tls = connect(g, "a.test", config).await.unwrap();
    assert_eq!(der(&tls), new_cert);
}

#[tokio::test]
async fn client_certificates_are_required_verified_and_open_key_routes() {
    let n = node().await;
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let dir = temp_dir("tls-mtls");
    let ca_file = write(&dir, "clients.pem", &client_ca.pem());
    let extra = format!("\n[tls.client_auth]\nca = \"{ca_file}\"\nlisten = [\"127.0.0.1:0\"]\nroles = [\"key\"]\n");
    let mut text = tls_config(&dir, &server_ca, &[&["a.test"]], &extra);
    text.push_str("\n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n");
    text.push_str("\n[rate_limit]\nper_client = \"1/min\"\nburst = 2\n");
    let gw = gateway(&[n.url()], &text).await;
    let mtls = gw.local_addrs()[1];
    let wallet = client_ca.leaf(&["wallet-7"], true);
    // A certificate from the client CA: accepted, and it opens `key` routes.
    let config = client_config(&server_ca.pem(), &[b"h2"], Some(&wallet));
    for expected in [200, 200, 429] {
        let tls = connect(mtls, "a.test", config.clone()).await.unwrap();
        // The certificate's holder is the rate-limited client, not the address.
        assert_eq!(get_over(tls, "/api/v1/tips").await.0, expected);
    }
    let other_wallet = client_ca.leaf(&["wallet-8"], true);
    let tls = connect(mtls, "a.test", client_config(&server_ca.pem(), &[b"h2"], Some(&other_wallet))).await.unwrap();
    assert_eq!(
        get_over(tls, "/api/v1/tips").await.0,
        200,
        "another certificate from the same address has its own budget"
    );
    // None, or one from another CA: no handshake.
    let bare = connect(mtls, "a.test", client_config(&server_ca.pem(), &[b"h2"], None)).await;
    assert!(refused(bare).await, "a client without a certificate was served");
    let stranger = server_ca.leaf(&["stranger"], true);
    let other = connect(mtls, "a.test", client_config(&server_ca.pem(), &[b"http/1.1"], Some(&stranger))).await;
    assert!(refused(other).await, "a certificate from another CA was accepted");
    // The plain HTTPS listener asks for no certificate, and its key routes want a key.
    let tls = connect(addr(&gw), "a.test", client_config(&server_ca.pem(), &[b"h2"], None)).await.unwrap();
    assert_eq!(get_over(tls, "/api/v1/tips").await.0, 401);
}

#[tokio::test]
async fn metrics_count_handshakes_and_show_each_certificates_expiry() {
    use tokio::io::AsyncWriteExt;
    let n = node().await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("tls-metrics");
    let mut text = tls_config(&dir, &ca, &[&["a.test"], &["b.test"]], "");
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let gw = gateway(&[n.url()], &text).await;
    let tls = connect(addr(&gw), "a.test", client_config(&ca.pem(), &[b"h2"], None)).await.unwrap();
    assert_eq!(get_over(tls, "/api/v1/info").await.0, 200);
    // Not TLS at all: a failed handshake.
    let mut junk = TcpStream::connect(addr(&gw)).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let admin = gw.admin_addr().unwrap();
    let line = async |prefix: &str| {
        let text = String::from_utf8(get(admin, "/metrics").await.body.to_vec()).unwrap();
        text.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };
    eventually(async || line("nodegate_tls_handshakes_total{result=\"failed\"}").await == Some(1.0)).await;
    assert_eq!(line("nodegate_tls_handshakes_total{result=\"done\"}").await, Some(1.0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for name in ["a.test", "b.test"] {
        let prefix = format!("nodegate_tls_certificate_expiry_timestamp_seconds{{name=\"{name}\"}}");
        let expiry = line(&prefix).await.unwrap_or_else(|| panic!("no expiry for {name}"));
        assert!(expiry > now + 86_400.0, "{name} expires at {expiry}");
    }
}

/// The gateway's config text with `extra`, as `gateway()` builds it (for reloads).
fn reloaded(urls: &[String], extra: &str) -> nodegate::Config {
    let text = config_text(urls, &format!("{extra}\n[log]\naccess = false\n"));
    nodegate::Config::parse(&text, "test.toml").unwrap()
}

#[tokio::test]
async fn a_client_ca_and_certificates_changed_by_reload_apply_to_new_handshakes_and_open_connections() {
    let n = node().await;
    let server_ca = Ca::new("server CA");
    let (old_ca, new_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let dir = temp_dir("tls-reload-ca");
    let ca_file = write(&dir, "clients.pem", &old_ca.pem());
    let extra = format!("\n[tls.client_auth]\nca = \"{ca_file}\"\nlisten = [\"127.0.0.1:0\"]\nroles = [\"key\"]\n");
    let mut text = tls_config(&dir, &server_ca, &[&["a.test"]], &extra);
    text.push_str("\n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n");
    let gw = gateway(&[n.url()], &text).await;
    let mtls = gw.local_addrs()[1];
    let old_wallet = old_ca.leaf(&["old-wallet"], true);
    let new_wallet = new_ca.leaf(&["new-wallet"], true);
    let old_config = client_config(&server_ca.pem(), &[b"h2"], Some(&old_wallet));
    let new_config = client_config(&server_ca.pem(), &[b"h2"], Some(&new_wallet));

    // An h2 connection with the old CA's certificate, opened before the reload and kept.
    let tls = connect(mtls, "a.test", old_config.clone()).await.unwrap();
    let (mut open, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let tips = || Request::get("https://gw/api/v1/tips").header("host", "gw").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(open.send_request(tips()).await.unwrap().status(), 200);
    assert!(refused(connect(mtls, "a.test", new_config.clone()).await).await, "the new CA is not trusted yet");

    // The CA file now holds the new CA only; the server certificate is replaced by one for b.test.
    let (ca2, cert_dir) = (write(&dir, "clients2.pem", &new_ca.pem()), temp_dir("tls-reload-ca-certs"));
    let extra = format!("\n[tls.client_auth]\nca = \"{ca2}\"\nlisten = [\"127.0.0.1:0\"]\nroles = [\"key\"]\n");
    let mut text = tls_config(&cert_dir, &server_ca, &[&["b.test"]], &extra);
    text.push_str("\n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n");
    let done = gw.reload(reloaded(&[n.url()], &text)).unwrap();
    assert!(done.applied.contains(&"tls (certificates, client CA, hsts)"), "{done:?}");
    assert!(done.restart_needed.is_empty(), "{done:?}");

    // New handshakes: the new CA's clients are served, the old CA's are refused.
    let tls = connect(mtls, "b.test", new_config).await.unwrap();
    assert_eq!(served_names(&tls), ["b.test"]);
    assert_eq!(get_over(tls, "/api/v1/tips").await.0, 200);
    assert!(refused(connect(mtls, "b.test", old_config).await).await, "the removed CA's client was served");
    // The open connection's certificate no longer counts: its next request wants a credential.
    assert_eq!(open.send_request(tips()).await.unwrap().status(), 401);
    // A public route on it still answers: the connection is not dropped.
    let info = Request::get("https://gw/api/v1/info").header("host", "gw").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(open.send_request(info).await.unwrap().status(), 200);

    // A CA file that does not load refuses the whole reload: nothing changes.
    let broken = write(&dir, "broken.pem", "not a certificate");
    let extra = format!("\n[tls.client_auth]\nca = \"{broken}\"\nlisten = [\"127.0.0.1:0\"]\nroles = [\"key\"]\n");
    let text = tls_config(&cert_dir, &server_ca, &[&["b.test"]], &extra);
    let err = nodegate::Config::parse(&config_text(&[n.url()], &text), "test.toml").unwrap_err().to_string();
    assert!(err.contains("tls.client_auth.ca"), "{err}");
}

#[tokio::test]
async fn plain_http_redirects_to_https_and_a_silent_client_is_cut_off_at_the_handshake() {
    let n = node().await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("tls-redirect");
    let mut extra = String::from("listen_http = [\"127.0.0.1:0\"]\nheader_timeout = \"500ms\"\n");
    extra.push_str(&tls_config(&dir, &ca, &[&["a.test"]], ""));
    let gw = gateway(&[n.url()], &extra).await;
    let plain = gw.redirect_addrs()[0];
    let out = raw(
        plain,
        b"POST /api/v1/messages?x=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let https_port = addr(&gw).port();
    assert!(out.contains(&format!("location: https://a.test:{https_port}/api/v1/messages?x=1\r\n")), "{out}");
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 0, "plain HTTP reached the node");
    let out =
        raw(plain, b"GET / HTTP/1.1\r\nhost: a@evil.test\r\nconnection: close\r\n\r\n", Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A TLS client that never sends its hello is closed at the header timeout.
    let start = tokio::time::Instant::now();
    let out = raw(addr(&gw), b"", Duration::from_secs(5)).await;
    assert!(out.is_empty());
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}

#[tokio::test]
async fn https_nodes_are_reached_over_tls_and_verified_against_the_ca_bundle() {
    let n = node().await;
    let ca = Ca::new("node CA");
    let dir = temp_dir("tls-upstream");
    // The "node" over HTTPS: a gateway with TLS in front of a testnode, its certificate for 127.0.0.1.
    let front = gateway(&[n.url()], &tls_config(&dir, &ca, &[&["127.0.0.1"]], "")).await;
    let node_url = format!("https://127.0.0.1:{}", addr(&front).port());
    let ca_file = write(&dir, "node-ca.pem", &ca.pem());
    let gw = gateway(std::slice::from_ref(&node_url), &format!("\n[upstream]\nca = \"{ca_file}\"\n")).await;
    let r = get(addr(&gw), "/api/v1/info").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Kept-alive TLS connections carry answer after answer, bodies of many reads among them.
    for _ in 0..5 {
        let r = get(addr(&gw), "/debug/bytes?n=300000").await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 300000));
    }
    assert_eq!(get(addr(&gw), "/api/v1/info").await.status, 200);
    // (The node counts its API requests, not its /debug/ ones.)
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 2);
    // A node whose certificate no trusted CA signed is not talked to.
    let stranger_ca = write(&dir, "other-ca.pem", &Ca::new("other CA").pem());
    let gw = gateway(&[node_url], &format!("\n[upstream]\nca = \"{stranger_ca}\"\n")).await;
    // (502 from the request itself, or 503 once the failed health probe took the node out.)
    let r = get(addr(&gw), "/api/v1/info").await;
    assert!(matches!(r.status.as_u16(), 502 | 503), "{:?}", r.body);
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 2, "the untrusted node was reached");
}

#[tokio::test]
async fn grpc_reaches_https_nodes_over_h2_agreed_by_alpn() {
    let n = node().await;
    let ca = Ca::new("node CA");
    let dir = temp_dir("tls-upstream-grpc");
    // The node over HTTPS: a TLS gateway (h2 by ALPN) in front of a testnode's gRPC services.
    let rebased = "profile = \"iota-rebased\"\n\n[health]\nactive = false\n";
    let front = gateway(&[n.url()], &format!("{rebased}{}", tls_config(&dir, &ca, &[&["127.0.0.1"]], ""))).await;
    let node_url = format!("https://127.0.0.1:{}", addr(&front).port());
    let ca_file = write(&dir, "node-ca.pem", &ca.pem());
    let gw = gateway(&[node_url], &format!("{rebased}\n[upstream]\nca = \"{ca_file}\"\n")).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let call = |path: &str| {
        Request::post(format!("http://{}{path}", addr(&gw)))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap()
    };
    // A server stream: its three messages and its trailers come through both gateways.
    let resp = client.request(call("/iota.grpc.v1.LedgerService/StreamCheckpoints")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("grpc-status").is_none(), "{:?}", resp.headers());
    let got = resp.into_body().collect().await.unwrap();
    assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(got.to_bytes().len(), 3 * (5 + 2 + "StreamCheckpoints 0".len()));
    // A node's trailers-only error passes too.
    let resp = client.request(call("/iota.grpc.v1.LedgerService/Fail")).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "5");
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn optional_client_certificates_open_key_routes_and_their_absence_does_not_block_public_ones() {
    let n = node().await;
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let dir = temp_dir("tls-mtls-optional");
    let ca_file = write(&dir, "clients.pem", &client_ca.pem());
    let extra = format!(
        "\n[tls.client_auth]\nca = \"{ca_file}\"\nlisten = [\"127.0.0.1:0\"]\nrequired = false\nroles = [\"key\"]\n"
    );
    let mut text = tls_config(&dir, &server_ca, &[&["a.test"]], &extra);
    text.push_str("\n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n");
    text.push_str("\n[[route]]\npath = \"/api/v1/peers\"\naccess = \"admin\"\n");
    let gw = gateway(&[n.url()], &text).await;
    let mtls = gw.local_addrs()[1];
    let bare = client_config(&server_ca.pem(), &[b"http/1.1"], None);
    assert_eq!(get_over(connect(mtls, "a.test", bare.clone()).await.unwrap(), "/api/v1/info").await.0, 200);
    assert_eq!(get_over(connect(mtls, "a.test", bare).await.unwrap(), "/api/v1/tips").await.0, 401);
    let wallet = client_config(&server_ca.pem(), &[b"http/1.1"], Some(&client_ca.leaf(&["wallet-9"], true)));
    assert_eq!(get_over(connect(mtls, "a.test", wallet.clone()).await.unwrap(), "/api/v1/tips").await.0, 200);
    // Its roles are `key` only: an admin route stays closed to it.
    assert_eq!(get_over(connect(mtls, "a.test", wallet).await.unwrap(), "/api/v1/peers").await.0, 403);
}

#[tokio::test]
async fn a_certificate_file_that_blocks_on_read_does_not_stall_traffic() {
    // One runtime thread (this test's): a reload that read files on it would stop everything.
    let n = node().await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("tls-fifo");
    let gw = gateway(&[n.url()], &tls_config(&dir, &ca, &[&["a.test"]], "")).await;
    let g = addr(&gw);
    let config = client_config(&ca.pem(), &[b"http/1.1"], None);
    // The certificate file becomes a FIFO: reading it blocks until someone writes to it.
    let cert = dir.join("cert0.pem");
    std::fs::remove_file(&cert).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&cert).status().unwrap().success());
    // A watchdog on its own thread releases a blocked reader after 5 s, so that a failure is a
    // failed assertion, not a hung test.
    let fifo = cert.clone();
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = released.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .map(|mut f| std::io::Write::write_all(&mut f, b"x"));
        }
    });
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await; // several reload checks (every 100 ms)
    for _ in 0..5 {
        let tls = connect(g, "a.test", config.clone()).await.unwrap();
        assert_eq!(get_over(tls, "/api/v1/info").await.0, 200);
    }
    let took = start.elapsed();
    released.store(true, std::sync::atomic::Ordering::SeqCst);
    // Unblock the reload thread for good.
    let _ = std::fs::OpenOptions::new().write(true).open(&cert).map(|mut f| std::io::Write::write_all(&mut f, b"x"));
    assert!(took < Duration::from_secs(3), "traffic waited {took:?} behind a certificate read");
}

//! End-to-end ACME against a real ACME server: Pebble (Debian package `pebble`, installed by
//! scripts/test), with pebble-challtestsrv as its DNS (every name is 127.0.0.1). Pebble validates
//! HTTP-01 on the gateway's `listen_http` and TLS-ALPN-01 on its HTTPS listener, as a public CA
//! would on ports 80 and 443.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Pebble ACME server and its DNS, on free loopback ports, validating on `http_port` and
/// `tls_port`. Returns the directory URL, the CA file for Pebble's own HTTPS, and the processes.
async fn pebble(dir: &Path, http_port: u16, tls_port: u16) -> (String, String, Vec<Killed>) {
    // Pebble's own HTTPS certificate, from a CA made here.
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "pebble test CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_file = write("pebble-ca.pem", &ca.pem());
    let cert_file = write("pebble-cert.pem", &cert.pem());
    let key_file = write("pebble-key.pem", &key.serialize_pem());
    let (port, management, dns) = (free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{port}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": cert_file, "privateKey": key_file,
        "httpPort": http_port, "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false
    }});
    let config_file = write("pebble.json", &config.to_string());
    let spawn = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (Debian package `pebble`; scripts/test installs it)"))
    };
    let dns_server = spawn(Command::new("pebble-challtestsrv").args([
        "-dns01",
        &format!("127.0.0.1:{dns}"),
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-management",
        &format!("127.0.0.1:{}", free_port()),
        "-defaultIPv4",
        "127.0.0.1",
        "-defaultIPv6",
        "",
    ]));
    let server = spawn(
        Command::new("pebble")
            .args(["-config", &config_file, "-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0"),
    );
    let procs = vec![Killed(dns_server), Killed(server)];
    eventually(async || TcpStream::connect(("127.0.0.1", port)).await.is_ok()).await;
    (format!("https://127.0.0.1:{port}/dir"), ca_file, procs)
}

/// Accepts any server certificate: the test looks at what it was given, not whether to trust it.
#[derive(Debug)]
struct Anything;

impl ServerCertVerifier for Anything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate the gateway serves for `name` now, if the handshake succeeds.
async fn served(gw: SocketAddr, name: &str) -> Option<CertificateDer<'static>> {
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Anything))
        .with_no_client_auth();
    let tcp = TcpStream::connect(gw).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].clone().into_owned())
}

fn issuer(cert: &CertificateDer<'_>) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    c.issuer().to_string()
}

async fn acme_gateway(
    node: &str,
    directory: &str,
    ca: &str,
    state: &Path,
    ports: (u16, u16),
    challenge: &str,
    renew_before: &str,
) -> nodegate::Gateway {
    let text = format!(
        "[gateway]\nlisten = [\"127.0.0.1:{}\"]\nlisten_http = [\"127.0.0.1:{}\"]\n\
         \n[tls.acme]\ndomains = [\"node.test\"]\nemail = \"ops@node.test\"\ndirectory = \"{directory}\"\n\
         directory_ca = \"{ca}\"\nstate_dir = \"{}\"\nchallenge = \"{challenge}\"\nrenew_before = \"{renew_before}\"\n\
         \n[[node]]\nname = \"n\"\nurl = \"{node}\"\n\n[log]\naccess = false\n",
        ports.1,
        ports.0,
        state.display()
    );
    nodegate::Gateway::start(nodegate::Config::parse(&text, "acme.toml").unwrap()).await.unwrap()
}

/// Waits up to 60 s for `gw` to serve a Pebble-issued certificate other than `not`.
async fn issued(gw: SocketAddr, not: Option<&CertificateDer<'static>>) -> CertificateDer<'static> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(c) = served(gw, "node.test").await
            && issuer(&c).contains("Pebble")
            && Some(&c) != not
        {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no certificate from Pebble within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_renewal_and_a_restart_from_the_stored_certificate() {
    let dir = temp_dir("acme-http01");
    let ports = (free_port(), free_port());
    let (directory, ca, procs) = pebble(&dir, ports.0, ports.1).await;
    let n = node().await;
    let state = dir.join("state");

    // No certificate yet: the gateway gets one by HTTP-01 on its listen_http, and serves it.
    let gw = acme_gateway(&n.url(), &directory, &ca, &state, ports, "http-01", "720h").await;
    let first = issued(addr(&gw), None).await;
    let names = nodegate::tls::cert_facts(&first).unwrap().0;
    assert_eq!(names, vec!["node.test"]);
    assert!(state.join("account.json").exists() && state.join("key.pem").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the certificate's key is private");
    }
    // An HTTPS request through it reaches the node.
    assert!(served(addr(&gw), "node.test").await.is_some());
    gw.shutdown().await;

    // A gateway that finds the stored certificate due (renew_before longer than its life) serves
    // it meanwhile and renews it with the stored account.
    let gw = acme_gateway(&n.url(), &directory, &ca, &state, ports, "http-01", "1000000h").await;
    assert_eq!(
        served(addr(&gw), "node.test").await.as_ref(),
        Some(&first),
        "the stored certificate was not served at once"
    );
    let second = issued(addr(&gw), Some(&first)).await;
    gw.shutdown().await;

    // With Pebble gone, a restart serves the stored certificate at once.
    drop(procs);
    let gw = acme_gateway(&n.url(), &directory, &ca, &state, ports, "http-01", "720h").await;
    assert_eq!(served(addr(&gw), "node.test").await, Some(second));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issuance() {
    let dir = temp_dir("acme-alpn");
    let ports = (free_port(), free_port());
    let (directory, ca, _procs) = pebble(&dir, ports.0, ports.1).await;
    let n = node().await;
    let gw = acme_gateway(&n.url(), &directory, &ca, &dir.join("state"), ports, "tls-alpn-01", "720h").await;
    let cert = issued(addr(&gw), None).await;
    assert_eq!(nodegate::tls::cert_facts(&cert).unwrap().0, vec!["node.test"]);
    gw.shutdown().await;
}

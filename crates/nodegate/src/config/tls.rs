//! `[tls]`: certificates (files, or `[tls.acme]`), HSTS and client certificates. The files it
//! names are read here, so that a broken one is a config error at its place.

use std::time::Duration;

use super::{ConfigError, Locator, raw, socket_addr};
use crate::tls::{Acme, CertFiles, ClientAuth, Tls};

pub(super) fn tls_section(t: raw::RawTls, at: &Locator) -> Result<Tls, ConfigError> {
    let mut certs = Vec::new();
    let acme = match &t.acme {
        None => None,
        Some(a) => Some(acme_section(a, at)?),
    };
    let Some(c) = &t.cert else {
        if acme.is_none() {
            return Err(at.error(0..0, Some("tls.cert".into()), "needs `cert` and `key` (PEM files), or [tls.acme]"));
        }
        return Ok(Tls {
            certs,
            hsts: hsts(&t, at)?,
            reload_interval: t.reload_interval.0.max(Duration::from_millis(100)),
            client_auth: client_auth(t.client_auth, at)?,
            acme,
        });
    };
    let span = c.span();
    let check = |cert: &str, key: &str, names: Vec<String>, k: &str| {
        let files = CertFiles { cert: cert.into(), key: key.into(), names };
        crate::tls::load_pair(&files.cert, &files.key).map_err(|e| at.error(span.clone(), Some(k.into()), e))?;
        Ok::<_, ConfigError>(files)
    };
    match c.get_ref() {
        toml::Value::String(path) => {
            let Some(key) = &t.key else {
                return Err(at.error(span, Some("tls.key".into()), "needs `key` beside `cert`"));
            };
            certs.push(check(path, key.get_ref(), Vec::new(), "tls.cert")?);
        }
        toml::Value::Array(list) if !list.is_empty() => {
            if let Some(key) = &t.key {
                return Err(at.error(key.span(), Some("tls.key".into()), "with [[tls.cert]], each has its own `key`"));
            }
            for (i, one) in list.iter().enumerate() {
                let one: raw::RawTlsCert = one.clone().try_into().map_err(|e: toml::de::Error| {
                    at.error(span.clone(), Some(format!("tls.cert[{i}]")), e.message().to_owned())
                })?;
                certs.push(check(&one.cert, &one.key, one.names, &format!("tls.cert[{i}].cert"))?);
            }
        }
        _ => {
            return Err(at.error(
                span,
                Some("tls.cert".into()),
                "a PEM file (with `key` beside it), or [[tls.cert]] tables with `cert` and `key`",
            ));
        }
    }
    Ok(Tls {
        certs,
        hsts: hsts(&t, at)?,
        reload_interval: t.reload_interval.0.max(Duration::from_millis(100)),
        client_auth: client_auth(t.client_auth, at)?,
        acme,
    })
}

fn hsts(t: &raw::RawTls, at: &Locator) -> Result<Option<http::HeaderValue>, ConfigError> {
    let Some(v) = &t.hsts else { return Ok(None) };
    http::HeaderValue::from_str(v.get_ref()).ok().filter(|_| v.get_ref().starts_with("max-age=")).map(Some).ok_or_else(
        || at.error(v.span(), Some("tls.hsts".into()), "write it as \"max-age=<seconds>[; includeSubDomains]\""),
    )
}

fn client_auth(c: Option<raw::RawClientAuth>, at: &Locator) -> Result<Option<ClientAuth>, ConfigError> {
    let Some(c) = c else { return Ok(None) };
    crate::tls::load_roots(c.ca.get_ref().as_ref())
        .map_err(|e| at.error(c.ca.span(), Some("tls.client_auth.ca".into()), e))?;
    let mut listen = Vec::new();
    for addr in c.listen.get_ref() {
        listen.push(socket_addr(addr, "tls.client_auth.listen", at)?);
    }
    if listen.is_empty() {
        return Err(at.error(c.listen.span(), Some("tls.client_auth.listen".into()), "needs at least one address"));
    }
    Ok(Some(ClientAuth { ca: c.ca.get_ref().into(), listen, required: c.required, roles: c.roles }))
}

fn acme_section(a: &raw::RawAcme, at: &Locator) -> Result<Acme, ConfigError> {
    let domains: Vec<String> = a.domains.get_ref().iter().map(|d| d.trim().to_ascii_lowercase()).collect();
    if domains.is_empty() {
        return Err(at.error(a.domains.span(), Some("tls.acme.domains".into()), "needs at least one domain"));
    }
    for d in &domains {
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ok {
            return Err(at.error(
                a.domains.span(),
                Some("tls.acme.domains".into()),
                format!("`{d}` is not a domain name"),
            ));
        }
    }
    let directory = a.directory.get_ref();
    if !directory.starts_with("https://") {
        return Err(at.error(a.directory.span(), Some("tls.acme.directory".into()), "must be an https:// URL"));
    }
    if let Some(ca) = &a.directory_ca {
        crate::tls::load_roots(ca.get_ref().as_ref())
            .map_err(|e| at.error(ca.span(), Some("tls.acme.directory_ca".into()), e))?;
    }
    Ok(Acme {
        domains,
        email: a.email.clone(),
        directory: directory.clone(),
        state_dir: a.state_dir.get_ref().into(),
        challenge: a.challenge,
        directory_ca: a.directory_ca.as_ref().map(|c| c.get_ref().into()),
        renew_before: a.renew_before.0,
    })
}

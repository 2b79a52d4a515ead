//! The authorization layer: API keys, stored in the config only as SHA-256 hashes
//! (`nodegate key hash`), presented as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//! A presented key is hashed and compared with every configured hash in constant time, so the
//! time taken says nothing about which key, or how much of one, matched. Roles: `key` opens `key`
//! routes; `admin` opens `admin` and `key` routes.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::route_policy::Access;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Key,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub hash: [u8; 32],
    pub roles: Vec<Role>,
}

/// What a request's credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    Allowed {
        key: &'a str,
    },
    /// No credential, or one that matches no key: 401.
    Unauthenticated,
    /// A valid key without the role the route needs: 403.
    Forbidden {
        key: &'a str,
    },
}

pub const API_KEY_HEADER: &str = "x-api-key";

/// Checks the request's credential against the route's access level (`Key` or `Admin`).
pub fn authorize<'a>(keys: &'a [ApiKey], headers: &HeaderMap, needed: Access) -> Verdict<'a> {
    let Some(presented) = presented(headers) else { return Verdict::Unauthenticated };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Compare with every key, always: no early exit that timing could reveal.
    let mut found: Option<&ApiKey> = None;
    for k in keys {
        if bool::from(k.hash.ct_eq(&digest)) {
            found = Some(k);
        }
    }
    let Some(key) = found else { return Verdict::Unauthenticated };
    let enough = match needed {
        Access::Admin => key.roles.contains(&Role::Admin),
        _ => !key.roles.is_empty(),
    };
    if enough { Verdict::Allowed { key: &key.name } } else { Verdict::Forbidden { key: &key.name } }
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty());
    }
    headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty())
}

/// Removes the credential so the node never sees it.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
    headers.remove(API_KEY_HEADER);
}

/// `sha256:<64 hex digits>`, as `nodegate key hash` prints it.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A fresh key: 32 bytes from the operating system's CSPRNG, hex-encoded with a `ng_` prefix.
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("ng_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> Vec<ApiKey> {
        vec![
            ApiKey { name: "wallet".into(), hash: parse_hash(&hash("k-wallet")).unwrap(), roles: vec![Role::Key] },
            ApiKey { name: "ops".into(), hash: parse_hash(&hash("k-ops")).unwrap(), roles: vec![Role::Admin] },
        ]
    }

    fn h(name: &'static str, value: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(value));
        m
    }

    #[test]
    fn keys_and_roles() {
        let k = keys();
        assert_eq!(
            authorize(&k, &h("authorization", "Bearer k-wallet"), Access::Key),
            Verdict::Allowed { key: "wallet" }
        );
        assert_eq!(authorize(&k, &h("x-api-key", "k-wallet"), Access::Key), Verdict::Allowed { key: "wallet" });
        assert_eq!(
            authorize(&k, &h("authorization", "Bearer k-wallet"), Access::Admin),
            Verdict::Forbidden { key: "wallet" }
        );
        assert_eq!(authorize(&k, &h("authorization", "bearer k-ops"), Access::Admin), Verdict::Allowed { key: "ops" });
        assert_eq!(authorize(&k, &h("authorization", "Bearer k-ops"), Access::Key), Verdict::Allowed { key: "ops" });
        for bad in [
            h("authorization", "Bearer nope"),
            h("authorization", "Basic k-ops"),
            h("authorization", "Bearer "),
            HeaderMap::new(),
        ] {
            assert_eq!(authorize(&k, &bad, Access::Key), Verdict::Unauthenticated);
        }
    }

    #[test]
    fn hashes_round_trip_and_new_keys_differ() {
        let key = new_key().unwrap();
        assert!(key.starts_with("ng_") && key.len() == 67);
        assert_ne!(key, new_key().unwrap());
        assert!(parse_hash(&hash(&key)).is_some());
        assert!(parse_hash("sha256:xyz").is_none());
        assert!(parse_hash("md5:00").is_none());
    }
}

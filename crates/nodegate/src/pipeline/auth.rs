//! The authorization layer.
//!
//! API keys are stored in the config only as SHA-256 hashes (`nodegate key hash`), presented as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`. A presented key is hashed and compared with
//! every configured hash in constant time, so the time taken says nothing about which key, or how
//! much of one, matched.
//!
//! JWTs (`[[jwt]]`, HS256 or EdDSA) are presented as `Authorization: Bearer <token>`. A token is
//! only tried against keys configured for the algorithm its header names, so `alg: none` and
//! algorithm confusion (an HS256 token "signed" with an EdDSA public key) match no key. `exp` is
//! required; `nbf`, `iss` and `aud` are checked (the last two when configured). Its `roles` claim
//! lists roles.
//!
//! Roles: `key` opens `key` routes; `admin` opens `admin` and `key` routes.

use super::rate_limit::ClientKey;

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

/// One trusted JWT issuer: the algorithm it signs with, its key, and what its tokens must say.
#[derive(Clone)]
pub struct JwtKey {
    pub name: String,
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: jsonwebtoken::DecodingKey,
    pub validation: jsonwebtoken::Validation,
    /// SHA-256 over everything that decides which tokens pass (name, algorithm, key material,
    /// issuer, audience): two issuers are the same only if this is, so a rotated secret is a
    /// change a reload sees.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: String = self.fingerprint[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "JwtKey({}, {:?}, {short})", self.name, self.algorithm)
    }
}

impl PartialEq for JwtKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl JwtKey {
    pub fn new(
        name: String,
        algorithm: jsonwebtoken::Algorithm,
        key: jsonwebtoken::DecodingKey,
        material: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> JwtKey {
        let mut h = Sha256::new();
        for part in [name.as_bytes(), format!("{algorithm:?}").as_bytes(), material] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for part in [issuer, audience] {
            h.update(part.map_or([0].as_slice(), |p| p.as_bytes()));
            h.update([0xff]);
        }
        let fingerprint = h.finalize().into();
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        JwtKey { name, algorithm, key, validation, fingerprint }
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    roles: Vec<String>,
    /// The token's subject: with the issuer's name, who the client is for rate limits.
    #[serde(default)]
    sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub hash: [u8; 32],
    pub roles: Vec<Role>,
    /// The key's own rate limit instead of `[rate_limit] per_client`.
    pub limit: Option<super::rate_limit::Limit>,
}

/// What a request's credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// `key` names the client: the API key, or the token's issuer and subject.
    Allowed { key: ClientKey, api_key: Option<&'a ApiKey> },
    /// No credential, or one that matches no key: 401.
    Unauthenticated,
    /// A valid key without the role the route needs: 403.
    Forbidden { key: ClientKey },
}

pub const API_KEY_HEADER: &str = "x-api-key";

/// Checks the request's credential against the route's access level (`Key` or `Admin`).
pub fn authorize<'a>(keys: &'a [ApiKey], jwts: &'a [JwtKey], headers: &HeaderMap, needed: Access) -> Verdict<'a> {
    let Some(presented) = presented(headers) else { return Verdict::Unauthenticated };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Compare with every key, always: no early exit that timing could reveal.
    let mut found: Option<&ApiKey> = None;
    for k in keys {
        if bool::from(k.hash.ct_eq(&digest)) {
            found = Some(k);
        }
    }
    let (name, roles): (ClientKey, Vec<Role>) = match found {
        Some(key) => (ClientKey::ApiKey(key.name.clone()), key.roles.clone()),
        None => match verify_jwt(jwts, presented) {
            Some(v) => v,
            None => return Verdict::Unauthenticated,
        },
    };
    if opens(&roles, needed) {
        Verdict::Allowed { key: name, api_key: found }
    } else {
        Verdict::Forbidden { key: name }
    }
}

/// Whether `roles` open a route that needs `needed`.
pub fn opens(roles: &[Role], needed: Access) -> bool {
    match needed {
        Access::Admin => roles.contains(&Role::Admin),
        _ => !roles.is_empty(),
    }
}

/// The issuer's name and the roles of a valid token; `None` for anything else.
fn verify_jwt(jwts: &[JwtKey], token: &str) -> Option<(ClientKey, Vec<Role>)> {
    if jwts.is_empty() || token.split('.').count() != 3 {
        return None;
    }
    // The header names the algorithm; only keys configured for that one are tried. `none`
    // is no algorithm jsonwebtoken knows, so such a token fails here.
    let alg = jsonwebtoken::decode_header(token).ok()?.alg;
    jwts.iter().filter(|k| k.algorithm == alg).find_map(|k| {
        let data = jsonwebtoken::decode::<Claims>(token, &k.key, &k.validation).ok()?;
        let roles = data
            .claims
            .roles
            .iter()
            .filter_map(|r| match r.as_str() {
                "key" => Some(Role::Key),
                "admin" => Some(Role::Admin),
                _ => None,
            })
            .collect();
        // Each subject of an issuer is its own client, named exactly (and bounded: it becomes a
        // rate-limit key, and a Redis key with [cluster]).
        let name = ClientKey::jwt(&k.name, data.claims.sub.as_deref().filter(|s| !s.is_empty()));
        Some((name, roles))
    })
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty());
    }
    headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty())
}

/// Removes the credential so the node never sees it.
const API_KEY_NAME: http::header::HeaderName = http::header::HeaderName::from_static(API_KEY_HEADER);

/// The credential headers alone, kept to judge a JSON-RPC call once its body is read (an empty
/// map, which allocates nothing, for the usual call without one).
pub fn credentials(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [AUTHORIZATION, API_KEY_NAME] {
        for v in headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

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
            ApiKey {
                name: "wallet".into(),
                hash: parse_hash(&hash("k-wallet")).unwrap(),
                roles: vec![Role::Key],
                limit: None,
            },
            ApiKey {
                name: "ops".into(),
                hash: parse_hash(&hash("k-ops")).unwrap(),
                roles: vec![Role::Admin],
                limit: None,
            },
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
            authorize(&k, &[], &h("authorization", "Bearer k-wallet"), Access::Key),
            Verdict::Allowed { key: ClientKey::ApiKey("wallet".into()), api_key: Some(&k[0]) }
        );
        assert_eq!(
            authorize(&k, &[], &h("x-api-key", "k-wallet"), Access::Key),
            Verdict::Allowed { key: ClientKey::ApiKey("wallet".into()), api_key: Some(&k[0]) }
        );
        assert_eq!(
            authorize(&k, &[], &h("authorization", "Bearer k-wallet"), Access::Admin),
            Verdict::Forbidden { key: ClientKey::ApiKey("wallet".into()) }
        );
        assert_eq!(
            authorize(&k, &[], &h("authorization", "bearer k-ops"), Access::Admin),
            Verdict::Allowed { key: ClientKey::ApiKey("ops".into()), api_key: Some(&k[1]) }
        );
        assert_eq!(
            authorize(&k, &[], &h("authorization", "Bearer k-ops"), Access::Key),
            Verdict::Allowed { key: ClientKey::ApiKey("ops".into()), api_key: Some(&k[1]) }
        );
        for bad in [
            h("authorization", "Bearer nope"),
            h("authorization", "Basic k-ops"),
            h("authorization", "Bearer "),
            HeaderMap::new(),
        ] {
            assert_eq!(authorize(&k, &[], &bad, Access::Key), Verdict::Unauthenticated);
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

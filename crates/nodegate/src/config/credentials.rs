//! `[[api_key]]` and `[[jwt]]`: the credentials that open `key` and `admin` routes, each with a
//! name of its own across both kinds.

use super::{ConfigError, Locator, limit, raw};
use crate::pipeline::auth::{ApiKey, JwtKey, parse_hash};

pub(super) fn jwts(raw_jwts: &[raw::RawJwt], at: &Locator) -> Result<Vec<JwtKey>, ConfigError> {
    let mut jwts = Vec::with_capacity(raw_jwts.len());
    for (i, j) in raw_jwts.iter().enumerate() {
        let key = |field: &str| Some(format!("jwt[{i}].{field}"));
        let need = |field: &str, what: Option<&toml::Spanned<String>>| {
            what.cloned().ok_or_else(|| {
                at.error(j.algorithm.span(), key(field), format!("{} needs `{field}`", j.algorithm.get_ref()))
            })
        };
        let (algorithm, decoding, material) = match j.algorithm.get_ref().as_str() {
            "HS256" => {
                let secret = need("secret", j.secret.as_ref())?;
                if secret.get_ref().len() < 32 {
                    return Err(at.error(secret.span(), key("secret"), "an HS256 secret needs at least 32 bytes"));
                }
                let bytes = secret.get_ref().as_bytes();
                (jsonwebtoken::Algorithm::HS256, jsonwebtoken::DecodingKey::from_secret(bytes), bytes.to_vec())
            }
            "EdDSA" => {
                let path = need("public_key", j.public_key.as_ref())?;
                let pem = std::fs::read(path.get_ref()).map_err(|e| {
                    at.error(path.span(), key("public_key"), format!("cannot read `{}`: {e}", path.get_ref()))
                })?;
                let decoding = jsonwebtoken::DecodingKey::from_ed_pem(&pem).map_err(|e| {
                    at.error(
                        path.span(),
                        key("public_key"),
                        format!("`{}` is not an Ed25519 public key in PEM: {e}", path.get_ref()),
                    )
                })?;
                (jsonwebtoken::Algorithm::EdDSA, decoding, pem)
            }
            other => {
                return Err(at.error(
                    j.algorithm.span(),
                    key("algorithm"),
                    format!("`{other}`: use \"HS256\" or \"EdDSA\""),
                ));
            }
        };
        jwts.push(JwtKey::new(
            j.name.get_ref().clone(),
            algorithm,
            decoding,
            &material,
            j.issuer.as_deref(),
            j.audience.as_deref(),
        ));
    }
    Ok(jwts)
}

pub(super) fn api_keys(
    raw_keys: &[raw::RawApiKey],
    raw_jwts: &[raw::RawJwt],
    at: &Locator,
) -> Result<Vec<ApiKey>, ConfigError> {
    let mut api_keys: Vec<ApiKey> = Vec::with_capacity(raw_keys.len());
    for (i, k) in raw_keys.iter().enumerate() {
        let key = |field: &str| Some(format!("api_key[{i}].{field}"));
        let name = k.name.get_ref();
        if name.is_empty() || api_keys.iter().any(|other| other.name == *name) {
            return Err(at.error(k.name.span(), key("name"), format!("`{name}` must be a non-empty name used once")));
        }
        let hash = parse_hash(k.hash.get_ref()).ok_or_else(|| {
            at.error(
                k.hash.span(),
                key("hash"),
                "must be `sha256:` and 64 hex digits, as `nodegate key hash` prints it (never the key itself)",
            )
        })?;
        if k.roles.get_ref().is_empty() {
            return Err(at.error(k.roles.span(), key("roles"), "needs at least one role: \"key\" or \"admin\""));
        }
        let limit = limit(k.rate, k.burst.as_ref(), &format!("api_key[{i}]"), at)?;
        api_keys.push(ApiKey { name: name.clone(), hash, roles: k.roles.get_ref().clone(), limit });
    }
    // One name, one client: a token issuer named like an API key (or like another issuer) would
    // read as the same client in logs, events and limits.
    for (i, j) in raw_jwts.iter().enumerate() {
        let name = j.name.get_ref();
        let clash = if api_keys.iter().any(|k| k.name == *name) {
            Some("an [[api_key]]")
        } else if raw_jwts[..i].iter().any(|o| o.name.get_ref() == name) {
            Some("another [[jwt]]")
        } else {
            None
        };
        if let Some(other) = clash {
            return Err(at.error(
                j.name.span(),
                Some(format!("jwt[{i}].name")),
                format!("`{name}` is also the name of {other}: give each credential its own"),
            ));
        }
    }
    Ok(api_keys)
}

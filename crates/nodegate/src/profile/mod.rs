//! What the gateway knows of each node API. Here: which requests ask the node for remote proof of
//! work, which costs the node CPU and so may only go to nodes that offer it.
//!
//! - iota-chrysalis: `POST /api/v1/messages` whose JSON `nonce` is missing, null, empty or "0", or a
//!   raw `application/octet-stream` message whose last 8 bytes (the nonce) are zero.
//! - iota-stardust: `POST /api/core/v2/blocks` whose JSON `nonce` is missing, null, empty or "0", or
//!   a raw block whose last 8 bytes are zero.
//! - iota-rebased, generic: none (iota-node has no remote PoW).

pub mod pow_score;

use http::Method;
use serde_json::Value;

/// Which node API the gateway knows how to protect and health-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    IotaChrysalis,
    IotaStardust,
    /// IOTA Rebased's iota-node: JSON-RPC on `POST /`, `/json-rpc`, `/public`.
    IotaRebased,
    /// IOTA EVM (Wasp's EVM JSON-RPC on `POST /v1/chain/evm`), or any Ethereum-style node.
    Evm,
    Generic,
}

impl Profile {
    /// As `[gateway] profile` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::IotaChrysalis => "iota-chrysalis",
            Profile::IotaStardust => "iota-stardust",
            Profile::IotaRebased => "iota-rebased",
            Profile::Evm => "evm",
            Profile::Generic => "generic",
        }
    }
}

/// Whether this route submits messages or blocks (its body decides whether PoW is asked for).
pub fn is_submission(profile: Profile, method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    let path = path.trim_end_matches('/');
    match profile {
        Profile::IotaChrysalis => path == "/api/v1/messages",
        Profile::IotaStardust => path == "/api/core/v2/blocks",
        Profile::IotaRebased | Profile::Evm | Profile::Generic => false,
    }
}

/// Whether a submission is in the binary serialization (chrysalis `application/octet-stream`,
/// stardust `application/vnd.iota.serializer-v1`), whose last 8 bytes are the nonce.
pub fn is_binary(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|c| {
        c.starts_with(b"application/octet-stream") || c.starts_with(b"application/vnd.iota.serializer-v1")
    })
}

/// Whether a submission's body asks the node to do the proof of work.
pub fn needs_pow(content_type: Option<&[u8]>, body: &[u8]) -> bool {
    if is_binary(content_type) {
        return body.len() < 8 || body[body.len() - 8..].iter().all(|b| *b == 0);
    }
    // Anything that is not a JSON object cannot carry a nonce: the node will refuse it, and if it
    // did not, it would have to do the work.
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else { return true };
    match doc.get("nonce") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty() || s == "0",
        Some(Value::Number(n)) => n.as_u64() == Some(0),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_routes_per_profile() {
        assert!(is_submission(Profile::IotaChrysalis, &Method::POST, "/api/v1/messages"));
        assert!(is_submission(Profile::IotaChrysalis, &Method::POST, "/api/v1/messages/"));
        assert!(!is_submission(Profile::IotaChrysalis, &Method::GET, "/api/v1/messages"));
        assert!(!is_submission(Profile::IotaChrysalis, &Method::POST, "/api/core/v2/blocks"));
        assert!(is_submission(Profile::IotaStardust, &Method::POST, "/api/core/v2/blocks"));
        assert!(!is_submission(Profile::Generic, &Method::POST, "/api/v1/messages"));
    }

    #[test]
    fn pow_is_asked_for_without_a_real_nonce() {
        for body in [
            r#"{"payload":null}"#,
            r#"{"nonce":null}"#,
            r#"{"nonce":""}"#,
            r#"{"nonce":"0"}"#,
            r#"{"nonce":0}"#,
            "[1]",
            "not json",
        ] {
            assert!(needs_pow(Some(b"application/json"), body.as_bytes()), "{body}");
        }
        // Stardust's binary serialization carries its nonce last, as chrysalis' does.
        assert!(!needs_pow(Some(b"application/vnd.iota.serializer-v1"), &[1, 2, 3, 4, 5, 6, 7, 8, 9]));
        assert!(needs_pow(Some(b"application/vnd.iota.serializer-v1"), &[1, 0, 0, 0, 0, 0, 0, 0, 0]));
        for body in [r#"{"nonce":"12345"}"#, r#"{"nonce":7}"#] {
            assert!(!needs_pow(Some(b"application/json"), body.as_bytes()), "{body}");
        }
        let raw = b"application/octet-stream";
        assert!(needs_pow(Some(raw), &[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!needs_pow(Some(raw), &[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 9]));
        assert!(needs_pow(Some(raw), &[1, 2]));
    }
}

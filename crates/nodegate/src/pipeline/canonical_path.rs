//! One canonical form of a request path, for route decisions and for what the node is sent, so that
//! what was checked is what is served.
//!
//! - percent-escapes are decoded exactly once; an encoded `/` or `\`, a `\` of any kind, a NUL, a
//!   broken escape or bytes that are not UTF-8 are refused (400): each has been used to make a path
//!   look different to the proxy than to the server behind it;
//! - dot segments are resolved (RFC 3986 section 5.2.4), including decoded ones (`%2e%2e`), and
//!   never climb above the root;
//! - repeated slashes are merged;
//! - the query string is not part of it (the caller passes the path alone);
//! - case and `;` are kept: the nodes' routers are case-sensitive and treat `;` as part of a
//!   segment, and route rules match anchored at both ends, so neither widens what a rule admits.
//!
//! `encoded` is the canonical path with every byte that is not safe in a path re-escaped; decoding
//! it again gives the same canonical path (tested as a property).

use std::borrow::Cow;
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// Decoded, for matching route rules.
    pub decoded: Cow<'a, str>,
    /// Re-encoded, for the request line sent to the node.
    pub encoded: Cow<'a, str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("an encoded slash (%2F) in the path is not allowed")]
    EncodedSlash,
    #[error("a backslash in the path is not allowed")]
    Backslash,
    #[error("a NUL byte in the path is not allowed")]
    Nul,
    #[error("a broken percent-escape in the path")]
    BadEscape,
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("the path still holds a percent-escape once decoded (%25XX): decode it once")]
    EncodedPercent,
}

/// Refuses a decoded path that still holds `%` and two hex digits: it was encoded twice, and a
/// node or middlebox that decodes again would see another path than the one route policy judged
/// (`..%252fpeers`). A plain path holds no `%` at all, so only rebuilt ones are looked at.
pub fn refuse_double_encoding(path: &CanonicalPath<'_>) -> Result<(), PathError> {
    if let Cow::Owned(decoded) = &path.decoded
        && decoded.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(PathError::EncodedPercent);
    }
    Ok(())
}

pub fn canonicalize(raw: &str) -> Result<CanonicalPath<'_>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Nearly every real path is canonical already: borrow it (no decoding, no allocation).
    if is_plain(raw) {
        return Ok(CanonicalPath { decoded: Cow::Borrowed(raw), encoded: Cow::Borrowed(raw) });
    }
    let decoded = decode_once(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    // A trailing slash (or a trailing dot segment) names a directory: keep it, as servers do.
    let trailing = decoded.len() > 1 && (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/.."));
    let mut path = String::with_capacity(decoded.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || (trailing && !path.ends_with('/')) {
        path.push('/');
    }
    let encoded = encode(&path);
    Ok(CanonicalPath { decoded: Cow::Owned(path), encoded: Cow::Owned(encoded) })
}

/// Only safe path bytes (no `%`, so nothing to decode), no empty segment (`//`) and no `.` or `..`
/// segment: such a path is its own canonical and encoded form. One pass over the bytes with a table
/// (the request path's hottest check: splitting the path twice cost 900 instructions a request).
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut start = 1;
    let mut i = 1;
    loop {
        let end = i >= b.len();
        if end || b[i] == b'/' {
            // A segment ends: an empty one only as the last (a trailing slash), never `.` or `..`.
            let ok = match &b[start..i] {
                b"" => end,
                b"." | b".." => false,
                _ => true,
            };
            if !ok || end {
                return ok;
            }
            start = i + 1;
        } else if !SAFE[b[i] as usize] {
            return false;
        }
        i += 1;
    }
}

/// The bytes a path may carry unescaped (RFC 3986 `pchar` and `/`, without `%`).
const SAFE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        c += 1;
    }
    t
};

fn is_safe(b: u8) -> bool {
    SAFE[b as usize]
}

fn decode_once(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    v => out.push(v),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Escapes every byte that is not unreserved, a sub-delimiter, `:`, `@` or `/` (RFC 3986 `pchar`),
/// and `%` itself, so the node decodes exactly the canonical path.
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if is_safe(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// `is_plain` as it was written first (two splits): the fast one must agree with it.
    fn is_plain_reference(raw: &str) -> bool {
        let safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        raw.as_bytes().iter().all(|&b| safe(b))
            && raw[1..].split('/').enumerate().all(|(i, seg)| match seg {
                "" => i == raw[1..].split('/').count() - 1,
                "." | ".." => false,
                _ => true,
            })
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn the_one_pass_plain_check_agrees_with_the_reference(tail in "[a./%;~]{0,12}") {
            let raw = format!("/{tail}");
            proptest::prop_assert_eq!(super::is_plain(&raw), is_plain_reference(&raw), "{}", raw);
        }
    }

    #[test]
    fn plain_paths_by_hand() {
        for (raw, plain) in [
            ("/", true),
            ("/a", true),
            ("/a/", true),
            ("//", false),
            ("/a//b", false),
            ("/.", false),
            ("/a/..", false),
            ("/a/.b", true),
            ("/a/b.", true),
            ("/%41", false),
            ("/a b", false),
            ("/api/v1/info", true),
        ] {
            assert_eq!(super::is_plain(raw), plain, "{raw}");
            assert_eq!(is_plain_reference(raw), plain, "{raw}");
        }
    }

    use super::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canonicalize(p).map(|c| c.decoded.into_owned())
    }

    #[test]
    fn dot_segments_slashes_and_escapes() {
        assert_eq!(canon("/api/v1/info").unwrap(), "/api/v1/info");
        assert_eq!(canon("//api///v1//peers").unwrap(), "/api/v1/peers");
        assert_eq!(canon("/health/../api/v1/peers").unwrap(), "/api/v1/peers");
        assert_eq!(canon("/health/%2e%2e/api/v1/peers").unwrap(), "/api/v1/peers");
        assert_eq!(canon("/health/%2E%2E/api/v1/peers").unwrap(), "/api/v1/peers");
        assert_eq!(canon("/api/./v1/%2e/info").unwrap(), "/api/v1/info");
        assert_eq!(canon("/../../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(canon("/api/v1/%70eers").unwrap(), "/api/v1/peers");
        assert_eq!(canon("/").unwrap(), "/");
        assert_eq!(canon("/api/v1/").unwrap(), "/api/v1/");
        assert_eq!(canon("/api/v1/peers/..").unwrap(), "/api/v1/");
        // Decoded once: a double-encoded dot stays a literal "%2e" segment, not "..".
        assert_eq!(canon("/health/%252e%252e/peers").unwrap(), "/health/%2e%2e/peers");
        assert_eq!(canonicalize("/health/%252e%252e/peers").unwrap().encoded, "/health/%252e%252e/peers");
        // Kept as they are.
        assert_eq!(canon("/API/V1/Peers").unwrap(), "/API/V1/Peers");
        assert_eq!(canon("/api/v1/peers;x=1").unwrap(), "/api/v1/peers;x=1");
    }

    #[test]
    fn canonical_paths_are_borrowed_not_rebuilt() {
        for p in ["/", "/api/v1/info", "/api/v1/", "/api/v1/messages/abc;x=1"] {
            assert!(matches!(canonicalize(p).unwrap().decoded, Cow::Borrowed(_)), "{p}");
        }
        for p in ["//api", "/api/./v1", "/api/%70", "/a/.."] {
            assert!(matches!(canonicalize(p).unwrap().decoded, Cow::Owned(_)), "{p}");
        }
    }

    #[test]
    fn refused() {
        assert_eq!(canon("/api%2fv1/peers"), Err(PathError::EncodedSlash));
        assert_eq!(canon("/api%2Fv1/peers"), Err(PathError::EncodedSlash));
        assert_eq!(canon("/api%5cv1"), Err(PathError::Backslash));
        assert_eq!(canon("/api\\v1"), Err(PathError::Backslash));
        assert_eq!(canon("/api%00/v1"), Err(PathError::Nul));
        assert_eq!(canon("/api%zz"), Err(PathError::BadEscape));
        assert_eq!(canon("/api%2"), Err(PathError::BadEscape));
        assert_eq!(canon("/api%+1"), Err(PathError::BadEscape));
        assert_eq!(canon("/api%ff"), Err(PathError::NotUtf8));
        assert_eq!(canon("api/v1"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn encoded_form_keeps_meaning() {
        let c = canonicalize("/a%20b/%3Fx/%23y/%25").unwrap();
        assert_eq!(c.decoded, "/a b/?x/#y/%");
        assert_eq!(c.encoded, "/a%20b/%3Fx/%23y/%25");
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn never_panics_and_is_idempotent(raw in "(/|\\.|\\.\\.|%2e|%2E|%2f|%5c|%00|%25|%|;|\\\\|[a-zA-Z0-9?#% ]|%[0-9a-fA-F]{2}){0,24}") {
            let path = format!("/{raw}");
            if let Ok(c) = canonicalize(&path) {
                // The fast path and the full one must agree.
                let full = canonicalize(&format!("{path}/x/..")).ok().map(|f| f.decoded.trim_end_matches('/').to_owned());
                if !c.decoded.ends_with('/') {
                    proptest::prop_assert_eq!(full.as_deref(), Some(&*c.decoded));
                }
                let again = canonicalize(&c.encoded).expect("the encoded form is itself a valid path");
                proptest::prop_assert_eq!(&again, &c);
                proptest::prop_assert!(c.decoded.starts_with('/'));
                proptest::prop_assert!(!c.decoded.contains("//"));
                proptest::prop_assert!(c.decoded.split('/').all(|s| s != "." && s != ".."));
            }
        }

        #[test]
        fn never_panics_on_any_input(raw in ".{0,64}") {
            let _ = canonicalize(&raw);
        }
    }
}

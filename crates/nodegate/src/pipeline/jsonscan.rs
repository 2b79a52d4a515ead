//! A JSON request's top-level members found in one pass, for the JSON-RPC envelope: each member's
//! key and value as slices of the body, the values checked for JSON's structure and a depth limit
//! without being built. Strings are crossed with `memchr` (to the next quote or backslash), so a
//! long `params` costs a fraction of what decoding it would; what the envelope needs (keys,
//! `method`, `id`, `jsonrpc`) is then decoded by serde_json from its own slice, exactly as the
//! node's serde_json will. `tests/jsonrpc_fuzz.rs` holds the reading to serde_json's.
//!
//! What this accepts that serde_json refuses (control characters or invalid UTF-8 inside a params
//! string, a number too large for a float) the node refuses in turn: never a second reading of the
//! envelope, since every byte of it is decoded by serde_json itself.

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// From an opening quote to just past the closing one.
fn string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut i = i + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', &b[i..])?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        // An escape: one of JSON's, `\u` with four hex digits.
        match *b.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
            b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
            _ => return None,
        }
    }
}

fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| -> (usize, usize) {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i, i - start)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i).0,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let (end, n) = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let (end, n) = digits(b, i);
        if n == 0 {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// Past one value starting at `i` (no leading whitespace); `depth`: the arrays and objects it may
/// still open.
pub fn value(b: &[u8], i: usize, depth: u8) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string(b, i),
        b'{' => {
            let depth = depth.checked_sub(1)?;
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                i = ws(b, string(b, i)?);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(b, value(b, ws(b, i + 1), depth)?);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let depth = depth.checked_sub(1)?;
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = ws(b, value(b, i, depth)?);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => b[i..].starts_with(b"null").then_some(i + 4),
        _ => number(b, i),
    }
}

/// The object starting at `i` (after whitespace): each member handed to `member` as it is found
/// (the key's and the value's byte ranges, the key with its quotes; `false` stops: not JSON),
/// and where the object ends; `depth` as for `value` (the object itself takes one).
pub fn object(
    b: &[u8],
    i: usize,
    depth: u8,
    mut member: impl FnMut(std::ops::Range<usize>, std::ops::Range<usize>) -> bool,
) -> Option<usize> {
    let mut i = ws(b, i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let depth = depth.checked_sub(1)?;
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        let key_end = string(b, i)?;
        let key = i..key_end;
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = ws(b, i + 1);
        let end = value(b, start, depth)?;
        if !member(key, start..end) {
            return None;
        }
        i = ws(b, end);
        match b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// Past trailing whitespace, at the end of the body.
pub fn at_end(b: &[u8], i: usize) -> bool {
    ws(b, i) == b.len()
}

/// Past whitespace.
pub fn skip_ws(b: &[u8], i: usize) -> usize {
    ws(b, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        value(s.as_bytes(), ws(s.as_bytes(), 0), 64).is_some_and(|end| at_end(s.as_bytes(), end))
    }

    #[test]
    fn json_structure_as_serde_json_reads_it() {
        for good in [
            "1",
            "-0",
            "0.5",
            "1e9",
            "-1.5E-3",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "[]",
            "[1, 2 ,3]",
            "{}",
            "{\"a\":[{\"b\":null}],\"c\":true}",
            "  false  ",
        ] {
            assert!(ok(good), "{good}");
            assert!(serde_json::from_str::<serde_json::Value>(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "[1,]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":1,}",
            "{a:1}",
            "tru",
            "nul",
            "[",
            "{",
            "]",
            "1 2",
            "\"a\" \"b\"",
        ] {
            assert!(!ok(bad), "{bad}");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err(), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(!ok(&deep), "deeper than 64");
        let fine = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(ok(&fine));
    }
}

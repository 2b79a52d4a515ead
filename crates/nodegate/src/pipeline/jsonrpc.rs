//! A JSON-RPC 2.0 request's envelope, read for the method policy: `jsonrpc`, `method` and `id`
//! only. The body is crossed once by `jsonscan` (structure and depth checked, `params` never
//! built), each top-level member handed over as it is found, so a request costs no allocation,
//! however large or deep its params (past 64 levels: a parse error). `parse_reference` reads the
//! same with serde_json's deserializer; tests hold the two to one answer. The method name is
//! judged as the node will read it: escapes decoded (`"iota\u005fview"` is `iota_view`), case kept
//! (JSON-RPC names are case-sensitive). Anything a node could read two ways is refused: duplicate
//! keys, a method that is not a string, trailing bytes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One call, borrowed from the body where it can be (a method name with escapes is decoded).
#[derive(Debug)]
pub struct Call<'a> {
    pub method: Cow<'a, str>,
    /// The id's JSON text as the client wrote it (a number, a string or null), to echo in an
    /// error; `None` for a notification.
    pub id: Option<&'a str>,
}

/// A request: one call, or a batch.
#[derive(Debug)]
pub enum Envelope<'a> {
    Single(Call<'a>),
    Batch(Vec<Call<'a>>),
}

/// Why a body is not a request the policy can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON, or nested too deep.
    Parse,
    /// JSON, but not a JSON-RPC 2.0 request (no method, a method that is not a string, no
    /// `"jsonrpc": "2.0"`, a duplicate key, an id over 256 bytes, a method over 256 bytes).
    Request(&'static str),
    /// A batch, where batches are refused (iota-node refuses them itself).
    BatchRefused,
    /// A batch longer than `max_batch`, or empty.
    BatchSize,
}

/// The longest method name and id accepted (iota-node's and EVM methods are under 64).
const MAX_NAME: usize = 256;

/// How deep `params` may nest. Nothing a node's API takes comes near; a deeper body is junk that
/// would only cost the node a parse (serde_json skips values without a depth limit).
const MAX_DEPTH: u8 = 64;

/// Skips a value, refusing one nested deeper than its depth (recursion bounded by `MAX_DEPTH`).
struct Bounded(u8);

impl<'de> de::DeserializeSeed<'de> for Bounded {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.0.checked_sub(1).ok_or_else(|| de::Error::custom(WHY_DEEP))?;
        while seq.next_element_seed(Bounded(inner))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.0.checked_sub(1).ok_or_else(|| de::Error::custom(WHY_DEEP))?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Bounded(inner))?;
        }
        Ok(())
    }
}

const WHY_DEEP: &str = "nested too deep";

/// Reads `body`; batches up to `max_batch` calls (0: batches refused). Params nested deeper than
/// `MAX_DEPTH` levels are a parse error (the scanner counts them as it goes).
pub fn parse(body: &[u8], max_batch: usize) -> Result<Envelope<'_>, (Invalid, Option<&str>)> {
    use super::jsonscan::{at_end, skip_ws, value};
    let start = skip_ws(body, 0);
    if body.get(start) == Some(&b'[') {
        if max_batch == 0 {
            return Err((Invalid::BatchRefused, None));
        }
        let mut i = skip_ws(body, start + 1);
        let mut calls = Vec::new();
        if body.get(i) == Some(&b']') {
            return Err((if at_end(body, i + 1) { Invalid::BatchSize } else { Invalid::Parse }, None));
        }
        loop {
            if body.get(i) != Some(&b'{') {
                return Err((if valid(body) { Invalid::Request(REASONS[5]) } else { Invalid::Parse }, None));
            }
            let (end, call) = envelope(body, i).ok_or((Invalid::Parse, None))?;
            if calls.len() == max_batch {
                return Err((if valid(body) { Invalid::BatchSize } else { Invalid::Parse }, None));
            }
            match call {
                Ok(call) => calls.push(call),
                // One bad call refuses the batch, as the reference does (and a body that is not
                // JSON after it is a parse error first, as serde_json would say).
                Err((why, _)) => {
                    return Err((if valid(body) { Invalid::Request(why) } else { Invalid::Parse }, None));
                }
            }
            i = skip_ws(body, end);
            match body.get(i) {
                Some(b',') => i = skip_ws(body, i + 1),
                Some(b']') => {
                    i += 1;
                    break;
                }
                _ => return Err((Invalid::Parse, None)),
            }
        }
        if !at_end(body, i) {
            return Err((Invalid::Parse, None));
        }
        return Ok(Envelope::Batch(calls));
    }
    if body.get(start) != Some(&b'{') {
        let json = value(body, start, MAX_DEPTH + 1).is_some_and(|end| at_end(body, end));
        return Err((if json { Invalid::Request(REASONS[5]) } else { Invalid::Parse }, None));
    }
    let (end, call) = envelope(body, start).ok_or((Invalid::Parse, None))?;
    if !at_end(body, end) {
        return Err((Invalid::Parse, None));
    }
    match call {
        Ok(call) => Ok(Envelope::Single(call)),
        Err((why, id)) => Err((Invalid::Request(why), id)),
    }
}

/// Whether the whole body is JSON (for telling a bad call from a bad body, as serde_json would).
fn valid(body: &[u8]) -> bool {
    let start = super::jsonscan::skip_ws(body, 0);
    super::jsonscan::value(body, start, MAX_DEPTH + 1).is_some_and(|end| super::jsonscan::at_end(body, end))
}

/// A JSON string literal's text: borrowed when it has no escape, decoded by serde_json when it
/// has; `None` where serde_json would refuse it (control characters, invalid UTF-8).
fn text(literal: &[u8]) -> Option<Cow<'_, str>> {
    let inner = literal.get(1..literal.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        return serde_json::from_slice::<String>(literal).ok().map(Cow::Owned);
    }
    if inner.iter().any(|b| *b < 0x20) {
        return None;
    }
    std::str::from_utf8(inner).ok().map(Cow::Borrowed)
}

/// The envelope's members as a reader finds them, with the rules both readers share: a key twice,
/// an id or method too long, the version, a method that is not a string.
struct Parts<'a> {
    method: Option<Option<Cow<'a, str>>>,
    id: Option<&'a str>,
    version: Option<bool>,
    problem: Option<&'static str>,
}

impl<'a> Parts<'a> {
    fn new() -> Parts<'a> {
        Parts { method: None, id: None, version: None, problem: None }
    }

    /// `method`: the text when it is a string.
    fn method(&mut self, method: Option<Cow<'a, str>>) {
        if self.method.is_some() {
            self.problem.get_or_insert("duplicate key");
        }
        self.method = Some(method);
    }

    fn id(&mut self, id: &'a str) {
        if self.id.is_some() {
            self.problem.get_or_insert("duplicate key");
        }
        if id.len() > MAX_NAME {
            self.problem.get_or_insert("method or id too long");
        } else {
            self.id = Some(id);
        }
    }

    /// `jsonrpc`: whether it is the string "2.0".
    fn version(&mut self, is_2_0: bool) {
        if self.version.is_some() {
            self.problem.get_or_insert("duplicate key");
        }
        self.version = Some(is_2_0);
    }

    fn finish(self) -> CallResult<'a> {
        let id = self.id;
        if let Some(why) = self.problem {
            return Err((why, id));
        }
        if self.version != Some(true) {
            return Err(("jsonrpc must be \"2.0\"", id));
        }
        match self.method {
            None => Err(("no method", id)),
            Some(None) => Err(("method is not a string", id)),
            Some(Some(m)) if m.len() > MAX_NAME => Err(("method or id too long", id)),
            Some(Some(method)) => Ok(Call { method, id }),
        }
    }
}

/// The call in the object at `i`, read member by member as the scanner finds them (see
/// `CallVisitor` for the same rules), and where the object ends; `None`: not JSON (including a key
/// or string serde_json would not read).
fn envelope(body: &[u8], i: usize) -> Option<(usize, CallResult<'_>)> {
    let mut parts = Parts::new();
    let end =
        super::jsonscan::object(body, i, MAX_DEPTH + 1, |key, value| member(body, key, value, &mut parts).is_some())?;
    Some((end, parts.finish()))
}

/// One member of a call's object into `parts`; `None` when it is not JSON serde_json would read.
fn member<'a>(
    body: &'a [u8],
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    parts: &mut Parts<'a>,
) -> Option<()> {
    let literal = &body[key];
    // A key without an escape is compared as it is: only the three that matter are read, and
    // whatever else a key holds the node judges (a key serde_json refuses fails there).
    let key: Cow<'_, str> = if literal.contains(&b'\\') {
        text(literal)?
    } else {
        match &literal[1..literal.len() - 1] {
            b"method" => Cow::Borrowed("method"),
            b"id" => Cow::Borrowed("id"),
            b"jsonrpc" => Cow::Borrowed("jsonrpc"),
            _ => return Some(()),
        }
    };
    let raw = &body[value];
    // A string's text, or `None` inside for a value of another type.
    let string = |raw: &'a [u8]| -> Option<Option<Cow<'a, str>>> {
        if raw.first() == Some(&b'"') { text(raw).map(Some) } else { Some(None) }
    };
    match &*key {
        "method" => parts.method(string(raw)?),
        "id" => parts.id(id_text(raw)?),
        "jsonrpc" => parts.version(string(raw)?.is_some_and(|v| v == "2.0")),
        // Strings in other members may hold what serde_json refuses (a control character): the
        // node then refuses the body, which is no second reading of the envelope.
        _ => {}
    }
    Some(())
}

/// An id's JSON text, where serde_json would read it: a number or literal as the scanner checked
/// it, a string without escapes checked as `text` checks it, anything else read by serde_json.
fn id_text(raw: &[u8]) -> Option<&str> {
    match raw.first()? {
        b'"' if !raw.contains(&b'\\') => {
            text(raw)?;
            std::str::from_utf8(raw).ok()
        }
        b'"' | b'{' | b'[' => serde_json::from_slice::<&RawValue>(raw).ok().map(RawValue::get),
        _ => std::str::from_utf8(raw).ok(),
    }
}

/// The same reading driven by serde_json's deserializer (`CallVisitor`): the reference the
/// scanner (`parse`) is tested against.
pub fn parse_reference(body: &[u8], max_batch: usize) -> Result<Envelope<'_>, (Invalid, Option<&str>)> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        if max_batch == 0 {
            return Err((Invalid::BatchRefused, None));
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let calls = de.deserialize_seq(BatchVisitor { max: max_batch }).map_err(|e| (classify(&e), None))?;
        de.end().map_err(|_| (Invalid::Parse, None))?;
        if calls.is_empty() {
            return Err((Invalid::BatchSize, None));
        }
        return Ok(Envelope::Batch(calls));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = de.deserialize_map(CallVisitor).map_err(|e| (classify(&e), None))?;
    // A body that is not JSON after the object is a parse error before anything else.
    de.end().map_err(|_| (Invalid::Parse, None))?;
    match read {
        Ok(call) => Ok(Envelope::Single(call)),
        Err((why, id)) => Err((Invalid::Request(why), id)),
    }
}

/// serde's errors from our visitors carry their reason in the message.
fn classify(e: &serde_json::Error) -> Invalid {
    if e.is_data() {
        let m = e.to_string();
        if m.starts_with(WHY_DEEP) {
            return Invalid::Parse;
        }
        for why in [WHY_BATCH_SIZE] {
            if m.starts_with(why) {
                return Invalid::BatchSize;
            }
        }
        for why in REASONS {
            if m.starts_with(why) {
                return Invalid::Request(why);
            }
        }
        return Invalid::Request("not a JSON-RPC request object");
    }
    Invalid::Parse
}

const WHY_BATCH_SIZE: &str = "batch too long";
const REASONS: [&str; 6] = [
    "no method",
    "method is not a string",
    "duplicate key",
    "jsonrpc must be \"2.0\"",
    "method or id too long",
    "not a JSON-RPC request object",
];

struct CallVisitor;

/// A call, or why it is not one (with its id when that was read).
type CallResult<'de> = Result<Call<'de>, (&'static str, Option<&'de str>)>;

impl<'de> Visitor<'de> for CallVisitor {
    type Value = CallResult<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CallResult<'de>, A::Error> {
        let mut parts = Parts::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "method" => parts.method(match map.next_value::<Scalar>()? {
                    Scalar::Str(s) => Some(s),
                    Scalar::Other => None,
                }),
                "id" => parts.id(map.next_value::<&'de RawValue>()?.get()),
                "jsonrpc" => parts.version(matches!(map.next_value::<Scalar>()?, Scalar::Str(ref s) if s == "2.0")),
                // Parsed, not ignored: serde_json's ignore path goes byte by byte, its string
                // parser skips to the next quote or escape far faster.
                _ => map.next_value_seed(Bounded(MAX_DEPTH))?,
            }
        }
        Ok(parts.finish())
    }
}

struct BatchVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Vec<Call<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch of JSON-RPC requests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Call<'de>>, A::Error> {
        let mut calls = Vec::new();
        while let Some(call) = seq.next_element_seed(CallSeed)? {
            if calls.len() == self.max {
                return Err(de::Error::custom(WHY_BATCH_SIZE));
            }
            // One bad call refuses the batch: a policy that skipped it would let the node judge it.
            calls.push(call.map_err(|(why, _)| de::Error::custom(why))?);
        }
        Ok(calls)
    }
}

struct CallSeed;

impl<'de> de::DeserializeSeed<'de> for CallSeed {
    type Value = CallResult<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<CallResult<'de>, D::Error> {
        d.deserialize_map(CallVisitor)
    }
}

/// A string (borrowed unless it had escapes), or anything else (drained without being built).
enum Scalar<'de> {
    Str(Cow<'de, str>),
    Other,
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(body: &str) -> Result<String, Invalid> {
        match parse(body.as_bytes(), 0) {
            Ok(Envelope::Single(c)) => Ok(c.method.into_owned()),
            Ok(Envelope::Batch(_)) => unreachable!(),
            Err((e, _)) => Err(e),
        }
    }

    #[test]
    fn a_call_is_read_as_the_node_reads_it() {
        let ok = r#"{"jsonrpc":"2.0","id":7,"method":"iota_getObject","params":["0x5",{"showType":true}]}"#;
        assert_eq!(method(ok).unwrap(), "iota_getObject");
        // Escapes are decoded: the node sees iota_view.
        assert_eq!(method(r#"{"jsonrpc":"2.0","id":1,"method":"iota\u005fview"}"#).unwrap(), "iota_view");
        // Case is kept: IOTA_GETOBJECT is another (unknown) method.
        assert_eq!(method(r#"{"jsonrpc":"2.0","id":1,"method":"IOTA_GETOBJECT"}"#).unwrap(), "IOTA_GETOBJECT");
        let id = match parse(br#"{"id":"abc","jsonrpc":"2.0","method":"m"}"#, 0).unwrap() {
            Envelope::Single(c) => c.id.unwrap().to_owned(),
            _ => unreachable!(),
        };
        assert_eq!(id, "\"abc\"");
    }

    #[test]
    fn what_a_node_could_read_two_ways_is_refused() {
        let cases: &[(&str, Invalid)] = &[
            ("not json", Invalid::Parse),
            ("", Invalid::Parse),
            (r#"{"jsonrpc":"2.0","id":1,"method":"a"} trailing"#, Invalid::Parse),
            (r#"{"jsonrpc":"2.0","id":1}"#, Invalid::Request("no method")),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, Invalid::Request("method is not a string")),
            (r#"{"jsonrpc":"2.0","id":1,"method":["iota_view"]}"#, Invalid::Request("method is not a string")),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"iota_getObject","method":"iota_view"}"#,
                Invalid::Request("duplicate key"),
            ),
            (r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"a"}"#, Invalid::Request("duplicate key")),
            (r#"{"jsonrpc":"1.0","id":1,"method":"a"}"#, Invalid::Request("jsonrpc must be \"2.0\"")),
            (r#"{"id":1,"method":"a"}"#, Invalid::Request("jsonrpc must be \"2.0\"")),
            (r#"["a"]"#, Invalid::BatchRefused),
            (r#"  [{"jsonrpc":"2.0","id":1,"method":"a"}]"#, Invalid::BatchRefused),
            (r#""iota_getObject""#, Invalid::Request("not a JSON-RPC request object")),
        ];
        for (body, want) in cases {
            assert_eq!(method(body).unwrap_err(), *want, "{body}");
        }
        let long_id = format!(r#"{{"jsonrpc":"2.0","id":"{}","method":"a"}}"#, "x".repeat(300));
        assert_eq!(method(&long_id).unwrap_err(), Invalid::Request("method or id too long"));
        // Deep nesting in params: serde_json's recursion limit, a parse error, no stack overflow.
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(method(&deep).unwrap_err(), Invalid::Parse);
        // The id is kept for the error when the call is refused.
        let (_, id) = parse(br#"{"jsonrpc":"2.0","id":42,"method":7}"#, 0).unwrap_err();
        assert_eq!(id.unwrap(), "42");
    }

    #[test]
    fn batches_are_judged_whole_and_capped() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#;
        let batch = |n: usize| format!("[{}]", vec![call; n].join(","));
        match parse(batch(3).as_bytes(), 50).unwrap() {
            Envelope::Batch(calls) => assert_eq!(calls.len(), 3),
            _ => unreachable!(),
        }
        assert_eq!(parse(batch(51).as_bytes(), 50).unwrap_err().0, Invalid::BatchSize);
        assert_eq!(parse(b"[]", 50).unwrap_err().0, Invalid::BatchSize);
        // One bad call (the 10,000th of a long batch, say) refuses the whole batch.
        let mut many = vec![call.to_owned(); 40];
        many.push(r#"{"jsonrpc":"2.0","id":1,"method":{"x":1}}"#.into());
        assert_eq!(
            parse(format!("[{}]", many.join(",")).as_bytes(), 50).unwrap_err().0,
            Invalid::Request("method is not a string")
        );
    }
}

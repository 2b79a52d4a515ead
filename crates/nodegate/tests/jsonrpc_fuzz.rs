//! The JSON-RPC envelope reader against serde_json, the parser iota-node and Wasp's JSON-RPC
//! servers read requests with: for generated requests (duplicate keys, escaped names, any params,
//! odd whitespace, broken tails), whatever the gateway admits must be read the same way by
//! serde_json, so no body can say one method to the policy and another to the node. (The
//! generator writes valid UTF-8 without control characters: outside the envelope's own members the
//! scanner lets such bytes through for the node to refuse, see `pipeline::jsonscan`.) The fast
//! scanner (`parse`) is also held to the serde-driven reference reader (`parse_reference`).
//! `NODEGATE_FUZZ_CASES` sets how many (256 by default).

mod common;

use common::fuzz_cases as cases;
use nodegate::pipeline::jsonrpc::{Envelope, Invalid, parse, parse_reference};
use proptest::prelude::*;
use serde_json::Value;

/// An object's keys as serde_json decodes them, duplicates kept.
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// An outcome's kind, for comparing two readers.
fn kind(i: &Invalid) -> String {
    format!("{i:?}")
}

/// A JSON string literal for `s`, each character written plainly or as a `\uXXXX` escape.
fn literal(s: &str, escape: &[bool]) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || escape.get(i).copied().unwrap_or(false) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z_\\\\\"\u{e9}\u{1F600}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One member of a request object, written as text.
fn member() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        Just("iota_getObject"),
        Just("iota_tryGetObjectBeforeVersion"),
        Just("unsafe_moveCall"),
        Just("eth_call"),
        Just("debug_traceTransaction"),
    ];
    prop_oneof![
        (method, prop::collection::vec(any::<bool>(), 40))
            .prop_map(|(m, esc)| format!("\"method\":{}", literal(m, &esc))),
        json_value().prop_map(|v| format!("\"method\":{v}")),
        prop_oneof![Just("\"2.0\""), Just("\"1.0\""), Just("2"), Just("\"2\\u002e0\"")]
            .prop_map(|v| format!("\"jsonrpc\":{v}")),
        prop_oneof![
            Just("1".to_owned()),
            Just("\"x\"".to_owned()),
            Just("null".to_owned()),
            any::<u32>().prop_map(|n| n.to_string())
        ]
        .prop_map(|v| format!("\"id\":{v}")),
        json_value().prop_map(|v| format!("\"params\":{v}")),
        (prop::collection::vec(any::<bool>(), 10), json_value())
            .prop_map(|(esc, v)| format!("{}:{v}", literal("method", &esc))),
    ]
}

fn request() -> impl Strategy<Value = String> {
    (prop::collection::vec(member(), 0..6), prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("}"), Just(",")])
        .prop_map(|(members, tail)| format!("{{ {} }}{tail}", members.join(" , ")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn what_the_gateway_admits_serde_json_reads_the_same_way(body in request()) {
        let ours = parse(body.as_bytes(), 0);
        let theirs = serde_json::from_str::<Value>(&body);
        if let Ok(Envelope::Single(call)) = &ours {
            // serde_json must read the same text as one object whose method is the same string.
            let v = theirs.as_ref().unwrap_or_else(|e| panic!("admitted what serde_json refuses ({e}): {body}"));
            prop_assert_eq!(v["method"].as_str(), Some(&*call.method), "{}", body);
            prop_assert_eq!(v["jsonrpc"].as_str(), Some("2.0"), "{}", body);
            // And no key of the envelope may appear twice (serde_json's Value keeps the last one,
            // a node's derived request struct refuses duplicates: either way, two readings).
            let keys = serde_json::from_str::<Keys>(&body).map(|k| k.0).unwrap_or_default();
            for key in ["method", "jsonrpc", "id"] {
                prop_assert!(keys.iter().filter(|k| *k == key).count() <= 1, "{} twice: {}", key, body);
            }
        }
        if theirs.is_err() {
            prop_assert!(ours.is_err(), "admitted what serde_json refuses: {}", body);
        }
        // The fast scanner and the serde-driven reference agree on every verdict.
        let reference = parse_reference(body.as_bytes(), 0);
        match (&ours, &reference) {
            (Ok(Envelope::Single(a)), Ok(Envelope::Single(b))) => {
                prop_assert_eq!(&a.method, &b.method, "{}", body);
                prop_assert_eq!(a.id, b.id, "{}", body);
            }
            // Where the body is not JSON at all, which error is named first may differ; both refuse.
            (Err((a, _)), Err((b, _))) if theirs.is_ok() => prop_assert_eq!(kind(a), kind(b), "{}", body),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "scanner {:?} but reference {:?}: {}", ours.as_ref().err(), reference.as_ref().err(), body),
        }
    }

    #[test]
    fn batches_read_the_same_by_scanner_and_reference(calls in prop::collection::vec(request(), 0..4), max in 0usize..4) {
        let body = format!("[{}]", calls.join(","));
        let (ours, reference) = (parse(body.as_bytes(), max), parse_reference(body.as_bytes(), max));
        let json = serde_json::from_str::<Value>(&body).is_ok();
        match (&ours, &reference) {
            (Ok(Envelope::Batch(a)), Ok(Envelope::Batch(b))) => {
                prop_assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b) {
                    prop_assert_eq!(&x.method, &y.method, "{}", body);
                }
            }
            (Err((a, _)), Err((b, _))) if json => prop_assert_eq!(kind(a), kind(b), "{}", body),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "scanner {:?} but reference {:?}: {}", ours.as_ref().err(), reference.as_ref().err(), body),
        }
    }
}

#[test]
fn duplicate_envelope_keys_are_always_refused() {
    // The property above compares single readings; duplicates are the classic way to get two.
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"iota_getObject","\u006dethod":"iota_tryGetObjectBeforeVersion"}"#,
        r#"{"jsonrpc":"2.0","id":1,"m\u0065thod":"iota_getObject","method":"iota_getObject"}"#,
        r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"iota_getObject"}"#,
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"iota_getObject"}"#,
    ] {
        assert!(parse(body.as_bytes(), 0).is_err(), "{body}");
    }
}

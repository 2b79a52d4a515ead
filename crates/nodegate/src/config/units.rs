//! Human-written units in config files: durations ("500ms", "5s", "10m"), sizes ("64KiB", "1MiB").
//! Parse errors come back through serde, so toml attaches the value's line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written as `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A byte size written as `<integer><unit>` with unit `B`, `KiB`, `MiB`, `GiB` (or `KB`, `MB`, `GB`, decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_number(s)?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => {
            return Err(format!(
                "bad duration `{s}`: unit must be ms, s, m, h, d or w (e.g. \"500ms\", \"5s\", \"1w\")"
            ));
        }
    };
    num.checked_mul(per_unit_ms).map(Duration::from_millis).ok_or_else(|| format!("bad duration `{s}`: too large"))
}

/// A rate written `<n>/s`, `<n>/min` or `<n>/h`, as the time between two requests.
pub fn parse_rate(s: &str) -> Result<Duration, String> {
    let (n, per) = s.split_once('/').ok_or_else(|| format!("bad rate `{s}`: write it as \"20/s\" or \"100/min\""))?;
    let n: u64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("bad rate `{s}`: the count must be a whole number above 0"))?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(format!("bad rate `{s}`: per s, min or h")),
    };
    // The interval in whole nanoseconds: a rate of more than one a nanosecond would be an interval
    // of zero, which no limiter can divide by (found by tests/fuzz.rs).
    match u64::try_from(per.as_nanos()).unwrap_or(u64::MAX) / n {
        0 => Err(format!("bad rate `{s}`: too large (at most 1000000000/s)")),
        nanos => Ok(Duration::from_nanos(nanos)),
    }
}

/// A rate, as the interval between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Duration);

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a rate string such as \"20/s\"", |s: &str| parse_rate(s).map(Rate)))
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s)?;
    let mult: u64 = match unit {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("bad size `{s}`: unit must be B, KiB, MiB or GiB (e.g. \"64KiB\")")),
    };
    num.checked_mul(mult).ok_or_else(|| format!("bad size `{s}`: too large"))
}

fn split_number(s: &str) -> Result<(u64, &str), String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("`{s}` must start with a whole number (e.g. \"5s\", \"64KiB\")"));
    }
    let num = s[..digits].parse::<u64>().map_err(|_| format!("`{s}`: number too large"))?;
    Ok((num, s[digits..].trim_start()))
}

struct StrVisitor<F>(&'static str, F);

impl<T, F: Fn(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a duration string such as \"5s\"", |s: &str| parse_duration(s).map(Dur)))
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a size string such as \"1MiB\"", |s: &str| parse_size(s).map(Size)))
    }
}

/// Bytes per second, written as a size per second: `"1KiB/s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate(pub u64);

pub fn parse_byte_rate(s: &str) -> Result<u64, String> {
    let size = s
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| format!("bad rate `{s}`: write it as bytes per second, e.g. \"1KiB/s\""))?;
    parse_size(size)
}

impl<'de> serde::Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a rate string such as \"1KiB/s\"", |s: &str| parse_byte_rate(s).map(ByteRate)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_never_an_interval_of_zero() {
        assert_eq!(parse_rate("1000000000/s"), Ok(Duration::from_nanos(1)));
        assert!(parse_rate("1000000001/s").unwrap_err().contains("too large"));
        assert!(parse_rate("18446744073709551615/h").unwrap_err().contains("too large"));
        assert_eq!(parse_rate("3/s"), Ok(Duration::from_nanos(333_333_333)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86_400)), "the ban issue's max_bantime = \"1w\"");
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "5", "5 parsecs", "-5s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20/s"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_rate("100/min"), Ok(Duration::from_millis(600)));
        assert_eq!(parse_rate("1/h"), Ok(Duration::from_secs(3600)));
        for bad in ["20", "0/s", "x/s", "5/day", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        for bad in ["", "MiB", "1 lb", "-1KiB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn byte_rates() {
        assert_eq!(parse_byte_rate("1KiB/s"), Ok(1024));
        assert_eq!(parse_byte_rate("0/s"), Ok(0));
        for bad in ["1KiB", "1KiB/min", "/s", "fast"] {
            assert!(parse_byte_rate(bad).is_err(), "{bad} should fail");
        }
    }
}

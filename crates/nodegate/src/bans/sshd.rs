//! The sshd filter: which OpenSSH log lines are a client's failure, and whose.
//!
//! A line is a header (syslog `Mon DD HH:MM:SS host`, RFC 3339 `2026-11-27T01:02:03.123+00:00 host`,
//! or RFC 5424 `<PRI>1 TIMESTAMP host`), a process (`sshd`, `sshd-session`, `sshd-auth`, with or
//! without `[pid]`), and sshd's message. Each rule knows the fixed words sshd writes around the
//! address, and the address is taken where sshd put it: anchored at the end of the message, so that
//! a user name such as `x from 1.2.3.4 port 22` (which sshd logs verbatim) never names the address.
//!
//! Modes, as fail2ban's sshd filter names them: `normal` (authentication failures), `ddos`
//! (connections that never get to authenticate), `extra` (negotiation failures and disconnects while
//! authenticating), `aggressive` (all of them). OpenSSH 9.8's PerSourcePenalties lines count in every
//! mode: sshd itself has judged the source.

use std::net::IpAddr;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Which families of failures count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Normal,
    Ddos,
    Extra,
    Aggressive,
}

/// The rule a line matched, for summaries and `bans why`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// `Failed password|publickey|keyboard-interactive/pam|none for [invalid user] U from A port P`
    FailedAuth,
    /// `Invalid user U from A port P`
    InvalidUser,
    /// `User U from A not allowed because ...`
    NotAllowed,
    /// sshd's `PAM: Authentication failure for U from A` (PAM's own line for the same attempt is not
    /// counted: sshd's `Failed password` line already is)
    PamFailure,
    /// `ROOT LOGIN REFUSED FROM A`
    RootRefused,
    /// `maximum authentication attempts exceeded for U from A port P` and
    /// `Disconnecting ... A port P: Too many authentication failures`
    TooManyAttempts,
    /// `Did not receive identification string from A port P`
    NoIdentification,
    /// `banner exchange: Connection from A port P: invalid format` (and other banner errors)
    BannerError,
    /// `Connection closed|reset by A port P [preauth]`, `Disconnected from A port P [preauth]`
    ClosedBeforeAuth,
    /// `Timeout before authentication for A port P`
    TimeoutBeforeAuth,
    /// `Unable to negotiate with A port P: no matching ... found`
    NoMatchingAlgorithm,
    /// `Received disconnect from A port P:14: No supported authentication methods available`
    NoAuthMethods,
    /// `Connection closed|Disconnected from authenticating|invalid user U A port P [preauth]`
    DisconnectedAuthenticating,
    /// OpenSSH 9.8+: `drop connection #N from [A]:P on [B]:Q penalty: ...`
    Penalty,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::FailedAuth => "failed-auth",
            Rule::InvalidUser => "invalid-user",
            Rule::NotAllowed => "not-allowed",
            Rule::PamFailure => "pam-failure",
            Rule::RootRefused => "root-refused",
            Rule::TooManyAttempts => "too-many-attempts",
            Rule::NoIdentification => "no-identification",
            Rule::BannerError => "banner-error",
            Rule::ClosedBeforeAuth => "closed-before-auth",
            Rule::TimeoutBeforeAuth => "timeout-before-auth",
            Rule::NoMatchingAlgorithm => "no-matching-algorithm",
            Rule::NoAuthMethods => "no-auth-methods",
            Rule::DisconnectedAuthenticating => "disconnected-authenticating",
            Rule::Penalty => "penalty",
        }
    }

    fn counts_in(self, mode: Mode) -> bool {
        use Rule::*;
        let family = match self {
            FailedAuth | InvalidUser | NotAllowed | PamFailure | RootRefused | TooManyAttempts => Mode::Normal,
            NoIdentification | BannerError | ClosedBeforeAuth | TimeoutBeforeAuth => Mode::Ddos,
            NoMatchingAlgorithm | NoAuthMethods | DisconnectedAuthenticating => Mode::Extra,
            Penalty => return true,
        };
        mode == Mode::Aggressive || mode == family
    }
}

/// One failure: whose, when (when the header says), and which rule saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub ip: IpAddr,
    pub time: Option<OffsetDateTime>,
    pub rule: Rule,
}

/// Reads lines with what the headers leave out: the year of syslog timestamps (the year `now` is
/// in, or the one before for a date that would be in the future) and their offset (UTC).
pub struct Filter {
    mode: Mode,
    now: OffsetDateTime,
}

impl Filter {
    pub fn new(mode: Mode, now: OffsetDateTime) -> Filter {
        Filter { mode, now }
    }

    /// The failure a line reports, if it is one that counts in this filter's mode.
    pub fn failure(&self, line: &str) -> Option<Failure> {
        let (time, message) = self.split(line)?;
        let (rule, ip) = classify(message)?;
        rule.counts_in(self.mode).then_some(Failure { ip: ip.to_canonical(), time, rule })
    }

    /// The failure a message reports, for sources that give the message apart from its header
    /// (the journal: `MESSAGE`, with the time and process name in fields of their own).
    pub fn message_failure(&self, message: &str, time: Option<OffsetDateTime>) -> Option<Failure> {
        let (rule, ip) = classify(message.trim_end_matches(['\r', '\n']))?;
        rule.counts_in(self.mode).then_some(Failure { ip: ip.to_canonical(), time, rule })
    }

    /// Whether a process name (a syslog identifier) is sshd's: `sshd`, `sshd-session`, `sshd-auth`.
    pub fn is_sshd_process(name: &str) -> bool {
        is_sshd(name)
    }

    /// Whether a line is one of sshd's (whatever it says): a source that gives none is blind.
    pub fn is_sshd(&self, line: &str) -> bool {
        self.split(line).is_some()
    }

    /// The header's time and sshd's message; `None` for lines that are not sshd's.
    fn split<'a>(&self, line: &'a str) -> Option<(Option<OffsetDateTime>, &'a str)> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (time, rest) = if let Some(rest) = line.strip_prefix('<') {
            // RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG
            let (_, rest) = rest.split_once('>')?;
            let rest = rest.strip_prefix("1 ")?;
            let (ts, rest) = rest.split_once(' ')?;
            let (_host, rest) = rest.split_once(' ')?;
            let (app, rest) = rest.split_once(' ')?;
            let (_procid, rest) = rest.split_once(' ')?;
            let (_msgid, rest) = rest.split_once(' ')?;
            let rest = rest.strip_prefix("- ").or_else(|| structured_data_end(rest))?;
            if !is_sshd(app) {
                return None;
            }
            let time = OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok();
            return Some((time, rest));
        } else if line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            let (ts, rest) = line.split_once(' ')?;
            (OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok(), rest)
        } else {
            // `Nov 27 01:02:03 host ...`: a day of one digit is padded with a space.
            let (month, rest) = line.split_once(' ')?;
            let rest = rest.trim_start();
            let (day, rest) = rest.split_once(' ')?;
            let (clock, rest) = rest.split_once(' ')?;
            (self.syslog_time(month, day, clock), rest)
        };
        let (_host, rest) = rest.split_once(' ')?;
        let (process, message) = rest.split_once(": ")?;
        let name = process.split('[').next()?;
        is_sshd(name).then_some((time, message))
    }

    fn syslog_time(&self, month: &str, day: &str, clock: &str) -> Option<OffsetDateTime> {
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let m = MONTHS.iter().position(|n| *n == month)?;
        let month = Month::try_from(u8::try_from(m + 1).ok()?).ok()?;
        let day: u8 = day.parse().ok()?;
        let mut parts = clock.split(':').map(|p| p.parse::<u8>().ok());
        let (h, mi, s) = (parts.next()??, parts.next()??, parts.next()??);
        let time = Time::from_hms(h, mi, s).ok()?;
        let at = |year| Date::from_calendar_date(year, month, day).ok().map(|d| PrimitiveDateTime::new(d, time));
        let this_year = at(self.now.year())?.assume_offset(UtcOffset::UTC);
        // A date later than now (by more than a day of clock skew) is from last year.
        if this_year > self.now + time::Duration::days(1) {
            return at(self.now.year() - 1).map(|t| t.assume_offset(UtcOffset::UTC));
        }
        Some(this_year)
    }
}

fn is_sshd(name: &str) -> bool {
    matches!(name, "sshd" | "sshd-session" | "sshd-auth")
}

/// RFC 5424 structured data `[...]` (possibly several), then the message.
fn structured_data_end(rest: &str) -> Option<&str> {
    let mut rest = rest;
    while let Some(r) = rest.strip_prefix('[') {
        rest = &r[r.find(']')? + 1..];
    }
    rest.strip_prefix(' ')
}

/// The rule and the address of a message; the address is always read back from the end.
fn classify(msg: &str) -> Option<(Rule, IpAddr)> {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // Trailers sshd adds after the address: " [preauth]", " ssh2", ": <reason>".
    let core = msg.strip_suffix(" [preauth]").unwrap_or(msg);

    if let Some(rest) = core.strip_prefix("Failed ") {
        // Failed <method> for [invalid user ]U from A port P ssh2[: <key type> <fingerprint>]
        let method = rest.split(' ').next()?;
        if !matches!(method, "password" | "publickey" | "keyboard-interactive/pam" | "none" | "hostbased") {
            return None;
        }
        let tail = match core.rfind(" ssh2") {
            Some(i) if core[i + 5..].is_empty() || core[i + 5..].starts_with(": ") => &core[..i],
            _ => core,
        };
        return Some((Rule::FailedAuth, from_port(tail)?));
    }
    if core.starts_with("Invalid user ") {
        return Some((Rule::InvalidUser, from_port(core)?));
    }
    if let Some(rest) = core.strip_prefix("User ") {
        // User U from A not allowed because <reason>
        let i = rest.rfind(" not allowed because ")?;
        let (ip, _) = last_word_after(&rest[..i], " from ")?;
        return Some((Rule::NotAllowed, ip));
    }
    if core.starts_with("PAM: Authentication failure for ") || core.starts_with("PAM: User not known") {
        let (ip, rest) = last_word_after(core, " from ")?;
        return rest.is_empty().then_some((Rule::PamFailure, ip));
    }
    // PAM's own `pam_unix(sshd:auth): authentication failure; ... rhost=A` is not counted: sshd
    // writes `Failed password ... from A` for the same attempt, and one attempt must count once
    // (fail2ban, too, matches it without counting it).
    if let Some(rest) = core.strip_prefix("ROOT LOGIN REFUSED FROM ") {
        let word = rest.split(' ').next()?;
        return Some((Rule::RootRefused, parse_ip(word)?));
    }
    if core.starts_with("maximum authentication attempts exceeded for ") {
        let tail = core.strip_suffix(" ssh2").unwrap_or(core);
        return Some((Rule::TooManyAttempts, from_port(tail)?));
    }
    if let Some(rest) = core.strip_prefix("Disconnecting ") {
        // Disconnecting [authenticating|invalid] user U A port P: Too many authentication failures
        let (before, reason) = rest.rsplit_once(": ")?;
        if reason != "Too many authentication failures" {
            return None;
        }
        return Some((Rule::TooManyAttempts, addr_port(before)?));
    }
    if core.starts_with("Did not receive identification string from ") {
        return Some((Rule::NoIdentification, from_port(core)?));
    }
    if let Some(rest) = core.strip_prefix("banner exchange: Connection from ") {
        let (before, _reason) = rest.split_once(": ")?;
        return Some((Rule::BannerError, addr_port(&format!("x {before}"))?));
    }
    if let Some(rest) = core.strip_prefix("Timeout before authentication for ") {
        return Some((Rule::TimeoutBeforeAuth, addr_port(&format!("x {rest}"))?));
    }
    if let Some(rest) = core.strip_prefix("Unable to negotiate with ") {
        let (before, reason) = rest.split_once(": ")?;
        if !reason.starts_with("no matching ") {
            return None;
        }
        return Some((Rule::NoMatchingAlgorithm, addr_port(&format!("x {before}"))?));
    }
    if let Some(rest) = core.strip_prefix("Received disconnect from ") {
        // Received disconnect from A port P:14: No supported authentication methods available
        let (before, reason) = rest.split_once(':')?;
        if !reason.ends_with("No supported authentication methods available") {
            return None;
        }
        return Some((Rule::NoAuthMethods, addr_port(&format!("x {before}"))?));
    }
    for (prefix, rule_user, rule_plain) in [
        ("Connection closed by ", Rule::DisconnectedAuthenticating, Rule::ClosedBeforeAuth),
        ("Connection reset by ", Rule::DisconnectedAuthenticating, Rule::ClosedBeforeAuth),
        ("Disconnected from ", Rule::DisconnectedAuthenticating, Rule::ClosedBeforeAuth),
    ] {
        if let Some(rest) = core.strip_prefix(prefix) {
            // Only before authentication: a user who logged in and left is no failure.
            if core.len() == msg.len() {
                return None;
            }
            let user = rest.starts_with("authenticating user ") || rest.starts_with("invalid user ");
            let rule = if user { rule_user } else { rule_plain };
            let ip = if user { addr_port(rest)? } else { addr_port(&format!("x {rest}"))? };
            return Some((rule, ip));
        }
    }
    if let Some(rest) = core.strip_prefix("drop connection #") {
        // drop connection #N from [A]:P on [B]:Q penalty: <reason>
        let (n, rest) = rest.split_once(" from [")?;
        let (ip, rest) = rest.split_once("]:")?;
        let (port, rest) = rest.split_once(' ')?;
        let numbers = n.bytes().all(|b| b.is_ascii_digit()) && is_port(port);
        (numbers && rest.contains(" penalty: ")).then_some(())?;
        return Some((Rule::Penalty, parse_ip(ip)?));
    }
    None
}

/// `... from A port P` at the very end: A.
fn from_port(s: &str) -> Option<IpAddr> {
    let (ip, rest) = last_word_after(s, " from ")?;
    let port = rest.strip_prefix("port ")?;
    (is_port(port)).then_some(ip)
}

/// `... A port P` at the very end (the word before `port`): A.
fn addr_port(s: &str) -> Option<IpAddr> {
    let (before, port) = s.rsplit_once(" port ")?;
    if !is_port(port) {
        return None;
    }
    parse_ip(before.rsplit(' ').next()?)
}

/// The word after the last `sep`, as an address, and what follows that word (trimmed).
fn last_word_after<'a>(s: &'a str, sep: &str) -> Option<(IpAddr, &'a str)> {
    let i = s.rfind(sep)?;
    let rest = &s[i + sep.len()..];
    let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((parse_ip(word)?, after))
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(mode: Mode) -> Filter {
        Filter::new(
            mode,
            OffsetDateTime::parse("2026-11-27T12:00:00Z", &time::format_description::well_known::Rfc3339).unwrap(),
        )
    }

    fn ip(line: &str, mode: Mode) -> Option<String> {
        filter(mode).failure(line).map(|f| f.ip.to_string())
    }

    #[test]
    fn headers_of_every_kind_and_their_times() {
        let f = filter(Mode::Normal);
        let m = "Invalid user admin from 203.0.113.7 port 4711";
        for line in [
            format!("Nov 27 10:01:02 host sshd[812]: {m}"),
            format!("Nov  2 10:01:02 host sshd-session[812]: {m}"),
            format!("2026-11-27T10:01:02.123456+01:00 host sshd-auth[9]: {m}"),
            format!("<38>1 2026-11-27T10:01:02.5Z host sshd 812 - - {m}"),
            format!("<38>1 2026-11-27T10:01:02Z host sshd 812 - [meta x=\"1\"] {m}"),
        ] {
            assert_eq!(f.failure(&line).map(|x| x.ip.to_string()), Some("203.0.113.7".into()), "{line}");
        }
        let t = f.failure(&format!("Nov 27 10:01:02 host sshd[812]: {m}")).unwrap().time.unwrap();
        assert_eq!(t.to_string(), "2026-11-27 10:01:02.0 +00:00:00");
        // December seen in November: last year's.
        let t = f.failure(&format!("Dec 31 23:59:59 host sshd[1]: {m}")).unwrap().time.unwrap();
        assert_eq!(t.year(), 2025);
        // Other programs, and lines that are not logs, are nobody's failure.
        assert_eq!(f.failure(&format!("Nov 27 10:01:02 host sudo[1]: {m}")), None);
        assert_eq!(f.failure(m), None);
        assert_eq!(f.failure(""), None);
    }

    #[test]
    fn modes_choose_the_families() {
        let ddos = "Nov 27 10:01:02 h sshd[1]: Did not receive identification string from 198.51.100.1 port 5000";
        let extra = "Nov 27 10:01:02 h sshd[1]: Unable to negotiate with 198.51.100.2 port 5000: no matching key exchange method found. Their offer: diffie-hellman-group1-sha1 [preauth]";
        let normal = "Nov 27 10:01:02 h sshd[1]: Failed password for root from 198.51.100.3 port 5000 ssh2";
        let penalty = "Nov 27 10:01:02 h sshd[1]: drop connection #3 from [198.51.100.4]:5000 on [192.0.2.1]:22 penalty: failed authentication";
        let cases = [
            (Mode::Normal, [false, false, true, true]),
            (Mode::Ddos, [true, false, false, true]),
            (Mode::Extra, [false, true, false, true]),
            (Mode::Aggressive, [true, true, true, true]),
        ];
        for (mode, want) in cases {
            let got: Vec<bool> =
                [ddos, extra, normal, penalty].iter().map(|l| filter(mode).failure(l).is_some()).collect();
            assert_eq!(got, want, "{mode:?}");
        }
    }

    #[test]
    fn a_user_name_never_names_the_address() {
        // sshd logs the user name as the client sent it: anything may stand there.
        for user in ["1.2.3.4", "x from 1.2.3.4 port 22", "x from 1.2.3.4", "from 1.2.3.4 port 22 ssh2", "a port 1"] {
            for line in [
                format!("Nov 27 10:01:02 h sshd[1]: Invalid user {user} from 198.51.100.9 port 4711"),
                format!(
                    "Nov 27 10:01:02 h sshd[1]: Failed password for invalid user {user} from 198.51.100.9 port 4711 ssh2"
                ),
                format!(
                    "Nov 27 10:01:02 h sshd[1]: User {user} from 198.51.100.9 not allowed because not listed in AllowUsers"
                ),
                format!(
                    "Nov 27 10:01:02 h sshd[1]: Connection closed by invalid user {user} 198.51.100.9 port 4711 [preauth]"
                ),
            ] {
                assert_eq!(ip(&line, Mode::Aggressive).as_deref(), Some("198.51.100.9"), "{line}");
            }
        }
        // A line that ends in an injected address after the real one is no match at all.
        let forged = "Nov 27 10:01:02 h sshd[1]: Invalid user x from 198.51.100.9 port 4711 from 1.2.3.4";
        assert_eq!(ip(forged, Mode::Aggressive), None);
    }
}

#[cfg(test)]
mod sample_log {
    use super::*;

    /// tests/data/sshd/auth.log: every message form, each annotated with whom it blames.
    #[test]
    fn every_annotated_line_blames_whom_its_annotation_says_in_the_modes_it_names() {
        let text = include_str!("../../tests/data/sshd/auth.log");
        let now =
            OffsetDateTime::parse("2026-11-27T12:00:00Z", &time::format_description::well_known::Rfc3339).unwrap();
        let mut checked = 0;
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(note) = line.strip_prefix("#= ") else { continue };
            let (want_ip, family) = note.split_once(' ').unwrap();
            let logged = lines.next().unwrap();
            for mode in [Mode::Normal, Mode::Ddos, Mode::Extra, Mode::Aggressive] {
                let counts = match family {
                    "-" => false,
                    "any" => true,
                    f => mode == Mode::Aggressive || format!("{mode:?}").eq_ignore_ascii_case(f),
                };
                let got = Filter::new(mode, now).failure(logged).map(|f| f.ip.to_string());
                let want = counts.then(|| want_ip.to_string());
                assert_eq!(got, want, "{mode:?}: {logged}");
            }
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} annotated lines");
    }
}

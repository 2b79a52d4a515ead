//! What the soak saw: samples of the gateways' memory and descriptors while it runs, and the
//! report at the end (Markdown, printed and written to `report.md` in the soak's directory).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::setup::{Env, NODES};
use crate::{Log, Rec};

/// Seconds after a node fault ends in which its errors are still its own (a node restarted is
/// probed back in; requests already sent to it fail).
const GRACE: f64 = 5.0;

/// A class's requests, errors in a fault's window, other errors, and each error's count.
type Tally = (usize, usize, usize, BTreeMap<String, usize>);

#[derive(Debug, Clone, Default)]
pub struct Sample {
    at: f64,
    /// Per gateway (plain, tls): resident KiB and open descriptors; `None` once it is gone.
    gateways: Vec<Option<(u64, usize)>>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The gateways' RSS and descriptors every 10 s until the deadline.
pub async fn sample(env: Arc<Env>, log: Arc<Log>, deadline: Instant) -> Vec<Sample> {
    let mut out = Vec::new();
    loop {
        let alive = env
            .gateway_pids()
            .into_iter()
            .zip(env.gateways_alive())
            .map(|(pid, alive)| if alive { rss_kib(pid).zip(fds(pid)) } else { None });
        out.push(Sample { at: log.now(), gateways: alive.collect() });
        if Instant::now() + Duration::from_secs(10) > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Digits and addresses masked, so that log lines of one kind group together.
fn shape(message: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out.chars().take(160).collect()
}

pub async fn write(env: &Env, log: &Log, samples: &[Sample], minutes: f64) -> i32 {
    let records = log.records.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let faults = log.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let submitted = log.submitted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let certs = log.certs.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut r = String::new();
    let mut failed = Vec::new();

    // The fault an error falls in, if one excuses it.
    let excuse = |rec: &Rec| -> Option<String> {
        faults.iter().find_map(|(start, end, name, may_fail)| {
            let node_fault = *may_fail && rec.at >= *start && rec.at <= end + GRACE;
            let banned = rec.class == "banned-client"
                && name.ends_with("banned")
                && rec.at >= start - 1.0
                && rec.at <= end + 3.0;
            (node_fault || banned).then(|| name.clone())
        })
    };
    let attack = |rec: &Rec| rec.class.starts_with("attack-");

    let total = records.len();
    let _ = writeln!(r, "# bench/soak: {minutes} minutes\n");
    let _ = writeln!(
        r,
        "{total} requests and messages ({:.0} a second), two gateways (plain h1/h2c, HTTPS h1/h2) sharing Redis, {NODES} testnodes, {} faults run.\n",
        total as f64 / (minutes * 60.0),
        faults.len()
    );

    // By class.
    let mut classes: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut unexplained: Vec<&Rec> = Vec::new();
    let mut by_fault: BTreeMap<String, usize> = BTreeMap::new();
    for rec in &records {
        let c = classes.entry(rec.class).or_default();
        c.0 += 1;
        if rec.ok {
            continue;
        }
        *c.3.entry(rec.outcome.clone()).or_default() += 1;
        match excuse(rec) {
            Some(f) => {
                c.1 += 1;
                *by_fault.entry(f).or_default() += 1;
            }
            None if attack(rec) => c.2 += 1,
            None => {
                c.2 += 1;
                unexplained.push(rec);
            }
        }
    }
    let _ = writeln!(r, "## Outcomes by class\n");
    let _ = writeln!(r, "| class | requests | ok | errors in a fault's window | other errors | what went wrong |");
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---|");
    for (class, (n, excused, other, kinds)) in &classes {
        let mut kinds: Vec<_> = kinds.iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(*k.1));
        let what = kinds.iter().take(4).map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join("; ");
        let ok = n - excused - other;
        let _ = writeln!(r, "| {class} | {n} | {ok} | {excused} | {other} | {} |", what.replace('|', "/"));
    }
    let _ =
        writeln!(r, "\nAttackers' (`attack-*`) \"other errors\" are attacks the gateway did not answer as it should.");

    let _ = writeln!(r, "\n## Errors not caused by a fault: {} (goal: 0)\n", unexplained.len());
    for rec in unexplained.iter().take(20) {
        let _ = writeln!(r, "- {:.1} s, {}: {} ({:.0} ms)", rec.at, rec.class, rec.outcome, rec.latency_ms);
    }
    if !unexplained.is_empty() {
        failed.push(format!("{} errors not caused by a fault", unexplained.len()));
    }
    let attacks_missed: usize = records.iter().filter(|r| attack(r) && !r.ok && excuse(r).is_none()).count();
    if attacks_missed > 0 {
        failed.push(format!("{attacks_missed} attacks not answered as they should be"));
    }

    let _ = writeln!(r, "\n## Errors in faults' windows (and {GRACE} s after)\n");
    if by_fault.is_empty() {
        let _ = writeln!(r, "None.");
    }
    for (f, n) in &by_fault {
        let _ = writeln!(r, "- {f}: {n}");
    }
    let _ = writeln!(r, "\nFaults run:");
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, name, _) in &faults {
        *names.entry(name).or_default() += 1;
    }
    for (name, n) in names {
        let _ = writeln!(r, "- {name} x{n}");
    }

    // Submissions: each at most once at the nodes, and none answered 200 but missing.
    let mut logged: HashMap<String, usize> = HashMap::new();
    for i in 0..NODES {
        let text = std::fs::read_to_string(env.dir.join(format!("submitted-n{i}.log"))).unwrap_or_default();
        for line in text.lines() {
            *logged.entry(line.to_owned()).or_default() += 1;
        }
    }
    let answered = submitted.iter().filter(|(_, ok)| *ok).count();
    let twice: Vec<_> = logged.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<_> = submitted.iter().filter(|(tx, ok)| *ok && !logged.contains_key(tx)).collect();
    let _ = writeln!(r, "\n## Submissions (POST iota_executeTransactionBlock)\n");
    let _ = writeln!(
        r,
        "Sent {}, answered 200 {answered}, reached a node {}; reached a node more than once: {} (goal: 0); answered 200 but never reached a node: {} (goal: 0).",
        submitted.len(),
        logged.len(),
        twice.len(),
        lost.len()
    );
    if !twice.is_empty() {
        failed.push(format!("{} submissions reached a node twice", twice.len()));
    }
    if !lost.is_empty() {
        failed.push(format!("{} submissions answered 200 never reached a node", lost.len()));
    }

    // Latency over time, well-behaved clients' successes.
    let _ = writeln!(r, "\n## Latency of well-behaved requests over time (ms)\n");
    let _ = writeln!(r, "| from s | requests | p50 | p99 | max | faults in the window |");
    let _ = writeln!(r, "|---:|---:|---:|---:|---:|---|");
    let window = 30.0;
    let end = records.iter().map(|r| r.at).fold(0.0, f64::max);
    let mut from = 0.0;
    while from < end {
        let mut lat: Vec<f64> = records
            .iter()
            .filter(|r| r.ok && !attack(r) && r.at >= from && r.at < from + window)
            .map(|r| r.latency_ms)
            .collect();
        lat.sort_by(f64::total_cmp);
        let active: Vec<&str> = faults
            .iter()
            .filter(|(s, e, _, _)| *s < from + window && *e >= from)
            .map(|(_, _, n, _)| n.as_str())
            .filter(|n| !n.starts_with("reload"))
            .collect();
        let _ = writeln!(
            r,
            "| {from:.0} | {} | {:.1} | {:.1} | {:.1} | {} |",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0),
            active.join(", ")
        );
        from += window;
    }

    // Memory and descriptors.
    let _ = writeln!(r, "\n## Gateways' memory and open descriptors, every 10 s\n");
    let _ = writeln!(r, "| s | plain RSS MiB | plain fds | https RSS MiB | https fds |");
    let _ = writeln!(r, "|---:|---:|---:|---:|---:|");
    let cell = |g: &Option<(u64, usize)>| match g {
        Some((rss, fds)) => (format!("{:.1}", *rss as f64 / 1024.0), fds.to_string()),
        None => ("gone".into(), "gone".into()),
    };
    for s in samples {
        let (a, b) = (cell(s.gateways.first().unwrap_or(&None)), cell(s.gateways.get(1).unwrap_or(&None)));
        let _ = writeln!(r, "| {:.0} | {} | {} | {} | {} |", s.at, a.0, a.1, b.0, b.1);
    }
    // Flat after warm-up: the median of the run's last third against the median of the third
    // after the first minute (single samples swing with the allocator's returns to the system).
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied()
    };
    let end = samples.last().map_or(0.0, |s| s.at);
    let third = (end - 60.0) / 3.0;
    for (i, name) in ["plain", "https"].iter().enumerate() {
        if samples.iter().any(|s| !matches!(s.gateways.get(i), Some(Some(_)))) {
            failed.push(format!("the {name} gateway died"));
            continue;
        }
        let of = |from: f64, to: f64, what: fn(&(u64, usize)) -> f64| {
            let mut xs: Vec<f64> = samples
                .iter()
                .filter(|s| s.at >= from && s.at <= to)
                .filter_map(|s| s.gateways.get(i).copied().flatten())
                .map(|g| what(&g))
                .collect();
            median(&mut xs)
        };
        let rss = |g: &(u64, usize)| g.0 as f64 / 1024.0;
        let fds = |g: &(u64, usize)| g.1 as f64;
        let peak =
            samples.iter().filter_map(|s| s.gateways.get(i).copied().flatten()).map(|g| rss(&g)).fold(0.0, f64::max);
        let (Some(early), Some(late), Some(early_fd), Some(late_fd)) = (
            of(60.0, 60.0 + third, rss),
            of(end - third, end, rss),
            of(60.0, 60.0 + third, fds),
            of(end - third, end, fds),
        ) else {
            continue;
        };
        let growth = (late - early) / early * 100.0;
        let _ = writeln!(
            r,
            "\n{name}: median RSS {early:.1} MiB from 60 s to {:.0} s, {late:.1} MiB in the last third ({growth:+.1}%), peak {peak:.1} MiB; median descriptors {early_fd:.0} then {late_fd:.0}.",
            60.0 + third
        );
        // Judged on runs long enough to have a warm-up and a trend (three minutes or more).
        if minutes >= 3.0 && growth > 25.0 {
            failed.push(format!("the {name} gateway's RSS grew {growth:.0}% after warm-up"));
        }
        if minutes >= 3.0 && late_fd > early_fd + 32.0 {
            failed.push(format!("the {name} gateway's descriptors grew from {early_fd:.0} to {late_fd:.0}"));
        }
    }
    if env.gateways_alive().iter().any(|a| !a) {
        failed.push("a gateway exited".into());
    }

    let _ = writeln!(
        r,
        "\n## Certificates\n\nHTTPS clients were shown {certs} distinct certificates (one at the start, one a renewal)."
    );

    // Log lines at warn and above, grouped.
    let _ = writeln!(r, "\n## Gateways' log lines at warn or above, grouped\n");
    let mut groups: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    for name in ["plain", "tls"] {
        let text = std::fs::read_to_string(env.dir.join(format!("{name}.log"))).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                // A line that is not JSON (a panic's message) is kept whole.
                let g = groups.entry((format!("{name} (not JSON)"), shape(line))).or_insert((0, line.to_owned()));
                g.0 += 1;
                continue;
            };
            let level = v["level"].as_str().unwrap_or("");
            if level != "WARN" && level != "ERROR" {
                continue;
            }
            let message = v["message"].as_str().or(v["fields"]["message"].as_str()).unwrap_or("").to_owned();
            let target = v["target"].as_str().unwrap_or("");
            let g = groups.entry((format!("{name} {level} {target}"), shape(&message))).or_insert((0, line.to_owned()));
            g.0 += 1;
        }
    }
    if groups.is_empty() {
        let _ = writeln!(r, "None.");
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.0));
    for ((source, _), (n, example)) in groups {
        let example: String = example.chars().take(300).collect();
        let _ = writeln!(r, "- {n} x {source}: `{}`", example.replace('`', "'"));
    }

    let _ = writeln!(r, "\n## Verdict\n");
    if failed.is_empty() {
        let _ = writeln!(
            r,
            "Passed: no error outside a fault's window, every attack answered as it should be, every submission at most once and none lost, both gateways up with memory and descriptors flat."
        );
    } else {
        let _ = writeln!(r, "Failed: {}.", failed.join("; "));
    }
    print!("{r}");
    let path = env.dir.join("report.md");
    if let Err(e) = std::fs::write(&path, &r) {
        eprintln!("soak: cannot write {}: {e}", path.display());
    } else {
        eprintln!("soak: report in {}", path.display());
    }
    i32::from(!failed.is_empty())
}

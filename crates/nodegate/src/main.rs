//! The `nodegate` command: run, check, demo, key, cert, filter, bans, audit, firewall.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nodegate::pipeline::auth;
use nodegate::{Config, Gateway, demo, logging};

/// mimalloc instead of glibc's malloc: under bench/soak glibc's per-thread arenas kept growing the
/// resident set in steps (19 -> 38 MiB in ten minutes for a gateway whose heap, with one arena,
/// stayed at 21 MiB), and mimalloc spends fewer instructions a request (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "A security gateway for distributed-ledger nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The man page (roff), for packaging: `nodegate manpage | gzip > nodegate.1.gz`.
    #[command(hide = true)]
    Manpage,
    /// Run the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; errors are printed as FILE:LINE:COLUMN: key: message.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// API keys: `key new` prints a fresh key and the hash to put in [[api_key]]; `key hash KEY`
    /// (or the key on standard input) prints a key's hash.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Certificates: `cert self-signed` writes a development certificate and key (PEM) for [tls].
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Log filters, as fail2ban-regex: `filter sshd FILE` prints each line that is a client's
    /// failure, and a summary on standard error.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// Bans in the running gateway (through its admin listener): list, add, remove, why.
    Bans {
        /// The config whose `[admin] listen` to reach.
        #[arg(long, short, default_value = "/etc/nodegate/nodegate.toml")]
        config: PathBuf,
        /// The admin listener's address (instead of reading the config).
        #[arg(long)]
        admin: Option<SocketAddr>,
        #[command(subcommand)]
        command: BansCommand,
    },
    /// What this host exposes, in node terms: listening sockets and their processes, node ports
    /// that must not face the internet, sshd's settings, Docker's published ports, the firewall.
    /// Exit 0 clean, 1 warnings, 2 critical.
    Audit {
        /// The gateway's config: what it fronts and whom it trusts are checked too.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The sockets and the findings (id, severity, message, fix) as JSON.
        #[arg(long)]
        json: bool,
        /// Read this sshd_config instead of asking `sshd -T`.
        #[arg(long)]
        sshd_config: Option<PathBuf>,
    },
    /// An nftables ruleset (table inet nodegate) that opens only sshd, the gateway and
    /// [firewall] allow: print it, check it, or apply it with an automatic rollback.
    #[command(group(clap::ArgGroup::new("action").required(true)))]
    Firewall {
        #[arg(long, short, default_value = "/etc/nodegate/nodegate.toml")]
        config: PathBuf,
        /// Print the ruleset.
        #[arg(long, group = "action")]
        print: bool,
        /// Validate it with nft -c, changing nothing.
        #[arg(long, group = "action")]
        check: bool,
        /// Load it; the previous rules come back unless --confirm comes within --confirm-within.
        #[arg(long, group = "action")]
        apply: bool,
        /// Keep the rules just applied (run it from a new SSH session: it proves you can log in).
        #[arg(long, group = "action")]
        confirm: bool,
        #[arg(long, group = "action", hide = true)]
        guard: Option<String>,
        #[arg(long, default_value = "60s")]
        confirm_within: String,
        /// Where the previous rules and the confirmation are kept.
        #[arg(long, default_value = "/var/lib/nodegate/firewall")]
        state_dir: PathBuf,
        /// Read sshd's port from this sshd_config instead of asking `sshd -T`.
        #[arg(long)]
        sshd_config: Option<PathBuf>,
    },
    /// A first config from what this host has: the nodes on their usual local ports (iota-node 9000,
    /// Hornet 14265, Wasp 9090), sshd's log or journal for a bans jail, the admin listener on loopback
    /// with a fresh admin key (printed once). Asks nothing it can find itself.
    Init {
        /// Where to write it.
        #[arg(long, short, default_value = "/etc/nodegate/nodegate.toml")]
        output: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
        /// Ask these node URLs (repeatable) instead of the usual local ports.
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Where the gateway listens (repeatable).
        #[arg(long, default_values_t = ["0.0.0.0:8080".to_string(), "[::]:8080".to_string()])]
        listen: Vec<String>,
        /// sshd's log file; when it is absent, the journal is used if there is one.
        #[arg(long, default_value = "/var/log/auth.log")]
        sshd_log: PathBuf,
        /// Where bans are kept across restarts.
        #[arg(long, default_value = "/var/lib/nodegate")]
        state_dir: PathBuf,
    },
    /// A gateway and three simulated nodes on localhost, for a first look with no node installed.
    Demo {
        /// Where the demo gateway listens (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Stop by itself after this many seconds (0 = run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// The simulated nodes' API: iota-rebased (iota-node's JSON-RPC), iota-stardust or
        /// iota-chrysalis (Hornet's REST, with remote PoW).
        #[arg(long, value_enum, default_value = "iota-rebased")]
        profile: DemoProfile,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
// The variants are the command line's values (iota-rebased, ...): the prefix is part of the name.
#[allow(clippy::enum_variant_names)]
enum DemoProfile {
    IotaRebased,
    IotaStardust,
    IotaChrysalis,
}

#[derive(Subcommand)]
enum BansCommand {
    /// The bans in force.
    List {
        /// The admin API's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address (or an IPv6 /64 or /48) now.
    Add {
        address: String,
        /// How long: 90s, 10m, 1h, 7d...
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Remove { address: String },
    /// What led to an address's ban: the events, its expiry and escalation step.
    Why { address: String },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// sshd's log (syslog, RFC 3339 or RFC 5424 lines): which lines are a client's failure.
    Sshd {
        /// Which failures count: normal, ddos, extra or aggressive (all).
        #[arg(long, value_enum, default_value = "normal")]
        mode: nodegate::bans::sshd::Mode,
        /// One JSON object a matching line: {"line": N, "ip": "...", "time": "..." or null}.
        #[arg(long)]
        json: bool,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate (ECDSA P-256, valid until the end of next year) and its key.
    SelfSigned {
        /// DNS names or IP addresses it is for (repeat for several).
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
        #[arg(long, default_value = "cert.pem")]
        cert: PathBuf,
        #[arg(long, default_value = "key.pem")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a fresh random key and its hash.
    New,
    /// Print the hash of a key (from the argument, or the first line of standard input).
    Hash { key: Option<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Key { command: KeyCommand::New } => match auth::new_key() {
            Ok(key) => {
                println!("key:  {key}\nhash: {}", auth::hash(&key));
                println!(
                    "\nGive the key to the client; put only the hash in the config:\n[[api_key]]\nname = \"...\"\nhash = \"{}\"\nroles = [\"key\"]",
                    auth::hash(&key)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot read the system's random source: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Key { command: KeyCommand::Hash { key } } => {
            let key = key.unwrap_or_else(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                line.trim().to_owned()
            });
            if key.is_empty() {
                eprintln!("no key given");
                return ExitCode::from(2);
            }
            println!("{}", auth::hash(&key));
            ExitCode::SUCCESS
        }
        Command::Filter { command: FilterCommand::Sshd { mode, json, file } } => filter_sshd(mode, json, &file),
        Command::Audit { config, json, sshd_config } => {
            let config = match config.as_deref().map(Config::load).transpose() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let report = nodegate::host::audit::run(config.as_ref(), sshd_config.as_deref());
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.text());
            }
            ExitCode::from(report.exit_code())
        }
        Command::Firewall { config, print, check, apply, confirm, guard, confirm_within, state_dir, sshd_config } => {
            use nodegate::host::firewall;
            if let Some(id) = guard {
                return match firewall::guard(&state_dir, &id) {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                };
            }
            if confirm {
                return match firewall::confirm(&state_dir) {
                    Ok(id) => {
                        println!("confirmed: the rules of apply {id} stay");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let plan = firewall::plan(&loaded, sshd_config.as_deref());
            let script = firewall::ruleset(&plan, &config.display().to_string());
            if print {
                print!("{script}");
                return ExitCode::SUCCESS;
            }
            if let Err(e) = firewall::check(&script) {
                eprintln!("nft refused the ruleset: {e}");
                return ExitCode::FAILURE;
            }
            if check {
                println!("the ruleset is valid (nft -c): {} ports open", plan.open.len());
                return ExitCode::SUCCESS;
            }
            let _ = apply;
            let window = match nodegate::config::units::parse_duration(&confirm_within) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    eprintln!("--confirm-within: a duration such as 60s or 2m");
                    return ExitCode::from(2);
                }
            };
            match firewall::apply(&script, &state_dir, window) {
                Ok(id) => {
                    println!(
                        "applied (apply {id}). From a NEW ssh session, within {confirm_within}, run:\n  nodegate firewall --confirm --state-dir {}\nOtherwise the previous rules come back by themselves.",
                        state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bans { config, admin, command } => {
            let admin = match admin {
                Some(a) => a,
                None => match Config::load(&config) {
                    Ok(c) => match c.admin {
                        Some(a) => nodegate::admin::client::reachable(a),
                        None => {
                            eprintln!(
                                "{}: no [admin] listen: the running gateway has no admin API to ask",
                                config.display()
                            );
                            return ExitCode::from(2);
                        }
                    },
                    Err(e) => {
                        eprintln!("{e}\n(or name the admin listener with --admin ADDR)");
                        return ExitCode::from(2);
                    }
                },
            };
            runtime(1).block_on(bans_command(admin, command))
        }
        Command::Cert { command: CertCommand::SelfSigned { names, cert, key } } => {
            let (cert_pem, key_pem) = match nodegate::tls::self_signed(&names) {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("cannot make a certificate for {names:?}: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = std::fs::write(&cert, cert_pem).and_then(|()| write_private(&key, key_pem.as_bytes())) {
                eprintln!("cannot write {} / {}: {e}", cert.display(), key.display());
                return ExitCode::FAILURE;
            }
            println!(
                "wrote {} and {} for {names:?} (self-signed: for development only)

[tls]
cert = \"{}\"
key = \"{}\"",
                cert.display(),
                key.display(),
                cert.display(),
                key.display()
            );
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            use clap::CommandFactory;
            let mut out = std::io::stdout().lock();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodegate manpage: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init { output, force, nodes, listen, sshd_log, state_dir } => {
            runtime(1).block_on(init(output, force, nodes, listen, sshd_log, state_dir))
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} node(s), listening on {:?})", config.display(), c.nodes.len(), c.gateway.listen);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            logging::init(&config.log);
            let workers = config.gateway.workers;
            runtime(workers).block_on(run(config))
        }
        Command::Demo { listen, seconds, profile } => {
            logging::init(&nodegate::config::Log { format: Default::default(), access: true, level: "info".into() });
            let profile = match profile {
                DemoProfile::IotaChrysalis => nodegate::profile::Profile::IotaChrysalis,
                DemoProfile::IotaRebased => nodegate::profile::Profile::IotaRebased,
                DemoProfile::IotaStardust => nodegate::profile::Profile::IotaStardust,
            };
            runtime(0).block_on(run_demo(listen, seconds, profile))
        }
    }
}

async fn bans_command(admin: SocketAddr, command: BansCommand) -> ExitCode {
    use http::Method;
    use nodegate::admin::client::call;
    let path_of = |a: &str| format!("/bans/{}", a.replace('/', "%2F"));
    let (method, path, body) = match &command {
        BansCommand::List { .. } => (Method::GET, "/bans".to_string(), None),
        BansCommand::Add { address, duration, reason } => (
            Method::POST,
            "/bans".to_string(),
            Some(serde_json::json!({"address": address, "for": duration, "reason": reason})),
        ),
        BansCommand::Remove { address } => (Method::DELETE, path_of(address), None),
        BansCommand::Why { address } => (Method::GET, path_of(address), None),
    };
    let (status, json) = match call(admin, method, &path, body).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if status >= 400 {
        eprintln!("{} ({status})", json["error"]["message"].as_str().unwrap_or(&json.to_string()));
        return ExitCode::FAILURE;
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    match command {
        BansCommand::List { json: true } => println!("{json:#}"),
        BansCommand::List { json: false } => {
            let bans = json["bans"].as_array().cloned().unwrap_or_default();
            if bans.is_empty() {
                println!("no bans in force");
            }
            for b in bans {
                println!(
                    "{:<28} {:>8}s left  until {}  jail {}  step {}  {}",
                    text(&b["net"]),
                    text(&b["remaining_seconds"]),
                    text(&b["until"]),
                    text(&b["jail"]),
                    text(&b["step"]),
                    text(&b["reason"])
                );
            }
        }
        BansCommand::Add { .. } => println!("banned {} until {}", text(&json["net"]), text(&json["until"])),
        BansCommand::Remove { .. } => println!("ban lifted: {}", text(&json["removed"])),
        BansCommand::Why { address } => {
            if json["banned"] != serde_json::Value::Bool(true) {
                println!("{address} is not banned now");
            }
            let shown = |label: &str, b: &serde_json::Value| {
                println!(
                    "{label} {} by jail {} until {} (step {}: bans before this one), {}",
                    text(&b["net"]),
                    text(&b["jail"]),
                    text(&b["until"]),
                    text(&b["step"]),
                    text(&b["reason"])
                );
                for e in b["events"].as_array().into_iter().flatten() {
                    println!("    {}  {}", text(&e["time"]), text(&e["text"]));
                }
            };
            for b in json["bans"].as_array().into_iter().flatten() {
                shown("banned:", b);
            }
            for b in json["past"].as_array().into_iter().flatten() {
                shown("earlier:", b);
            }
        }
    }
    ExitCode::SUCCESS
}

async fn init(
    output: PathBuf,
    force: bool,
    nodes: Vec<String>,
    listen: Vec<String>,
    sshd_log: PathBuf,
    state_dir: PathBuf,
) -> ExitCode {
    use nodegate::init;
    if output.exists() && !force {
        eprintln!("nodegate init: {} exists; --force overwrites it", output.display());
        return ExitCode::FAILURE;
    }
    let candidates: Vec<String> = if nodes.is_empty() {
        init::KNOWN.iter().map(|(_, port)| format!("http://127.0.0.1:{port}")).collect()
    } else {
        nodes
    };
    let mut found = Vec::new();
    for url in &candidates {
        match init::probe(url).await {
            Some(f) => {
                println!("found: {} at {}", f.about, f.url);
                found.push(f);
            }
            None => println!("nothing that answers like a node at {url}"),
        }
    }
    let key = match auth::new_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("nodegate init: no randomness for the admin key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (log, journal) = init::sshd_source(&sshd_log);
    let setup = init::Setup {
        listen,
        admin: std::net::SocketAddr::from(([127, 0, 0, 1], init::free_admin_port(&[9090, 9191, 9292]))),
        state_dir,
        sshd_log: log,
        sshd_journal: journal,
        admin_hash: auth::hash(&key),
        written: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let text = init::config_text(&found, &setup);
    // What it writes must pass `nodegate check`; a failure here is nodegate's bug, not the host's.
    if let Err(e) = Config::parse(&text, &output.display().to_string()) {
        eprintln!("nodegate init: the config it made does not load ({e}); please report this\n{text}");
        return ExitCode::FAILURE;
    }
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("nodegate init: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // It holds the admin key's hash: readable by its owner and group only.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&output)
            .and_then(|mut f| f.write_all(text.as_bytes()))
    };
    if let Err(e) = written {
        eprintln!("nodegate init: cannot write {}: {e}", output.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {}", output.display());
    println!("admin key (shown once, only its hash is in the file): {key}");
    println!("status page: http://{}/   check: nodegate check --config {}", setup.admin, output.display());
    ExitCode::SUCCESS
}

/// Tells systemd (`NOTIFY_SOCKET`, Type=notify) how the service is; nothing without systemd.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// One worker means a current-thread runtime: no work-stealing queues or cross-thread wake-ups to
/// pay for when there is nobody to steal from. `workers = 0` (the default) is one worker per CPU
/// this process may run on (its affinity, so a gateway pinned to one CPU, or given one by its
/// container, runs one worker: the multi-thread scheduler there cost 64% more CPU a request than
/// the current-thread one, bench/RESULTS.md).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(0, |n| if n.get() == 1 { 1 } else { 0 }),
        n => n,
    };
    let mut b = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    b.enable_all().build().expect("cannot start the tokio runtime")
}

async fn run(config: Config) -> ExitCode {
    // The signal handlers first: a SIGHUP or SIGTERM that arrives before they are in place takes
    // its default action, which ends the process. systemd may send SIGHUP (a reload) the moment
    // READY is out, and scripts may signal as soon as the listening line is printed.
    let mut reloads = reload_signals();
    let stop = stop_signal();
    tokio::pin!(stop);
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts and tests started with port 0 read the bound addresses from this line.
    for addr in gateway.local_addrs() {
        println!("nodegate listening on {addr}");
    }
    // Under systemd (Type=notify): started once every listener is bound.
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
    // SIGHUP reloads the config file; a broken file keeps the running config and says why.
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = reloads.recv() => {
                // systemd shows the reload while it lasts (MONOTONIC_USEC: systemd 253's notify-reload).
                let mut reloading = vec![sd_notify::NotifyState::Reloading];
                reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                notify(&reloading);
                // The file read off the workers; success is logged by the reload itself.
                let reloader = gateway.reloader();
                let status = match tokio::task::spawn_blocking(move || reloader.reload_file()).await {
                    Ok(Err(e)) => {
                        tracing::error!("reload refused, keeping the running config: {e}");
                        "serving; the last reload was refused (see the log)"
                    }
                    _ => "serving",
                };
                notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    notify(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("draining")]);
    let code = tokio::select! {
        _ = gateway.shutdown() => ExitCode::SUCCESS,
        _ = stop_signal() => {
            tracing::warn!("second stop signal: exiting now");
            ExitCode::FAILURE
        }
    };
    // The access log's last lines are still with its writer thread.
    let _ = tokio::task::spawn_blocking(|| nodegate::access_log::flush(std::time::Duration::from_secs(2))).await;
    code
}

async fn run_demo(listen: SocketAddr, seconds: u64, profile: nodegate::profile::Profile) -> ExitCode {
    let d = match demo::start(listen, profile).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("nodegate demo: {e} (is something else on {listen}? try --listen 127.0.0.1:0)");
            return ExitCode::FAILURE;
        }
    };
    // Written, not println!: a reader that goes away (`nodegate demo | head`) must not stop the demo.
    {
        use std::io::Write;
        let text = format!("{}\n{}\n", d.show_a_ban().await, d.banner());
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        let _ = std::io::stdout().lock().flush();
    }
    if seconds > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            _ = stop_signal() => {}
        }
    } else {
        stop_signal().await;
    }
    d.stop(Duration::from_secs(3)).await;
    ExitCode::SUCCESS
}

/// SIGTERM or SIGINT, with the handlers registered now (not when the future is first polled).
fn stop_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            let (Ok(mut term), Ok(mut int)) = streams else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUPs, as a channel. Registered once at start, so a SIGHUP never falls to its default
/// action, which would kill the gateway.
fn reload_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = tx.try_send(());
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(data)
}

/// `nodegate filter sshd`: every matching line on standard output, the summary on standard error.
fn filter_sshd(mode: nodegate::bans::sshd::Mode, json: bool, path: &std::path::Path) -> ExitCode {
    use std::io::{BufRead, Write};
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let filter = nodegate::bans::sshd::Filter::new(mode, time::OffsetDateTime::now_utc());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut read, mut matched) = (0u64, 0u64);
    let mut per_rule: std::collections::BTreeMap<&'static str, u64> = std::collections::BTreeMap::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("reading {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
        read += 1;
        // A line that is not UTF-8 is read as far as it goes: sshd's own words are ASCII.
        let line = String::from_utf8_lossy(&buf);
        let Some(f) = filter.failure(&line) else { continue };
        matched += 1;
        *per_rule.entry(f.rule.name()).or_default() += 1;
        let time = f.time.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        let written = if json {
            let time = time.map_or("null".to_string(), |t| format!("\"{t}\""));
            writeln!(out, "{{\"line\": {read}, \"ip\": \"{}\", \"time\": {time}}}", f.ip)
        } else {
            writeln!(out, "{read}\t{}\t{}\t{}", f.ip, time.as_deref().unwrap_or("-"), f.rule.name())
        };
        if written.is_err() {
            return ExitCode::from(2);
        }
    }
    let _ = out.flush();
    let rules: Vec<String> = per_rule.iter().map(|(r, n)| format!("{r}={n}")).collect();
    eprintln!("lines read: {read}, matched: {matched} ({})", rules.join(", "));
    ExitCode::SUCCESS
}

//! tracing setup from `[log]`: text for people, JSON for log pipelines; `RUST_LOG` overrides the level.
//! Level and format follow a reload (`reload`), through tracing-subscriber's reload layers.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt, reload};

use crate::access_log::LogFormat;
use crate::config::Log;

/// Applies `[log] level` and `format` to the logger `init` set up.
type Apply = Box<dyn Fn(&Log) -> Result<(), String> + Send + Sync>;

static APPLY: OnceLock<Apply> = OnceLock::new();

/// The level filter: `RUST_LOG` when set, else `[log] level`.
fn filter(log: &Log) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level))
}

pub fn init(log: &Log) {
    // The access log is written by access_log.rs, decided by `[log] access` alone, not by `level`.
    let ansi = std::io::stderr().is_terminal();
    let text = move || fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let json = || fmt::layer().json().flatten_event(true).with_writer(std::io::stderr);
    let is_json = log.format == LogFormat::Json;
    // One of the two writers is on at a time; a reload can swap them.
    let (filter_layer, filter_handle) = reload::Layer::new(filter(log));
    let (text_layer, text_handle) = reload::Layer::new((!is_json).then(text));
    let (json_layer, json_handle) = reload::Layer::new(is_json.then(json));
    if tracing_subscriber::registry().with(filter_layer).with(text_layer).with(json_layer).try_init().is_err() {
        return;
    }
    let apply = move |log: &Log| {
        let is_json = log.format == LogFormat::Json;
        filter_handle.reload(filter(log)).map_err(|e| e.to_string())?;
        text_handle.reload((!is_json).then(text)).map_err(|e| e.to_string())?;
        json_handle.reload(is_json.then(json)).map_err(|e| e.to_string())
    };
    let _ = APPLY.set(Box::new(apply));
}

/// Puts a reloaded `[log] level` and `format` in force. Without `init` (nodegate embedded as a
/// library, its tests) the logger is the embedder's and nothing changes.
pub fn reload(log: &Log) -> Result<(), String> {
    match APPLY.get() {
        Some(apply) => apply(log),
        None => Ok(()),
    }
}

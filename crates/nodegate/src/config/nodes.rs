//! `[[node]]`, `[upstream]` and `[health]`: the nodes and how the gateway talks to them.

use http::Uri;
use http::uri::{Authority, Scheme};

use super::{ConfigError, Locator, raw};
use crate::balancer::NodeSettings;
use crate::health::Health;
use crate::upstream::Upstream;

pub(super) fn nodes(raw_nodes: Vec<raw::RawNode>, at: &Locator) -> Result<Vec<NodeSettings>, ConfigError> {
    if raw_nodes.is_empty() {
        return Err(at.error(
            0..0,
            Some("node".into()),
            "no [[node]] is configured: add at least one, with `name` and `url` (e.g. \"http://127.0.0.1:14265\")",
        ));
    }
    let mut nodes: Vec<NodeSettings> = Vec::with_capacity(raw_nodes.len());
    for (i, n) in raw_nodes.into_iter().enumerate() {
        let key = |field: &str| Some(format!("node[{i}].{field}"));
        let name = n.name.get_ref();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(at.error(
                n.name.span(),
                key("name"),
                format!("`{name}` must be non-empty letters, digits, `-`, `_` or `.`"),
            ));
        }
        if nodes.iter().any(|prev| prev.name == *name) {
            return Err(at.error(
                n.name.span(),
                key("name"),
                format!("duplicate node name `{name}`: each node needs its own"),
            ));
        }
        if *n.weight.get_ref() == 0 {
            return Err(at.error(
                n.weight.span(),
                key("weight"),
                "must be 1 or more (remove the node to stop using it)",
            ));
        }
        let (scheme, authority, base_path) =
            parse_node_url(n.url.get_ref()).map_err(|m| at.error(n.url.span(), key("url"), m))?;
        if *n.max_connections.get_ref() == 0 {
            return Err(at.error(n.max_connections.span(), key("max_connections"), "must be 1 or more"));
        }
        nodes.push(NodeSettings {
            name: name.clone(),
            scheme,
            authority,
            base_path,
            weight: *n.weight.get_ref(),
            pow: n.pow,
            max_connections: *n.max_connections.get_ref(),
        });
    }
    Ok(nodes)
}

pub(super) fn upstream(u: raw::RawUpstream, at: &Locator) -> Result<Upstream, ConfigError> {
    // A CA the config names is read here; the system's roots, for https:// nodes without one, are
    // loaded when the gateway starts (`Upstream::ready`): validation reads no file it was not given.
    let upstream_tls = match &u.ca {
        Some(ca) => Some(
            crate::upstream::TlsClient::new(Some(std::path::Path::new(ca.get_ref().as_str())))
                .map_err(|e| at.error(ca.span(), Some("upstream.ca".into()), e))?,
        ),
        None => None,
    };
    Ok(Upstream {
        connect_timeout: u.connect_timeout.0,
        response_timeout: u.response_timeout.0,
        pool_idle_timeout: u.pool_idle_timeout.0,
        pool_max_idle_per_node: u.pool_max_idle_per_node,
        body_timeout: u.body_timeout.0,
        queue_timeout: u.queue_timeout.0,
        tls: upstream_tls,
    })
}

pub(super) fn health(h: raw::RawHealth, at: &Locator) -> Result<Health, ConfigError> {
    for (key, v) in [
        ("health.healthy_threshold", h.healthy_threshold),
        ("health.unhealthy_threshold", h.unhealthy_threshold),
        ("health.eject_after", h.eject_after),
    ] {
        if v == 0 {
            return Err(at.error(0..0, Some(key.into()), "must be 1 or more"));
        }
    }
    if !h.path.starts_with('/') {
        return Err(at.error(0..0, Some("health.path".into()), format!("`{}` must start with /", h.path)));
    }
    Ok(Health {
        active: h.active,
        interval: h.interval.0,
        timeout: h.timeout.0,
        max_milestone_lag: h.max_milestone_lag,
        max_checkpoint_lag: h.max_checkpoint_lag,
        max_block_lag: h.max_block_lag,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
        path: h.path,
        eject_after: h.eject_after,
        eject_for: h.eject_for.0,
    })
}

fn parse_node_url(url: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| format!("`{url}` needs a scheme: http://host:port"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!("`{url}`: node URLs are http:// or https://"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| format!("`{url}` needs a host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{url}`: credentials in node URLs are not allowed"));
    }
    if authority.host().is_empty() {
        return Err(format!("`{url}` needs a host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}`: a node URL cannot have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, base_path))
}

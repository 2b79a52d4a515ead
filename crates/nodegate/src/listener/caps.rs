//! Connection caps: at most `max_connections` open client connections in all, and at most
//! `max_connections_per_client` from one address (trusted proxies exempt: a balancer carries many
//! clients). A connection over either cap is closed at accept, before any HTTP work. The table
//! only holds addresses with open connections, so the global cap bounds its size too. A reload
//! changes the caps and the exempt set for connections accepted from then on (`update`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::pipeline::ip_set::IpSet;

pub struct Caps {
    total_max: AtomicUsize,
    per_client_max: AtomicUsize,
    exempt: arc_swap::ArcSwap<IpSet>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An admitted connection; leaving the caps when dropped.
pub struct ConnSlot {
    caps: Arc<Caps>,
    ip: IpAddr,
    /// Counted in `max_connections` too (the socket's peer); a client named by a PROXY header
    /// counts under its own address only, its socket being counted already.
    in_total: bool,
}

impl Caps {
    pub fn new(total_max: usize, per_client_max: usize, exempt: IpSet) -> Arc<Caps> {
        Arc::new(Caps {
            total_max: AtomicUsize::new(total_max),
            per_client_max: AtomicUsize::new(per_client_max),
            exempt: arc_swap::ArcSwap::from_pointee(exempt),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// New caps from a reload; connections already open stay (a lower cap closes none).
    pub fn update(&self, total_max: usize, per_client_max: usize, exempt: IpSet) {
        self.total_max.store(total_max, Relaxed);
        self.per_client_max.store(per_client_max, Relaxed);
        self.exempt.store(Arc::new(exempt));
    }

    /// A slot for a new connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        self.enter(ip, true)
    }

    /// A slot for the client a PROXY header names on a connection already admitted from its
    /// balancer (which is exempt): the client's own cap applies to it all the same.
    pub fn admit_named(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        self.enter(ip, false)
    }

    fn enter(self: &Arc<Self>, ip: IpAddr, in_total: bool) -> Option<ConnSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if in_total && open.0 >= self.total_max.load(Relaxed) {
            return None;
        }
        let mine = open.1.get(&ip).copied().unwrap_or(0);
        if mine >= self.per_client_max.load(Relaxed) && !self.exempt.load().contains(ip) {
            return None;
        }
        if in_total {
            open.0 += 1;
        }
        *open.1.entry(ip).or_insert(0) += 1;
        Some(ConnSlot { caps: self.clone(), ip, in_total })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.in_total {
            open.0 -= 1;
        }
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_client_and_in_all() {
        let caps = Caps::new(4, 2, IpSet::new(&["10.0.0.1/32".parse().unwrap()]));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_none(), "per-client cap");
        assert!(caps.admit("::ffff:192.0.2.1".parse().unwrap()).is_none(), "mapped is the same client");
        let _b1 = caps.admit(b).unwrap();
        drop(a1);
        let _a3 = caps.admit(a).unwrap();
        // Trusted proxies are exempt from the per-client cap, not from the total.
        let _p1 = caps.admit("10.0.0.1".parse().unwrap()).unwrap();
        assert!(caps.admit("10.0.0.1".parse().unwrap()).is_none(), "total cap");
        assert_eq!(caps.open.lock().unwrap().1.len(), 3);
    }

    #[test]
    fn a_client_named_by_a_proxy_header_has_its_own_cap() {
        let caps = Caps::new(100, 2, IpSet::new(&["10.0.0.1/32".parse().unwrap()]));
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let _conns: Vec<_> = (0..2)
            .map(|_| (caps.admit("10.0.0.1".parse().unwrap()).unwrap(), caps.admit_named(client).unwrap()))
            .collect();
        assert!(caps.admit("10.0.0.1".parse().unwrap()).is_some(), "the balancer is exempt");
        assert!(caps.admit_named(client).is_none(), "the named client is not");
        assert_eq!(caps.open.lock().unwrap().0, 2, "named slots do not count twice in the total");
    }
}

//! Per-client cap on requests in flight (`[gateway] max_in_flight_per_client`): a client that opens
//! many HTTP/2 streams, or many connections, cannot hold more than its share of the nodes' time.
//! The table holds only clients with something in flight, so it is bounded by the requests the
//! connection caps allow; a slot frees itself when the response is done (or dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::rate_limit::ClientKey;

pub struct InFlightCap {
    max: u32,
    table: Mutex<HashMap<ClientKey, u32>>,
}

/// One request counted against its client until dropped.
pub struct InFlightSlot {
    cap: Arc<InFlightCap>,
    key: ClientKey,
}

impl InFlightCap {
    pub fn new(max: usize) -> Arc<InFlightCap> {
        Arc::new(InFlightCap { max: u32::try_from(max).unwrap_or(u32::MAX), table: Mutex::new(HashMap::new()) })
    }

    pub fn max(&self) -> usize {
        self.max as usize
    }

    /// A slot for `key`, or `None` when it already has `max` requests in flight.
    pub fn enter(self: &Arc<Self>, key: ClientKey) -> Option<InFlightSlot> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let n = table.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(InFlightSlot { cap: self.clone(), key })
    }

    /// Clients with something in flight now.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut table = self.cap.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = table.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_max_and_slots_free_themselves() {
        let cap = InFlightCap::new(2);
        let a = ClientKey::V4(1);
        let (s1, s2) = (cap.enter(a.clone()).unwrap(), cap.enter(a.clone()).unwrap());
        assert!(cap.enter(a.clone()).is_none());
        assert!(cap.enter(ClientKey::V4(2)).is_some(), "another client has its own share");
        drop(s1);
        let s3 = cap.enter(a.clone()).unwrap();
        drop((s2, s3));
        assert_eq!(cap.tracked(), 0, "a client with nothing in flight is not kept");
    }
}

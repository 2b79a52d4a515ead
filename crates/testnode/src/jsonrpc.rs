//! iota-rebased (iota-node) JSON-RPC, simulated: `POST /`, `/json-rpc`, `/public`. Batches are
//! refused as iota-node refuses them (-32005); the methods the gateway's tests use answer with
//! plausible results; others are -32601. The latest checkpoint advances with the clock (ten a
//! second), minus the node's `checkpoint_lag`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::State;

/// The checkpoint a node with no lag is at now.
fn clock_checkpoint() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64 / 100)
}

/// Answers one JSON-RPC body.
pub fn answer(state: &State, body: &[u8], probe: bool) -> Value {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return error(Value::Null, -32700, "Parse error"),
    };
    if doc.is_array() {
        return error(Value::Null, -32005, "Batched requests are not supported by this server");
    }
    let id = doc.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = doc.get("method").and_then(|m| m.as_str()) else {
        return error(id, -32600, "Invalid request");
    };
    if !probe {
        record(state, method);
    }
    let params = doc.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "iota_getLatestCheckpointSequenceNumber" => {
            json!(clock_checkpoint().saturating_sub(state.checkpoint_lag.load(Relaxed)).to_string())
        }
        "iota_getChainIdentifier" => json!("6364aad5"),
        "iota_getObject" => {
            json!({"data": {"objectId": params.get(0), "version": "1", "digest": "3vYyH3vqSNp5f7aMPS7zD1GodYTyQiKXyxbjBBgZqyHH", "owner": {"AddressOwner": "0x1"}}})
        }
        "iota_getTransactionBlock" => json!({"digest": params.get(0), "checkpoint": clock_checkpoint().to_string()}),
        "iota_executeTransactionBlock" | "iota_dryRunTransactionBlock" | "iota_devInspectTransactionBlock" => {
            state.submissions.fetch_add(1, Relaxed);
            if method == "iota_executeTransactionBlock"
                && let (Some(log), Some(tx)) = (&state.submissions_log, params.get(0).and_then(Value::as_str))
            {
                use std::io::Write;
                let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(file, "{tx}");
            }
            json!({"digest": "5nVqkVuz3ZvSfTZRfH6Bq7ZXaDZnNfk6PhsPcmHQHkSe", "effects": {"status": {"status": "success"}}})
        }
        m if m.starts_with("iotax_query") || m.starts_with("iotax_get") && m.contains("Owned") => {
            json!({"data": [], "nextCursor": null, "hasNextPage": false})
        }
        m if m.starts_with("iotax_") => json!({}),
        m if m.starts_with("unsafe_") => json!({"txBytes": "AAAA", "gas": [], "inputObjects": []}),
        "iota_tryGetObjectBeforeVersion" => json!({"status": "VersionNotFound"}),
        _ => return error(id, -32601, "Method not found"),
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Notes a method that reached this node (the newest 1,000 kept), for tests to see.
pub fn record(state: &State, method: &str) {
    let mut seen = state.rpc_methods.lock().unwrap_or_else(|e| e.into_inner());
    seen.push_back(method.to_owned());
    if seen.len() > 1000 {
        seen.pop_front();
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// IOTA EVM (Wasp) JSON-RPC, simulated: `POST /v1/chain/evm`, batches answered call by call.
pub fn answer_evm(state: &State, body: &[u8], probe: bool) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(calls)) => Value::Array(calls.iter().map(|c| evm_call(state, c, probe)).collect()),
        Ok(call) => evm_call(state, &call, probe),
        Err(_) => error(Value::Null, -32700, "Parse error"),
    }
}

fn evm_call(state: &State, call: &Value, probe: bool) -> Value {
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = call.get("method").and_then(|m| m.as_str()) else {
        return error(id, -32600, "Invalid request");
    };
    if !probe {
        record(state, method);
    }
    let block = clock_checkpoint().saturating_sub(state.checkpoint_lag.load(Relaxed));
    let result = match method {
        "eth_blockNumber" => json!(format!("{block:#x}")),
        "eth_chainId" => json!("0x2276"),
        "net_version" => json!("8822"),
        "web3_clientVersion" => json!("wasp/simulated"),
        "eth_getLogs" => json!([]),
        "eth_subscribe" => json!("0x1"),
        "eth_unsubscribe" => json!(true),
        "eth_getBalance" | "eth_call" | "eth_estimateGas" => json!("0x0"),
        "eth_sendRawTransaction" => {
            state.submissions.fetch_add(1, Relaxed);
            json!("0x5b4e1c3b1f6d8a2e9c7f0a1b2c3d4e5f60718293a4b5c6d7e8f9011223344556")
        }
        "debug_traceTransaction" | "admin_peers" | "personal_unlockAccount" => {
            json!({"simulated": "a node would answer this"})
        }
        _ => return error(id, -32601, "Method not found"),
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

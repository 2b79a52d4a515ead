//! The nodes' MQTT-over-WebSocket routes, simulated as a WebSocket echo.

use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::api::{RespBody, empty, with_status};

pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// What a WebSocket route does with the client's messages.
pub enum Serve {
    /// MQTT routes: every message back as it came.
    Echo,
    /// JSON-RPC (iota-node's `/subscribe`, Wasp's `/v1/chain/evm/ws`): each message answered as a
    /// POST would be; a subscription also gets one notification.
    JsonRpc { state: std::sync::Arc<crate::State>, evm: bool },
}

pub fn accept(req: Request<Incoming>) -> Response<RespBody> {
    accept_with(req, Serve::Echo)
}

pub fn accept_with(mut req: Request<Incoming>, serve: Serve) -> Response<RespBody> {
    let key = req.headers().get(SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())).unwrap_or_default();
    let protocol = req
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if !(msg.is_text() || msg.is_binary()) {
                continue;
            }
            let replies = match &serve {
                Serve::Echo => vec![msg],
                Serve::JsonRpc { state, evm } => {
                    let data = msg.into_data();
                    let answer = if *evm {
                        crate::jsonrpc::answer_evm(state, &data, false)
                    } else {
                        crate::jsonrpc::answer(state, &data, false)
                    };
                    let mut out = vec![Message::text(answer.to_string())];
                    let method = serde_json::from_slice::<serde_json::Value>(&data)
                        .ok()
                        .and_then(|v| v.get("method").and_then(|m| m.as_str()).map(str::to_owned))
                        .unwrap_or_default();
                    if method.contains("ubscribe") && !method.contains("nsubscribe") {
                        let note = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": {"subscription": 1, "result": {"simulated": true}}});
                        out.push(Message::text(note.to_string()));
                    }
                    out
                }
            };
            for reply in replies {
                if ws.send(reply).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut resp = with_status(StatusCode::SWITCHING_PROTOCOLS, empty());
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

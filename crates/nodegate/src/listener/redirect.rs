//! `[gateway] listen_http` beside `[tls]`: plain HTTP that only sends clients to HTTPS (308, so the
//! method and body are kept) and answers ACME HTTP-01 challenges
//! (`/.well-known/acme-challenge/<token>`). Nothing is proxied over plain HTTP.

use std::sync::Arc;

use http::header::{CONTENT_TYPE, HOST, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::body::json_error;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub struct Redirect {
    https_port: u16,
    /// ACME HTTP-01 answers, while an order asks for them.
    pub tokens: Arc<crate::tls::acme::Http01Tokens>,
}

impl Redirect {
    pub fn new(https_port: u16) -> Redirect {
        Redirect { https_port, tokens: Arc::default() }
    }

    pub fn answer<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            return match self.tokens.get(token) {
                Some(key_authorization) => {
                    let mut resp = Response::new(ProxyBody::full(key_authorization));
                    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                    resp
                }
                None => json_error(StatusCode::NOT_FOUND, "no such ACME challenge"),
            };
        }
        let Some(host) = request_host(req) else {
            return json_error(StatusCode::BAD_REQUEST, "a redirect to HTTPS needs a valid Host header");
        };
        let port = if self.https_port == 443 { String::new() } else { format!(":{}", self.https_port) };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{port}{target}");
        let Ok(location) = HeaderValue::from_str(&location) else {
            return json_error(StatusCode::BAD_REQUEST, "the request target cannot be redirected");
        };
        let mut resp = json_error(StatusCode::PERMANENT_REDIRECT, "this gateway is served over HTTPS");
        resp.headers_mut().insert(LOCATION, location);
        resp
    }
}

/// The request's host without its port, if it is a plain DNS name or IP address: anything else
/// (userinfo, odd characters) could turn the redirect into one to somewhere else.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req.headers().get(HOST)?.to_str().ok()?.to_owned(),
    };
    let authority: http::uri::Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        && host.len() <= 253;
    ok.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(r: &Redirect, host: &str, target: &str) -> Response<ProxyBody> {
        r.answer(&Request::builder().uri(target).header(HOST, host).body(()).unwrap())
    }

    #[test]
    fn redirects_keep_path_and_query_and_refuse_odd_hosts() {
        let r = Redirect::new(8443);
        let resp = answer(&r, "Node.Example:80", "/api/v1/info?x=1");
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(resp.headers()[LOCATION], "https://node.example:8443/api/v1/info?x=1");
        let r443 = Redirect::new(443);
        assert_eq!(answer(&r443, "[2001:db8::1]:80", "/").headers()[LOCATION], "https://[2001:db8::1]/");
        for bad in ["evil.example/x", "a@evil.example", "", "exa mple"] {
            assert_eq!(answer(&r, bad, "/").status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        r.tokens.challenges.lock().unwrap().insert("tok".into(), "tok.thumb".into());
        assert_eq!(answer(&r, "node.example", "/.well-known/acme-challenge/tok").status(), StatusCode::OK);
        assert_eq!(answer(&r, "node.example", "/.well-known/acme-challenge/other").status(), StatusCode::NOT_FOUND);
    }
}

//! Small HTTP pieces every layer above uses: header hygiene and forwarding headers, and the
//! client's request body with its guards.

pub mod headers;
pub mod request_body;

//! The request head as the gateway prepares it before deciding: the request id, the host, the
//! local port, and the control headers only a gateway may set, removed.

use std::borrow::Cow;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::context::RequestCtx;
use super::decide::Head;
use crate::headers::{self, ClientHints};

/// Remove the control headers and client hints a client sent (returning the hints, which the
/// decision reads) and make `x-request-id` carry `request_id`.
pub fn prepare(header: &mut RequestHeader, request_id: &str) -> pingora::Result<ClientHints> {
    // Control headers and hints all start with `x-gateway-` or `x-llm-d-`; most requests carry
    // none, so look once.
    let steered = header.headers.keys().any(|name| {
        headers::PREFIXES
            .iter()
            .any(|prefix| name.as_str().starts_with(prefix))
    });
    let mut hints = ClientHints::default();
    if steered {
        hints = ClientHints::read(&header.headers);
        for name in headers::removed_from_clients() {
            header.remove_header(name);
        }
    }
    let current = header
        .headers
        .get(headers::REQUEST_ID)
        .map(|v| v.as_bytes());
    if current != Some(request_id.as_bytes()) {
        header.insert_header(headers::REQUEST_ID, request_id)?;
    }
    Ok(hints)
}

/// The client's request id if it sent a reasonable one (1 to 128 visible characters), else a new
/// one.
pub fn request_id(header: &RequestHeader) -> String {
    header
        .headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(new_request_id, str::to_owned)
}

/// 128 random bits as 32 lowercase hex digits.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    id.iter().map(|&b| char::from(b)).collect()
}

/// The local port the request arrived on (0 when unknown).
pub fn local_port(session: &Session) -> u16 {
    session
        .as_downstream()
        .server_addr()
        .and_then(|a| a.as_inet())
        .map_or(0, |a| a.port())
}

/// The request's host, lowercase, without a port: the `Host` header, else the URI's authority.
/// Borrowed when it is lowercase already, as clients send it.
pub fn host(header: &RequestHeader) -> Option<Cow<'_, str>> {
    let host = header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))?;
    // Strip a port, keeping IPv6 literals (`[::1]:8080`) intact.
    let host = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map_or(host, |(inner, _)| &host[..inner.len() + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The decision's view of a request `header` that arrived on `port`.
pub fn view<'a>(
    header: &'a RequestHeader,
    port: u16,
    host: Option<&'a str>,
    has_body: bool,
    ctx: &'a RequestCtx,
) -> Head<'a> {
    Head {
        port,
        host,
        method: &header.method,
        path: header.uri.path(),
        query: header.uri.query(),
        headers: &header.headers,
        has_body,
        request_id: &ctx.request_id,
        hints: &ctx.hints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position takes more than one value (no fixed padding).
        for position in 0..32 {
            let values: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.as_bytes()[position]).collect();
            assert!(values.len() > 1, "digit {position} never changes");
        }
    }

    #[test]
    fn control_headers_are_stripped_and_the_request_id_set() {
        let mut header = RequestHeader::build("POST", b"/v1/completions", None).unwrap();
        header
            .insert_header("x-gateway-destination-endpoint", "10.0.0.9:8000")
            .unwrap();
        header.insert_header(headers::MODEL_NAME, "m").unwrap();
        header.insert_header("x-gateway-other", "kept").unwrap();
        header.insert_header("host", "Example.COM:8081").unwrap();
        header
            .insert_header("x-gateway-inference-objective", "batch")
            .unwrap();
        header
            .insert_header("x-llm-d-inference-objective", "chat")
            .unwrap();
        header
            .insert_header("x-gateway-model-name-rewrite", "adapter")
            .unwrap();
        let hints = prepare(&mut header, "abc").unwrap();
        assert_eq!(hints.objective.as_deref(), Some("chat"));
        assert_eq!(hints.model_rewrite.as_deref(), Some("adapter"));
        for name in headers::CONTROL {
            assert!(header.headers.get(name).is_none(), "{name}");
        }
        for hint in headers::CLIENT_HINTS {
            assert!(header.headers.get(hint.name).is_none(), "{}", hint.name);
            assert!(header.headers.get(hint.alias).is_none(), "{}", hint.alias);
        }
        assert_eq!(header.headers["x-gateway-other"], "kept");
        assert_eq!(header.headers[headers::REQUEST_ID], "abc");
        assert_eq!(request_id(&header), "abc");
        assert_eq!(host(&header).as_deref(), Some("example.com"));
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        header.insert_header("host", "[::1]:8080").unwrap();
        assert_eq!(host(&header).as_deref(), Some("[::1]"));
    }
}

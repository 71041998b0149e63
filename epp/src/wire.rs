//! The endpoint-picker protocol's names and encodings on top of Envoy's ext_proc messages: header,
//! metadata and key names, the destination list format, header maps with `raw_value` bytes and the
//! `google.protobuf.Struct` shapes the protocol puts into metadata.
//!
//! Both sides build and read messages through these helpers so that they agree by construction on
//! every name. This module is pure conversion: it must not do I/O, hold state or decide policy
//! (which header wins, what a missing value means) beyond reporting what a message holds.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

use crate::error::PickError;

/// Request header (and `envoy.lb` metadata key) carrying the chosen endpoints:
/// `ip:port[,ip:port...]`, the first the primary and the rest the fallback list.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// `envoy.lb` metadata key with a single fallback endpoint (an older form of the fallback list).
pub const DESTINATION_FALLBACK_KEY: &str = "x-gateway-destination-endpoint-fallback";
/// Dynamic-metadata namespace of the destination and of the served endpoint.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// Filter-metadata namespace of the proxy's subset hint.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key in [`SUBSET_NAMESPACE`]: a list of `ip:port` strings the picker must choose from.
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// Key in [`LB_NAMESPACE`] on `response_headers`: the endpoint that served the request.
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";
/// Response header a picker may set on a rejection to say why the request was dropped.
pub const DROPPED_REASON_HEADER: &str = "x-llm-d-request-dropped-reason";
/// Largest request-body chunk the client sends (what Envoy sends).
pub const CLIENT_CHUNK_BYTES: usize = 64 * 1024;
/// Largest body chunk the server streams back (what the Inference Extension's EPP sends).
pub const SERVER_CHUNK_BYTES: usize = 62_000;
/// Health service names an EPP reports SERVING.
pub const HEALTH_SERVICES: [&str; 4] = [
    "",
    "liveness",
    "readiness",
    "envoy.service.ext_proc.v3.ExternalProcessor",
];
/// Conventional ext_proc port of an EPP.
pub const DEFAULT_EXT_PROC_PORT: u16 = 9002;
/// Conventional gRPC health port of an EPP.
pub const DEFAULT_HEALTH_PORT: u16 = 9003;

/// Formats destinations as the protocol carries them: `ip:port` joined by commas, IPv6 bracketed.
pub fn format_destinations(destinations: &[SocketAddr]) -> String {
    let mut out = String::new();
    for (i, addr) in destinations.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&addr.to_string());
    }
    out
}

/// Parses a destination value: comma-separated `ip:port` entries (IPv6 as `[addr]:port`),
/// whitespace around entries and empty entries ignored. Order is kept: the first is the primary.
///
/// A value with no entry, or any entry that is not a socket address, is an error naming it.
pub fn parse_destinations(value: &str) -> Result<Vec<SocketAddr>, PickError> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<SocketAddr>() {
            Ok(addr) => out.push(addr),
            Err(_) => {
                return Err(PickError::Destination {
                    entry: entry.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(PickError::Destination {
            entry: String::new(),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

/// True for HTTP/2 pseudo-header names (`:method`, `:path`, ...).
pub fn is_pseudo(name: &str) -> bool {
    name.starts_with(':')
}

/// True for headers that describe one hop's framing and must not be copied from a picker's answer
/// onto the upstream request (the proxy frames the body it sends itself).
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A header map as Envoy sends it: names lower-cased, values in `raw_value`.
pub(crate) fn header_map(headers: &[(String, Bytes)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(name, value)| HeaderValue {
                key: name.to_ascii_lowercase(),
                value: String::new(),
                raw_value: value.to_vec(),
            })
            .collect(),
    }
}

/// A header's value: `raw_value` when set, else the string `value` (older senders).
pub(crate) fn header_value(header: &HeaderValue) -> Bytes {
    if header.raw_value.is_empty() {
        Bytes::from(header.value.clone())
    } else {
        Bytes::from(header.raw_value.clone())
    }
}

/// The headers of a map as `(lower-cased name, value)` pairs, in order.
pub(crate) fn header_pairs(map: Option<&HeaderMap>) -> Vec<(String, Bytes)> {
    map.map(|m| {
        m.headers
            .iter()
            .map(|h| (h.key.to_ascii_lowercase(), header_value(h)))
            .collect()
    })
    .unwrap_or_default()
}

/// A `set_headers` entry with the value in `raw_value`.
pub(crate) fn set_header(name: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: String::new(),
            raw_value: value.to_vec(),
        }),
        ..Default::default()
    }
}

pub(crate) fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn list_value<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue {
            values: items.into_iter().map(string_value).collect(),
        })),
    }
}

fn struct_of(key: &str, value: Value) -> Struct {
    Struct {
        fields: HashMap::from([(key.to_owned(), value)]),
    }
}

/// The string under `key`, if it is a string.
pub(crate) fn struct_string<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// The strings under `key`: a list of strings (non-strings skipped), or one comma-separated string.
fn struct_string_list(s: &Struct, key: &str) -> Option<Vec<String>> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::ListValue(list) => Some(
            list.values
                .iter()
                .filter_map(|v| match v.kind.as_ref() {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        Kind::StringValue(v) => Some(
            v.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// Request metadata carrying the subset hint `envoy.lb.subset_hint` / [`SUBSET_KEY`].
pub(crate) fn subset_metadata(subset: &[String]) -> Metadata {
    let hint = struct_of(SUBSET_KEY, list_value(subset.iter().map(String::as_str)));
    Metadata {
        filter_metadata: HashMap::from([(SUBSET_NAMESPACE.to_owned(), hint)]),
        ..Default::default()
    }
}

/// The subset hint of a request-direction message, if it carries one (an empty list is a hint too).
pub(crate) fn read_subset(metadata: Option<&Metadata>) -> Option<Vec<String>> {
    struct_string_list(metadata?.filter_metadata.get(SUBSET_NAMESPACE)?, SUBSET_KEY)
}

/// Response metadata reporting the served endpoint: `envoy.lb` / [`SERVED_KEY`].
pub(crate) fn served_metadata(served: SocketAddr) -> Metadata {
    let lb = struct_of(SERVED_KEY, string_value(&served.to_string()));
    Metadata {
        filter_metadata: HashMap::from([(LB_NAMESPACE.to_owned(), lb)]),
        ..Default::default()
    }
}

/// The served endpoint reported on `response_headers`, as sent.
pub(crate) fn read_served(metadata: Option<&Metadata>) -> Option<String> {
    struct_string(metadata?.filter_metadata.get(LB_NAMESPACE)?, SERVED_KEY).map(str::to_owned)
}

/// Dynamic metadata announcing the destination: `{"envoy.lb": {DESTINATION_HEADER: value}}`.
pub(crate) fn destination_metadata(value: &str) -> Struct {
    let lb = struct_of(DESTINATION_HEADER, string_value(value));
    struct_of(
        LB_NAMESPACE,
        Value {
            kind: Some(Kind::StructValue(lb)),
        },
    )
}

/// The destination in dynamic metadata: the `envoy.lb` destination value, with the single
/// [`DESTINATION_FALLBACK_KEY`] entry appended when present.
pub(crate) fn read_destination_metadata(metadata: Option<&Struct>) -> Option<String> {
    let lb = match metadata?.fields.get(LB_NAMESPACE)?.kind.as_ref()? {
        Kind::StructValue(lb) => lb,
        _ => return None,
    };
    let primary = struct_string(lb, DESTINATION_HEADER)?;
    match struct_string(lb, DESTINATION_FALLBACK_KEY).filter(|f| !f.trim().is_empty()) {
        Some(fallback) => Some(format!("{primary},{fallback}")),
        None => Some(primary.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn destinations_keep_order_and_accept_ipv6_and_spaces() {
        let parsed = parse_destinations("10.0.0.1:8000, [fd00::1]:8001,10.0.0.2:9000").unwrap();
        assert_eq!(
            parsed,
            vec![
                addr("10.0.0.1:8000"),
                addr("[fd00::1]:8001"),
                addr("10.0.0.2:9000")
            ]
        );
        assert_eq!(
            parse_destinations("10.0.0.1:8000,").unwrap(),
            vec![addr("10.0.0.1:8000")]
        );
    }

    #[test]
    fn bad_destinations_name_the_entry() {
        for (value, entry) in [
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.1:8000,pod-a:8000", "pod-a:8000"),
            ("fd00::1:8000", "fd00::1:8000"),
            ("10.0.0.1:99999", "10.0.0.1:99999"),
            ("", ""),
            (" , ", ""),
        ] {
            match parse_destinations(value) {
                Err(PickError::Destination { entry: e, value: v }) => {
                    assert_eq!((e.as_str(), v.as_str()), (entry, value));
                }
                other => panic!("{value:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        let list = vec![addr("[::1]:80"), addr("127.0.0.1:8000")];
        let text = format_destinations(&list);
        assert_eq!(text, "[::1]:80,127.0.0.1:8000");
        assert_eq!(parse_destinations(&text).unwrap(), list);
    }

    #[test]
    fn destination_metadata_reads_back_with_the_optional_fallback_key() {
        let mut md = destination_metadata("10.0.0.1:8000,10.0.0.2:8000");
        assert_eq!(
            read_destination_metadata(Some(&md)).as_deref(),
            Some("10.0.0.1:8000,10.0.0.2:8000")
        );
        let Some(Kind::StructValue(lb)) = md
            .fields
            .get_mut(LB_NAMESPACE)
            .and_then(|v| v.kind.as_mut())
        else {
            panic!("no envoy.lb struct");
        };
        lb.fields.insert(
            DESTINATION_FALLBACK_KEY.into(),
            string_value("10.0.0.3:8000"),
        );
        assert_eq!(
            read_destination_metadata(Some(&md)).as_deref(),
            Some("10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000")
        );
        assert_eq!(read_destination_metadata(None), None);
        assert_eq!(read_destination_metadata(Some(&Struct::default())), None);
        // envoy.lb present but not a struct.
        let wrong = struct_of(LB_NAMESPACE, string_value("10.0.0.1:8000"));
        assert_eq!(read_destination_metadata(Some(&wrong)), None);
    }

    #[test]
    fn subset_hint_is_a_list_of_strings_and_reads_back() {
        let md = subset_metadata(&["10.0.0.1:8000".into(), "[fd00::1]:8000".into()]);
        let hint = &md.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY];
        let Some(Kind::ListValue(list)) = &hint.kind else {
            panic!("not a list: {hint:?}")
        };
        assert_eq!(list.values.len(), 2);
        assert_eq!(
            read_subset(Some(&md)),
            Some(vec!["10.0.0.1:8000".into(), "[fd00::1]:8000".into()])
        );
        assert_eq!(read_subset(Some(&subset_metadata(&[]))), Some(vec![]));
        assert_eq!(read_subset(Some(&Metadata::default())), None);
        assert_eq!(read_subset(None), None);
    }

    #[test]
    fn served_metadata_reads_back() {
        let md = served_metadata(addr("[fd00::2]:8000"));
        assert_eq!(read_served(Some(&md)).as_deref(), Some("[fd00::2]:8000"));
        assert_eq!(read_served(Some(&subset_metadata(&[]))), None);
    }

    #[test]
    fn header_maps_use_raw_value_and_read_either_field() {
        let map = header_map(&[
            (":Path".into(), Bytes::from_static(b"/v1")),
            ("X-A".into(), Bytes::from_static(b"\xff")),
        ]);
        assert_eq!(map.headers[0].key, ":path");
        assert!(map.headers[0].value.is_empty());
        assert_eq!(map.headers[1].raw_value, b"\xff");
        let mut old = map.clone();
        old.headers[0] = HeaderValue {
            key: "Content-Length".into(),
            value: "12".into(),
            raw_value: vec![],
        };
        assert_eq!(
            header_pairs(Some(&old)),
            vec![
                ("content-length".into(), Bytes::from_static(b"12")),
                ("x-a".into(), Bytes::from_static(b"\xff"))
            ]
        );
    }

    #[test]
    fn hop_by_hop_and_pseudo_names() {
        assert!(is_hop_by_hop("Content-Length"));
        assert!(is_hop_by_hop("transfer-encoding"));
        assert!(!is_hop_by_hop("content-type"));
        assert!(is_pseudo(":authority"));
        assert!(!is_pseudo("authority"));
    }
}

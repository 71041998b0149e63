//! Reading a picker's answers on the client side: the `request_headers` answer (destination,
//! header mutations), the request-body answers (the body as the picker returns it), immediate
//! responses and the `response_headers` answer.
//!
//! These functions judge one message at a time against what the client expects next and turn it
//! into the client's types or a [`PickError::Protocol`] naming what was wrong. They must not touch
//! the stream, wait or decide ordering beyond the single message they are given.

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, HeaderMutation, ImmediateResponse, ProcessingResponse, body_mutation::Mutation,
    processing_response::Response,
};

use crate::error::PickError;
use crate::wire;

/// A rejection: the picker's `ImmediateResponse`, to be sent to the proxy's client as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Immediate {
    /// HTTP status, e.g. 429 or 503.
    pub status: u16,
    /// Response headers (names lower-cased), e.g. `x-llm-d-request-dropped-reason`.
    pub headers: Vec<(String, Bytes)>,
    /// Response body.
    pub body: Bytes,
    /// The picker's `details` text (for logs, not for the client).
    pub details: String,
}

/// Header changes a picker asked for, with the noise taken out: echoes of the values sent, the
/// destination header, `content-length` and hop-by-hop headers are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    /// Regular headers to set, names lower-cased, in the picker's order; replaces any value.
    pub set_headers: Vec<(String, Bytes)>,
    /// Pseudo-headers (`:path`, `:authority`, `:status`, ...) whose value differs from what was sent.
    pub pseudo_headers: Vec<(String, Bytes)>,
    /// Headers to remove, names lower-cased (pseudo-headers dropped).
    pub remove_headers: Vec<String>,
}

/// What the `request_headers` answer said, before the body answers arrive.
#[derive(Debug)]
pub(crate) struct HeadAnswer {
    pub destinations: Vec<std::net::SocketAddr>,
    pub changes: HeaderChanges,
}

/// The first answer: a route head or a rejection.
#[derive(Debug)]
pub(crate) enum FirstAnswer {
    Head(HeadAnswer),
    Reject(Immediate),
}

/// One request-body answer applied to the body being reassembled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyStep {
    /// More chunks to come.
    More,
    /// The body is complete.
    Done,
    Reject(Immediate),
}

/// Which message kind a response is, for error texts.
pub(crate) fn kind(response: &ProcessingResponse) -> &'static str {
    match &response.response {
        None => "an empty ProcessingResponse",
        Some(Response::RequestHeaders(_)) => "a request_headers answer",
        Some(Response::ResponseHeaders(_)) => "a response_headers answer",
        Some(Response::RequestBody(_)) => "a request_body answer",
        Some(Response::ResponseBody(_)) => "a response_body answer",
        Some(Response::RequestTrailers(_)) => "a request_trailers answer",
        Some(Response::ResponseTrailers(_)) => "a response_trailers answer",
        Some(Response::ImmediateResponse(_)) => "an immediate_response",
        Some(Response::StreamedImmediateResponse(_)) => "a streamed_immediate_response",
    }
}

/// Splits a header mutation into the changes the proxy should apply.
///
/// Dropped: the destination header (surfaced as destinations), hop-by-hop and `content-length`
/// headers (the proxy frames the body itself), and any set header whose value equals the single
/// value of that name in `sent` (an echo, as the Inference Extension's EPP echoes every header).
/// Pseudo-headers go to their own list, also only when changed.
pub(crate) fn split_mutation(
    mutation: Option<&HeaderMutation>,
    sent: &[(String, Bytes)],
) -> HeaderChanges {
    let mut changes = HeaderChanges::default();
    let Some(mutation) = mutation else {
        return changes;
    };
    for option in &mutation.set_headers {
        let Some(header) = &option.header else {
            continue;
        };
        let name = header.key.to_ascii_lowercase();
        if name == wire::DESTINATION_HEADER || wire::is_hop_by_hop(&name) {
            continue;
        }
        let value = wire::header_value(header);
        let mut same_name = sent.iter().filter(|(n, _)| n.eq_ignore_ascii_case(&name));
        let echo =
            matches!((same_name.next(), same_name.next()), (Some((_, v)), None) if *v == value);
        if echo {
            continue;
        }
        if wire::is_pseudo(&name) {
            changes.pseudo_headers.push((name, value));
        } else {
            changes.set_headers.push((name, value));
        }
    }
    changes.remove_headers = mutation
        .remove_headers
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .filter(|n| !wire::is_pseudo(n))
        .collect();
    changes
}

/// Decodes an `ImmediateResponse`.
pub(crate) fn immediate(response: ImmediateResponse) -> Result<Immediate, PickError> {
    let code = response.status.map(|s| s.code).unwrap_or_default();
    let status = u16::try_from(code)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| {
            PickError::Protocol(format!("immediate_response with HTTP status {code}"))
        })?;
    let headers = response
        .headers
        .map(|m| {
            m.set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .map(|h| (h.key.to_ascii_lowercase(), wire::header_value(h)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Immediate {
        status,
        headers,
        body: Bytes::from(response.body),
        details: response.details,
    })
}

/// Reads the first answer on the stream: the `request_headers` answer or a rejection.
///
/// The destination is taken from the `x-gateway-destination-endpoint` header mutation or the
/// `envoy.lb` dynamic metadata; when both are present and differ, the header wins (as Envoy's
/// dynamic-forwarding load balancer does) and a warning is logged.
pub(crate) fn first_answer(
    response: ProcessingResponse,
    sent: &[(String, Bytes)],
) -> Result<FirstAnswer, PickError> {
    let what = kind(&response);
    let ProcessingResponse {
        dynamic_metadata,
        response,
        ..
    } = response;
    let headers = match response {
        Some(Response::RequestHeaders(headers)) => headers,
        Some(Response::ImmediateResponse(reject)) => {
            return immediate(reject).map(FirstAnswer::Reject);
        }
        _ => {
            return Err(PickError::Protocol(format!(
                "expected the request_headers answer first, got {what}"
            )));
        }
    };
    let common = headers.response.unwrap_or_default();
    let mutation = common.header_mutation.as_ref();
    let header_value = mutation.and_then(|m| {
        m.set_headers
            .iter()
            .filter_map(|o| o.header.as_ref())
            .find(|h| h.key.eq_ignore_ascii_case(wire::DESTINATION_HEADER))
            .map(|h| String::from_utf8_lossy(&wire::header_value(h)).into_owned())
    });
    let metadata_value = wire::read_destination_metadata(dynamic_metadata.as_ref());
    let value = match (header_value, metadata_value) {
        (Some(header), Some(metadata)) => {
            if header != metadata {
                tracing::warn!(%header, %metadata, "endpoint picker sent different destinations in the header and the envoy.lb metadata; using the header");
            }
            header
        }
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => {
            return Err(PickError::Protocol(format!(
                "the request_headers answer names no destination: neither the {} header nor {}/{} metadata",
                wire::DESTINATION_HEADER,
                wire::LB_NAMESPACE,
                wire::DESTINATION_HEADER
            )));
        }
    };
    let destinations = wire::parse_destinations(&value)?;
    Ok(FirstAnswer::Head(HeadAnswer {
        destinations,
        changes: split_mutation(mutation, sent),
    }))
}

/// Applies one answer received while the request body is coming back.
///
/// Accepted: `streamed_response` chunks (appended; `end_of_stream` completes the body), a whole
/// `body` replacement or `clear_body` (both complete it), and an immediate response.
pub(crate) fn body_answer(
    response: ProcessingResponse,
    body: &mut BytesMut,
) -> Result<BodyStep, PickError> {
    let what = kind(&response);
    let answer = match response.response {
        Some(Response::RequestBody(answer)) => answer,
        Some(Response::ImmediateResponse(reject)) => {
            return immediate(reject).map(BodyStep::Reject);
        }
        _ => {
            return Err(PickError::Protocol(format!(
                "expected a request_body answer, got {what}"
            )));
        }
    };
    let mutation = answer
        .response
        .and_then(|c| c.body_mutation)
        .and_then(|m: BodyMutation| m.mutation);
    match mutation {
        Some(Mutation::StreamedResponse(chunk)) => {
            body.extend_from_slice(&chunk.body);
            Ok(if chunk.end_of_stream { BodyStep::Done } else { BodyStep::More })
        }
        Some(Mutation::Body(whole)) => {
            body.clear();
            body.extend_from_slice(&whole);
            Ok(BodyStep::Done)
        }
        Some(Mutation::ClearBody(_)) => {
            body.clear();
            Ok(BodyStep::Done)
        }
        None => Err(PickError::Protocol(
            "a request_body answer without a body mutation (full-duplex streaming needs streamed_response)".into(),
        )),
    }
}

/// Reads the `response_headers` answer.
pub(crate) fn response_headers_answer(
    response: ProcessingResponse,
    sent: &[(String, Bytes)],
) -> Result<HeaderChanges, PickError> {
    let what = kind(&response);
    match response.response {
        Some(Response::ResponseHeaders(headers)) => {
            let common = headers.response.unwrap_or_default();
            Ok(split_mutation(common.header_mutation.as_ref(), sent))
        }
        _ => Err(PickError::Protocol(format!(
            "expected the response_headers answer, got {what}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ext_proc::v3::{
        BodyResponse, CommonResponse, HeadersResponse, StreamedBodyResponse,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;

    fn headers_answer(set: &[(&str, &str)], metadata: Option<&str>) -> ProcessingResponse {
        ProcessingResponse {
            dynamic_metadata: metadata.map(wire::destination_metadata),
            response: Some(Response::RequestHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: set
                            .iter()
                            .map(|(n, v)| wire::set_header(n, v.as_bytes()))
                            .collect(),
                        remove_headers: vec!["X-Drop".into(), ":path".into()],
                    }),
                    clear_route_cache: true,
                    ..Default::default()
                }),
            })),
            ..Default::default()
        }
    }

    fn sent() -> Vec<(String, Bytes)> {
        vec![
            (":path".into(), Bytes::from_static(b"/v1/chat/completions")),
            (":authority".into(), Bytes::from_static(b"localhost")),
            ("x-keep".into(), Bytes::from_static(b"same")),
        ]
    }

    fn head(answer: ProcessingResponse) -> Result<HeadAnswer, PickError> {
        match first_answer(answer, &sent())? {
            FirstAnswer::Head(head) => Ok(head),
            FirstAnswer::Reject(r) => panic!("unexpected rejection {r:?}"),
        }
    }

    #[test]
    fn destination_from_header_or_metadata_and_header_wins() {
        let by_header = head(headers_answer(
            &[("x-gateway-destination-endpoint", "10.0.0.1:80,10.0.0.2:80")],
            None,
        ))
        .unwrap();
        assert_eq!(
            by_header.destinations,
            vec![
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap()
            ]
        );
        let by_metadata = head(headers_answer(&[], Some("[fd00::1]:8000"))).unwrap();
        assert_eq!(
            by_metadata.destinations,
            vec!["[fd00::1]:8000".parse().unwrap()]
        );
        let both = head(headers_answer(
            &[("X-Gateway-Destination-Endpoint", "10.0.0.1:80")],
            Some("10.0.0.9:80"),
        ))
        .unwrap();
        assert_eq!(both.destinations, vec!["10.0.0.1:80".parse().unwrap()]);
    }

    #[test]
    fn no_or_bad_destination_is_an_error() {
        assert!(
            matches!(head(headers_answer(&[], None)), Err(PickError::Protocol(m)) if m.contains("no destination"))
        );
        assert!(matches!(
            head(headers_answer(&[("x-gateway-destination-endpoint", "pod:80")], None)),
            Err(PickError::Destination { entry, .. }) if entry == "pod:80"
        ));
    }

    #[test]
    fn header_changes_drop_echoes_framing_and_the_destination() {
        let answer = head(headers_answer(
            &[
                ("x-gateway-destination-endpoint", "10.0.0.1:80"),
                (":path", "/v1/chat/completions"),
                (":authority", "other"),
                ("Content-Length", "12"),
                ("x-keep", "same"),
                ("X-New", "v"),
            ],
            None,
        ))
        .unwrap();
        assert_eq!(
            answer.changes.set_headers,
            vec![("x-new".to_owned(), Bytes::from_static(b"v"))]
        );
        assert_eq!(
            answer.changes.pseudo_headers,
            vec![(":authority".to_owned(), Bytes::from_static(b"other"))]
        );
        assert_eq!(answer.changes.remove_headers, vec!["x-drop".to_owned()]);
    }

    #[test]
    fn body_answers_first_is_an_error_and_immediate_decodes() {
        let body_first = ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse::default())),
            ..Default::default()
        };
        assert!(
            matches!(first_answer(body_first, &[]), Err(PickError::Protocol(m)) if m.contains("request_body"))
        );
        let reject = ProcessingResponse {
            response: Some(Response::ImmediateResponse(ImmediateResponse {
                status: Some(HttpStatus { code: 429 }),
                headers: Some(HeaderMutation {
                    set_headers: vec![wire::set_header("X-Why", b"busy")],
                    ..Default::default()
                }),
                body: b"no".to_vec(),
                details: "d".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let Ok(FirstAnswer::Reject(r)) = first_answer(reject, &[]) else {
            panic!("not a rejection")
        };
        assert_eq!(
            (r.status, r.body.as_ref(), r.details.as_str()),
            (429, &b"no"[..], "d")
        );
        assert_eq!(
            r.headers,
            vec![("x-why".to_owned(), Bytes::from_static(b"busy"))]
        );
        let no_status = ImmediateResponse::default();
        assert!(matches!(immediate(no_status), Err(PickError::Protocol(_))));
    }

    fn body_msg(mutation: Option<Mutation>) -> ProcessingResponse {
        ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse {
                response: Some(CommonResponse {
                    body_mutation: Some(BodyMutation { mutation }),
                    ..Default::default()
                }),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn body_answers_stream_replace_or_clear() {
        let mut body = BytesMut::new();
        let chunk = |b: &[u8], eos| {
            Some(Mutation::StreamedResponse(StreamedBodyResponse {
                body: b.to_vec(),
                end_of_stream: eos,
                ..Default::default()
            }))
        };
        assert_eq!(
            body_answer(body_msg(chunk(b"ab", false)), &mut body).unwrap(),
            BodyStep::More
        );
        assert_eq!(
            body_answer(body_msg(chunk(b"cd", true)), &mut body).unwrap(),
            BodyStep::Done
        );
        assert_eq!(&body[..], b"abcd");
        assert_eq!(
            body_answer(body_msg(Some(Mutation::Body(b"xyz".to_vec()))), &mut body).unwrap(),
            BodyStep::Done
        );
        assert_eq!(&body[..], b"xyz");
        assert_eq!(
            body_answer(body_msg(Some(Mutation::ClearBody(true))), &mut body).unwrap(),
            BodyStep::Done
        );
        assert!(body.is_empty());
        assert!(matches!(
            body_answer(body_msg(None), &mut body),
            Err(PickError::Protocol(_))
        ));
        let wrong = headers_answer(&[], None);
        assert!(
            matches!(body_answer(wrong, &mut body), Err(PickError::Protocol(m)) if m.contains("request_headers answer"))
        );
    }
}

//! One `ExternalProcessor/Process` stream on the server side, from the request headers to the
//! proxy's half-close: collect the request, ask the picker, answer, then answer the response path
//! and report the served endpoint.
//!
//! The order is enforced: anything out of place ends the stream with `InvalidArgument` and a message
//! saying what arrived instead of what. This module must not panic on any input, must not keep
//! running after the proxy went away (a picker still thinking is abandoned), and must not decide
//! where requests go: that is the [`Picker`]'s job.

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
    body_mutation::Mutation, processing_request::Request, processing_response::Response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{Picker, PickerAnswer, PickerRequest, Rejection, ServedRecord, ServerSettings};
use crate::wire;

type Outbound = mpsc::Sender<Result<ProcessingResponse, Status>>;

/// How a stream ended early.
enum End {
    /// The proxy broke the protocol: answer `InvalidArgument` with this message.
    Invalid(String),
    /// The proxy went away (reset, transport error, response stream dropped).
    Gone,
}

/// Runs one stream to its end.
pub(super) async fn run<P: Picker>(
    picker: &P,
    settings: &ServerSettings,
    mut inbound: Streaming<ProcessingRequest>,
    tx: Outbound,
) {
    match drive(picker, settings, &mut inbound, &tx).await {
        Ok(()) => {}
        Err(End::Gone) => tracing::debug!("ext_proc stream abandoned by the proxy"),
        Err(End::Invalid(message)) => {
            tracing::warn!(%message, "malformed ext_proc stream");
            let _ = tx.send(Err(Status::invalid_argument(message))).await;
        }
    }
}

async fn drive<P: Picker>(
    picker: &P,
    settings: &ServerSettings,
    inbound: &mut Streaming<ProcessingRequest>,
    tx: &Outbound,
) -> Result<(), End> {
    // The request headers.
    let Some(first) = recv(inbound).await? else {
        return Ok(());
    };
    let mut subset = wire::read_subset(first.metadata_context.as_ref());
    let head = match first.request {
        Some(Request::RequestHeaders(head)) => head,
        other => {
            return Err(End::Invalid(format!(
                "expected request_headers first, got {}",
                kind(&other)
            )));
        }
    };
    let headers = wire::header_pairs(head.headers.as_ref());
    let has_body = !head.end_of_stream;

    // The request body, up to end_of_stream (or trailers, which end it too).
    let mut body = BytesMut::new();
    let mut trailers = false;
    if has_body {
        loop {
            let Some(message) = recv(inbound).await? else {
                return Err(End::Invalid(
                    "stream half-closed before the request body ended".into(),
                ));
            };
            if let Some(hint) = wire::read_subset(message.metadata_context.as_ref()) {
                subset = Some(hint);
            }
            match message.request {
                Some(Request::RequestBody(chunk)) => {
                    if body.len() + chunk.body.len() > settings.max_body_bytes {
                        let too_large =
                            Rejection::new(413, "request body too large for the endpoint picker");
                        return send(tx, immediate(too_large)).await;
                    }
                    body.extend_from_slice(&chunk.body);
                    if chunk.end_of_stream {
                        break;
                    }
                }
                Some(Request::RequestTrailers(_)) => {
                    trailers = true;
                    break;
                }
                other => {
                    return Err(End::Invalid(format!(
                        "expected request_body before the request was answered, got {}",
                        kind(&other)
                    )));
                }
            }
        }
    }

    // The decision; abandoned if the proxy goes away meanwhile.
    let request = PickerRequest {
        headers,
        body: body.freeze(),
        subset,
    };
    let outcome = tokio::select! {
        outcome = picker.pick(&request) => outcome,
        () = tx.closed() => return Err(End::Gone),
    };
    let answer = match outcome {
        Ok(answer) if answer.destinations.is_empty() => {
            tracing::warn!("picker answered without a destination; rejecting with 503");
            return send(
                tx,
                immediate(Rejection::new(503, "endpoint picker chose no endpoint")),
            )
            .await;
        }
        Ok(answer) => answer,
        Err(rejection) => return send(tx, immediate(rejection)).await,
    };
    let PickerRequest {
        headers: request_headers,
        body: received,
        ..
    } = request;
    let destinations = answer.destinations.clone();
    let returned = answer.body.clone().unwrap_or(received);
    // `answer` (and what it holds for the picker) lives until this stream ends, however it ends.
    send(tx, headers_answer(&answer, has_body)).await?;
    if has_body {
        for message in body_answers(returned) {
            send(tx, message).await?;
        }
    } else if answer.body.is_some() {
        tracing::warn!("picker replaced the body of a request without one; ignored");
    }
    if trailers {
        send(
            tx,
            response(Response::RequestTrailers(TrailersResponse::default())),
        )
        .await?;
    }

    // The response path, until the proxy half-closes.
    let mut response_headers_seen = false;
    while let Some(message) = recv(inbound).await? {
        match message.request {
            Some(Request::ResponseHeaders(head)) if !response_headers_seen => {
                response_headers_seen = true;
                let response_headers = wire::header_pairs(head.headers.as_ref());
                let status = response_headers
                    .iter()
                    .find(|(n, _)| n == ":status")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
                let record = ServedRecord {
                    request_headers: request_headers.clone(),
                    destinations: destinations.clone(),
                    served: wire::read_served(message.metadata_context.as_ref()),
                    status,
                    response_headers,
                };
                picker.served(&record);
                send(
                    tx,
                    response(Response::ResponseHeaders(HeadersResponse::default())),
                )
                .await?;
            }
            Some(Request::ResponseBody(chunk)) if response_headers_seen => {
                let echo = StreamedBodyResponse {
                    body: chunk.body,
                    end_of_stream: chunk.end_of_stream,
                    ..Default::default()
                };
                send(tx, response(Response::ResponseBody(streamed(echo)))).await?;
            }
            Some(Request::ResponseTrailers(_)) if response_headers_seen => {
                send(
                    tx,
                    response(Response::ResponseTrailers(TrailersResponse::default())),
                )
                .await?;
            }
            other => {
                return Err(End::Invalid(format!(
                    "unexpected {} after the request was answered",
                    kind(&other)
                )));
            }
        }
    }
    Ok(())
}

/// The `request_headers` answer: destination header and `envoy.lb` metadata, the picker's header
/// changes, `content-length` when the body was replaced, and `clear_route_cache`.
fn headers_answer(answer: &PickerAnswer, has_body: bool) -> ProcessingResponse {
    let destination = wire::format_destinations(&answer.destinations);
    let mut set_headers = vec![wire::set_header(
        wire::DESTINATION_HEADER,
        destination.as_bytes(),
    )];
    set_headers.extend(
        answer
            .set_headers
            .iter()
            .map(|(n, v)| wire::set_header(n, v)),
    );
    if let (Some(body), true) = (&answer.body, has_body) {
        set_headers.push(wire::set_header(
            "content-length",
            body.len().to_string().as_bytes(),
        ));
    }
    let common = CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers,
            remove_headers: answer.remove_headers.clone(),
        }),
        clear_route_cache: true,
        ..Default::default()
    };
    ProcessingResponse {
        dynamic_metadata: Some(wire::destination_metadata(&destination)),
        ..response(Response::RequestHeaders(HeadersResponse {
            response: Some(common),
        }))
    }
}

/// The body streamed back in chunks of at most [`wire::SERVER_CHUNK_BYTES`], `end_of_stream` on the
/// last; an empty body is one empty final chunk.
fn body_answers(body: Bytes) -> impl Iterator<Item = ProcessingResponse> {
    let chunks = body.len().div_ceil(wire::SERVER_CHUNK_BYTES).max(1);
    (0..chunks).map(move |i| {
        let start = (i * wire::SERVER_CHUNK_BYTES).min(body.len());
        let end = (start + wire::SERVER_CHUNK_BYTES).min(body.len());
        let chunk = StreamedBodyResponse {
            body: body[start..end].to_vec(),
            end_of_stream: i + 1 == chunks,
            ..Default::default()
        };
        response(Response::RequestBody(streamed(chunk)))
    })
}

fn streamed(chunk: StreamedBodyResponse) -> BodyResponse {
    BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::StreamedResponse(chunk)),
            }),
            ..Default::default()
        }),
    }
}

fn immediate(rejection: Rejection) -> ProcessingResponse {
    let set_headers = rejection
        .headers
        .iter()
        .map(|(n, v)| wire::set_header(n, v))
        .collect();
    response(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(rejection.status),
        }),
        headers: Some(HeaderMutation {
            set_headers,
            remove_headers: vec![],
        }),
        body: rejection.body.to_vec(),
        details: rejection.details,
        ..Default::default()
    }))
}

fn response(kind: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(kind),
        ..Default::default()
    }
}

async fn send(tx: &Outbound, message: ProcessingResponse) -> Result<(), End> {
    tx.send(Ok(message)).await.map_err(|_| End::Gone)
}

async fn recv(
    inbound: &mut Streaming<ProcessingRequest>,
) -> Result<Option<ProcessingRequest>, End> {
    inbound.message().await.map_err(|status| {
        tracing::debug!(%status, "ext_proc stream broke");
        End::Gone
    })
}

fn kind(request: &Option<Request>) -> &'static str {
    match request {
        None => "a ProcessingRequest without a request",
        Some(Request::RequestHeaders(_)) => "request_headers",
        Some(Request::ResponseHeaders(_)) => "response_headers",
        Some(Request::RequestBody(_)) => "request_body",
        Some(Request::ResponseBody(_)) => "response_body",
        Some(Request::RequestTrailers(_)) => "request_trailers",
        Some(Request::ResponseTrailers(_)) => "response_trailers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_sizes(body: usize) -> Vec<(usize, bool)> {
        body_answers(Bytes::from(vec![7u8; body]))
            .map(|m| match m.response {
                Some(Response::RequestBody(BodyResponse { response: Some(c) })) => {
                    match c.body_mutation.and_then(|b| b.mutation) {
                        Some(Mutation::StreamedResponse(s)) => (s.body.len(), s.end_of_stream),
                        other => panic!("not streamed: {other:?}"),
                    }
                }
                other => panic!("not a body answer: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn bodies_are_streamed_back_in_62000_byte_chunks() {
        assert_eq!(chunk_sizes(0), vec![(0, true)]);
        assert_eq!(chunk_sizes(5), vec![(5, true)]);
        assert_eq!(chunk_sizes(62_000), vec![(62_000, true)]);
        assert_eq!(chunk_sizes(62_001), vec![(62_000, false), (1, true)]);
        let big = chunk_sizes(4 << 20);
        assert_eq!(big.len(), 68);
        assert!(big.iter().all(|(n, _)| *n <= 62_000));
        assert_eq!(big.iter().map(|(n, _)| n).sum::<usize>(), 4 << 20);
    }

    #[test]
    fn headers_answer_carries_destination_metadata_and_content_length() {
        let answer = PickerAnswer {
            destinations: vec![
                "10.0.0.1:8000".parse().unwrap(),
                "[fd00::1]:8000".parse().unwrap(),
            ],
            set_headers: vec![("x-a".into(), Bytes::from_static(b"1"))],
            remove_headers: vec!["x-b".into()],
            body: Some(Bytes::from_static(b"{}")),
            held: Default::default(),
        };
        let message = headers_answer(&answer, true);
        assert_eq!(
            wire::read_destination_metadata(message.dynamic_metadata.as_ref()).as_deref(),
            Some("10.0.0.1:8000,[fd00::1]:8000")
        );
        let Some(Response::RequestHeaders(HeadersResponse {
            response: Some(common),
        })) = message.response
        else {
            panic!("not a headers answer")
        };
        assert!(common.clear_route_cache);
        let mutation = common.header_mutation.unwrap();
        let set: Vec<_> = mutation
            .set_headers
            .iter()
            .map(|o| o.header.as_ref().unwrap())
            .map(|h| {
                (
                    h.key.as_str(),
                    String::from_utf8(h.raw_value.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            set,
            vec![
                (
                    "x-gateway-destination-endpoint",
                    "10.0.0.1:8000,[fd00::1]:8000".to_owned()
                ),
                ("x-a", "1".to_owned()),
                ("content-length", "2".to_owned())
            ]
        );
        assert_eq!(mutation.remove_headers, vec!["x-b".to_owned()]);
        let unchanged = headers_answer(&PickerAnswer::to(answer.destinations.clone()), true);
        let Some(Response::RequestHeaders(HeadersResponse {
            response: Some(common),
        })) = unchanged.response
        else {
            panic!("not a headers answer")
        };
        assert_eq!(common.header_mutation.unwrap().set_headers.len(), 1);
    }
}

//! Writing the gateway's own answers to the client, and reading request bodies.
//!
//! The only I/O on the client session outside Pingora's phases and the forwarder: an error in
//! OpenAI's shape ([`error`]), the gateway's own JSON answers ([`json`]) and a bounded read of the
//! request body ([`read_body`]).

use bytes::{Bytes, BytesMut};
use pingora::Error;
use pingora::proxy::Session;

use super::error::ClientError;

/// Write `error` as the whole response.
pub async fn error(session: &mut Session, error: &ClientError) -> pingora::Result<()> {
    let body = error.body();
    let header = error.header(body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Write `body` as a whole `200 OK` JSON response.
pub async fn json(session: &mut Session, body: Bytes) -> pingora::Result<()> {
    let mut header = pingora::http::ResponseHeader::build(200, Some(2))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit.
    TooLarge(ClientError),
    /// The client connection failed.
    Client(Box<Error>),
}

/// Read the whole request body, up to `limit` bytes. `Expect: 100-continue` is answered first; a
/// `Content-Length` over the limit is refused before anything is read.
pub async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, BodyError> {
    let too_large = |size: u64| BodyError::TooLarge(ClientError::BodyTooLarge { size, limit });
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > limit as u64) {
        return Err(too_large(len));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(BodyError::Client)?;
    }
    let mut body = BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(BodyError::Client)?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

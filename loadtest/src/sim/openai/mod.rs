//! vLLM's dialect of the OpenAI API: request bodies as vLLM accepts them ([`request`]), response
//! bodies and SSE chunks as vLLM sends them ([`response`]), and error bodies.
//!
//! Errors use the shape vLLM has sent since v0.10.1:
//! `{"error":{"message":..,"type":..,"param":null,"code":<status>}}`. This module only shapes
//! bytes; it does not know about the engine or the network.

pub mod request;
pub mod response;

/// The version `/version` reports: the vLLM release whose wire format the simulator follows.
pub const VLLM_VERSION: &str = "0.11.0";

/// An error answer: HTTP status, vLLM's error `type` and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            kind: "BadRequestError",
            message: message.into(),
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: 404,
            kind: "NotFoundError",
            message: format!("The model `{model}` does not exist."),
        }
    }

    /// An error injected by `--fail-rate`, typed as vLLM/Starlette name the status.
    pub fn injected(status: u16) -> Self {
        let kind = match status {
            400 => "BadRequestError",
            401 => "UnauthorizedError",
            404 => "NotFoundError",
            408 => "RequestTimeoutError",
            429 => "TooManyRequestsError",
            500 => "InternalServerError",
            502 => "BadGatewayError",
            503 => "ServiceUnavailableError",
            504 => "GatewayTimeoutError",
            _ => "Error",
        };
        ApiError {
            status,
            kind,
            message: format!("Injected failure (vllm-sim --fail-rate): HTTP {status}"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        format!(
            "{{\"error\":{{\"message\":{},\"type\":\"{}\",\"param\":null,\"code\":{}}}}}",
            json_string(&self.message),
            self.kind,
            self.status
        )
    }
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}

/// Appends `text` as a JSON string literal to `out`.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_have_vllms_shape() {
        let body: serde_json::Value =
            serde_json::from_str(&ApiError::model_not_found("gpt-4").body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "The model `gpt-4` does not exist.",
                "type": "NotFoundError", "param": null, "code": 404}})
        );
    }

    #[test]
    fn json_strings_escape_like_serde() {
        let text = "a\"b\\c\nd\u{1}é";
        let mut out = String::new();
        push_json_string(&mut out, text);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
    }
}

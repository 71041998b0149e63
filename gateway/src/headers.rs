//! Names of the HTTP headers the gateway reads, sets or strips, in one place.
//!
//! Two kinds of header steer a gateway, and clients get neither past it:
//! - **Control headers** ([`CONTROL`]): the endpoint-picker protocol's and body-based routing's
//!   `x-gateway-*` headers, which only a gateway or its picker may set. They are removed from every
//!   request before routing; the gateway sets the ones it owns itself.
//! - **Client hints** ([`CLIENT_HINTS`]): headers a client sends to choose an objective, a fairness
//!   flow or the model name sent upstream. Each has its current llm-d name (`x-llm-d-*`) and the
//!   Inference Extension's older `x-gateway-*` name; when both are sent the llm-d name wins. The
//!   gateway reads them while deciding ([`ClientHints`]) and never forwards them.
//!
//! Requests the gateway refuses itself with 429 or 503 carry [`DROPPED_REASON`] (the name and
//! values of the llm-d router's headers reference), so clients and dashboards can tell a shed
//! request from a model server's own error.

use http::HeaderMap;

/// The request id: kept when a client sends a reasonable one, else generated.
pub const REQUEST_ID: &str = "x-request-id";

/// Carries the body's `model` so routes can match on it (body-based routing).
pub const MODEL_NAME: &str = "x-gateway-model-name";

/// Names the endpoint that served a request, on the response.
pub const SERVED_BY: &str = "x-gateway-destination-endpoint-served";

/// Why the gateway refused a request itself (`rejected-saturated`, `rejected-no-endpoints`), on
/// its 429 and 503 answers.
pub const DROPPED_REASON: &str = "x-llm-d-request-dropped-reason";

/// Headers that steer a gateway and must never come from clients; removed from every request.
pub const CONTROL: [&str; 4] = [
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-subset",
    SERVED_BY,
    MODEL_NAME,
];

/// A header a client may send to steer its request, under both of its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHint {
    /// The current (llm-d) name; wins when both are sent.
    pub name: &'static str,
    /// The Inference Extension's older name.
    pub alias: &'static str,
}

/// The InferenceObjective a request belongs to.
pub const OBJECTIVE: ClientHint = ClientHint {
    name: "x-llm-d-inference-objective",
    alias: "x-gateway-inference-objective",
};

/// The flow a request counts against for fairness.
pub const FAIRNESS_ID: ClientHint = ClientHint {
    name: "x-llm-d-inference-fairness-id",
    alias: "x-gateway-inference-fairness-id",
};

/// The model name to send upstream instead of the requested one (an InferenceModelRewrite rule or
/// an InferenceModel's target models, when one applies, win).
pub const MODEL_NAME_REWRITE: ClientHint = ClientHint {
    name: "x-llm-d-model-name-rewrite",
    alias: "x-gateway-model-name-rewrite",
};

/// Every client hint.
pub const CLIENT_HINTS: [ClientHint; 3] = [OBJECTIVE, FAIRNESS_ID, MODEL_NAME_REWRITE];

/// Every header a client's request loses on arrival: the control headers and both names of every
/// client hint (read first, into [`ClientHints`]).
pub fn removed_from_clients() -> impl Iterator<Item = &'static str> {
    CONTROL.into_iter().chain(
        CLIENT_HINTS
            .into_iter()
            .flat_map(|hint| [hint.name, hint.alias]),
    )
}

/// The prefixes every control header and client hint starts with, so a request without any is
/// recognised in one pass over its header names.
pub const PREFIXES: [&str; 2] = ["x-gateway-", "x-llm-d-"];

/// The longest hint value kept (an objective, flow or model name); longer values are ignored.
const MAX_HINT_LEN: usize = 253;

/// The client hints of one request, read before they are removed from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHints {
    /// [`OBJECTIVE`].
    pub objective: Option<String>,
    /// [`FAIRNESS_ID`].
    pub fairness_id: Option<String>,
    /// [`MODEL_NAME_REWRITE`].
    pub model_rewrite: Option<String>,
}

impl ClientHints {
    /// Read every hint from `headers`: the llm-d name first, then the alias. A value that is
    /// empty, longer than 253 bytes or not visible ASCII counts as absent.
    pub fn read(headers: &HeaderMap) -> ClientHints {
        let value = |hint: ClientHint| {
            [hint.name, hint.alias].into_iter().find_map(|name| {
                let value = headers.get(name)?.to_str().ok()?.trim();
                (!value.is_empty() && value.len() <= MAX_HINT_LEN).then(|| value.to_owned())
            })
        };
        ClientHints {
            objective: value(OBJECTIVE),
            fairness_id: value(FAIRNESS_ID),
            model_rewrite: value(MODEL_NAME_REWRITE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_llm_d_name_wins_over_the_inference_extension_alias() {
        let both = headers(&[
            ("x-gateway-inference-objective", "old"),
            ("x-llm-d-inference-objective", "new"),
            ("x-gateway-inference-fairness-id", "tenant-a"),
            ("X-LLM-D-Model-Name-Rewrite", "adapter-v2"),
        ]);
        assert_eq!(
            ClientHints::read(&both),
            ClientHints {
                objective: Some("new".into()),
                fairness_id: Some("tenant-a".into()),
                model_rewrite: Some("adapter-v2".into()),
            }
        );
        assert_eq!(
            ClientHints::read(&headers(&[("x-gateway-model-name-rewrite", "m")])).model_rewrite,
            Some("m".into()),
            "the alias alone is read"
        );
    }

    #[test]
    fn empty_or_oversized_values_count_as_absent_and_fall_back_to_the_alias() {
        let long = "x".repeat(254);
        let hints = ClientHints::read(&headers(&[
            ("x-llm-d-inference-objective", " "),
            ("x-gateway-inference-objective", "chat"),
            ("x-llm-d-inference-fairness-id", &long),
        ]));
        assert_eq!(hints.objective.as_deref(), Some("chat"));
        assert_eq!(hints.fairness_id, None);
        assert_eq!(ClientHints::read(&HeaderMap::new()), ClientHints::default());
    }

    #[test]
    fn hints_and_control_headers_share_the_prefixes() {
        for name in CONTROL
            .into_iter()
            .chain(CLIENT_HINTS.iter().flat_map(|h| [h.name, h.alias]))
        {
            assert!(PREFIXES.iter().any(|p| name.starts_with(p)), "{name}");
        }
    }
}

//! Names of the HTTP headers the gateway reads, sets or strips, in one place.
//!
//! The `x-gateway-*` headers steer a gateway (the Inference Extension's endpoint-picker protocol and
//! body-based routing); clients must never set them, so the proxy removes them from every request
//! before routing and sets the ones it owns itself.

/// The request id: kept when a client sends a reasonable one, else generated.
pub const REQUEST_ID: &str = "x-request-id";

/// Carries the body's `model` so routes can match on it (body-based routing).
pub const MODEL_NAME: &str = "x-gateway-model-name";

/// Names the endpoint that served a request, on the response.
pub const SERVED_BY: &str = "x-gateway-destination-endpoint-served";

/// Headers that steer a gateway and must never come from clients; removed from every request.
pub const CONTROL: [&str; 7] = [
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-subset",
    SERVED_BY,
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
    "x-gateway-model-name-rewrite",
    MODEL_NAME,
];

/// The prefix every control header shares, so a request without any is recognised in one pass.
pub const CONTROL_PREFIX: &str = "x-gateway-";

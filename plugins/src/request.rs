//! What a strategy can see of a request: model names, priority, prompt text and sizes.

use std::fmt;
use std::str::FromStr;

/// How important a request is, from its `InferenceModel`.
///
/// Unset criticality is [`Criticality::Standard`]. ACK's documentation calls the lowest level
/// `Schedulable`; it is accepted as a synonym of [`Criticality::Sheddable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Criticality {
    /// May be rejected with 429 while the pool is saturated.
    Sheddable,
    /// Served unless nothing can serve it.
    #[default]
    Standard,
    /// Served first.
    Critical,
}

impl Criticality {
    /// The priority this criticality stands for, on the `InferenceObjective` scale (higher is more
    /// important, `0` is the default, negative may be shed while the pool is saturated):
    /// Critical `1`, Standard `0`, Sheddable `-1`.
    pub fn priority(self) -> i32 {
        match self {
            Criticality::Sheddable => -1,
            Criticality::Standard => 0,
            Criticality::Critical => 1,
        }
    }

    /// The canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "Sheddable",
            Criticality::Standard => "Standard",
            Criticality::Critical => "Critical",
        }
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a criticality that is none of the known spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown criticality {0:?}: expected Critical, Standard, Sheddable or Schedulable")]
pub struct UnknownCriticality(pub String);

impl FromStr for Criticality {
    type Err = UnknownCriticality;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Critical" => Ok(Criticality::Critical),
            "Standard" => Ok(Criticality::Standard),
            "Sheddable" | "Schedulable" => Ok(Criticality::Sheddable),
            other => Err(UnknownCriticality(other.to_owned())),
        }
    }
}

/// One inference request as a strategy sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The gateway's request id (`x-request-id`).
    pub request_id: &'a str,
    /// The `model` the client asked for.
    pub model: &'a str,
    /// The model the request is sent with after the `InferenceModel`'s weighted draw: an adapter
    /// name or the base model. Equal to `model` when nothing was rewritten.
    pub target_model: &'a str,
    /// The request's priority: its `InferenceObjective`'s `spec.priority` when the client named
    /// one, else its `InferenceModel`'s criticality ([`Criticality::priority`]), else `0`. Higher is
    /// more important; a negative priority may be shed while the pool is saturated.
    pub priority: i32,
    /// The prompt as stable text (a completions prompt as is, chat messages rendered one per line),
    /// when the strategy asked for it through [`crate::Inputs::prompt`].
    pub prompt: Option<&'a str>,
    /// Estimated prompt tokens (about four bytes a token).
    pub prompt_tokens: u32,
    /// The request's `max_tokens` / `max_completion_tokens`, if given.
    pub max_tokens: Option<u32>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The request headers, with the gateway's control headers already removed.
    pub headers: &'a http::HeaderMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criticality_parses_every_spelling() {
        assert_eq!("Critical".parse(), Ok(Criticality::Critical));
        assert_eq!("Standard".parse(), Ok(Criticality::Standard));
        assert_eq!("Sheddable".parse(), Ok(Criticality::Sheddable));
        assert_eq!("Schedulable".parse(), Ok(Criticality::Sheddable));
        assert_eq!(
            "critical".parse::<Criticality>(),
            Err(UnknownCriticality("critical".into()))
        );
        assert_eq!(Criticality::default(), Criticality::Standard);
    }

    #[test]
    fn criticality_maps_onto_ordered_priorities_with_sheddable_below_zero() {
        let priorities = [
            Criticality::Sheddable.priority(),
            Criticality::Standard.priority(),
            Criticality::Critical.priority(),
        ];
        assert_eq!(priorities, [-1, 0, 1]);
    }
}

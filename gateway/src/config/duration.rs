//! Gateway API durations (`1h`, `30s`, `500ms`), as written in HTTPRoute timeouts,
//! BackendTrafficPolicies and the command line.
//!
//! One parser for every place a duration is read, so the file, the cluster and the flags accept
//! the same text. It only parses; what a duration means is the caller's business.

use std::time::Duration;

/// Parse a Gateway API duration; `0s` means none (`Ok(None)`).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let parsed: gateway_api::Duration = text.parse()?;
    let duration = Duration::new(parsed.as_secs(), parsed.subsec_nanos());
    Ok((!duration.is_zero()).then_some(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_zero_means_none() {
        assert_eq!(parse_duration("1h"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(
            parse_duration("1m30s500ms"),
            Ok(Some(Duration::from_millis(90_500)))
        );
        assert_eq!(parse_duration("0s"), Ok(None));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("forever").is_err());
    }
}

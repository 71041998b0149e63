//! Reading strategy parameters from a [`StrategyConfig`] with validation and clear errors.
//!
//! ```
//! use plugins::params::Params;
//! use plugins::StrategyConfig;
//!
//! let mut config = StrategyConfig::new();
//! config.insert("queue-weight".into(), "3".into());
//! let mut params = Params::new("DEFAULT", &config);
//! assert_eq!(params.f64("queue-weight", 2.0, 0.0..=100.0).unwrap(), 3.0);
//! assert_eq!(params.f64("kv-weight", 2.0, 0.0..=100.0).unwrap(), 2.0);
//! params.finish().unwrap();
//! ```

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::registry::StrategyConfig;
use crate::strategy::ConfigError;

/// Typed access to a strategy's parameters; [`Params::finish`] rejects the ones never read.
#[derive(Debug)]
pub struct Params<'a> {
    strategy: &'a str,
    config: &'a StrategyConfig,
    read: BTreeSet<String>,
}

impl<'a> Params<'a> {
    /// Parameters of `strategy`.
    pub fn new(strategy: &'a str, config: &'a StrategyConfig) -> Self {
        Self {
            strategy,
            config,
            read: BTreeSet::new(),
        }
    }

    fn raw(&mut self, key: &str) -> Option<&'a str> {
        self.read.insert(key.to_owned());
        self.config.get(key).map(String::as_str)
    }

    /// A number in `range`, `default` when absent.
    pub fn f64(
        &mut self,
        key: &str,
        default: f64,
        range: RangeInclusive<f64>,
    ) -> Result<f64, ConfigError> {
        let Some(text) = self.raw(key) else {
            return Ok(default);
        };
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(key, text, "not a number"))?;
        if !range.contains(&value) {
            return Err(ConfigError::new(
                key,
                text,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    /// A whole number in `range`, `default` when absent.
    pub fn usize(
        &mut self,
        key: &str,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let Some(text) = self.raw(key) else {
            return Ok(default);
        };
        let value: usize = text
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(key, text, "not a whole number"))?;
        if !range.contains(&value) {
            return Err(ConfigError::new(
                key,
                text,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    /// A non-empty string, `default` when absent.
    pub fn string(&mut self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.raw(key) {
            None => Ok(default.to_owned()),
            Some(text) if text.trim().is_empty() => {
                Err(ConfigError::new(key, text, "must not be empty"))
            }
            Some(text) => Ok(text.trim().to_owned()),
        }
    }

    /// `true` or `false`, `default` when absent.
    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key).map(|text| (text, text.trim())) {
            None => Ok(default),
            Some((_, "true")) => Ok(true),
            Some((_, "false")) => Ok(false),
            Some((text, _)) => Err(ConfigError::new(key, text, "must be true or false")),
        }
    }

    /// A duration in milliseconds within `range` (milliseconds), `default` when absent.
    pub fn millis(
        &mut self,
        key: &str,
        default: Duration,
        range: RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        let default_ms = usize::try_from(default.as_millis()).unwrap_or(usize::MAX);
        let range = (*range.start() as usize)..=(*range.end() as usize);
        self.usize(key, default_ms, range)
            .map(|ms| Duration::from_millis(ms as u64))
    }

    /// Reject parameters that no accessor asked for.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self
            .config
            .iter()
            .find(|(key, _)| !self.read.contains(*key))
        {
            None => Ok(()),
            Some((key, value)) => {
                let known: Vec<&str> = self.read.iter().map(String::as_str).collect();
                Err(ConfigError::new(
                    key.as_str(),
                    value.as_str(),
                    if known.is_empty() {
                        format!("{} takes no parameters", self.strategy)
                    } else {
                        format!(
                            "unknown parameter of {}; known: {}",
                            self.strategy,
                            known.join(", ")
                        )
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> StrategyConfig {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_parsed_and_checked() {
        let c = config(&[("w", "1.5"), ("n", "12"), ("t", "250")]);
        let mut p = Params::new("S", &c);
        assert_eq!(p.f64("w", 0.0, 0.0..=2.0), Ok(1.5));
        assert_eq!(p.usize("n", 0, 1..=100), Ok(12));
        assert_eq!(
            p.millis("t", Duration::ZERO, 1..=1000),
            Ok(Duration::from_millis(250))
        );
        assert!(p.finish().is_ok());
        let c = config(&[("h", " x-session "), ("e", "")]);
        let mut p = Params::new("S", &c);
        assert_eq!(p.string("h", "d"), Ok("x-session".into()));
        assert_eq!(p.string("missing", "d"), Ok("d".into()));
        assert_eq!(p.string("e", "d").unwrap_err().reason, "must not be empty");
        let c = config(&[("on", "true"), ("off", " false "), ("maybe", "yes")]);
        let mut p = Params::new("S", &c);
        assert_eq!(p.bool("on", false), Ok(true));
        assert_eq!(p.bool("off", true), Ok(false));
        assert_eq!(p.bool("absent", true), Ok(true));
        assert_eq!(
            p.bool("maybe", true),
            Err(ConfigError::new("maybe", "yes", "must be true or false"))
        );
        let c = config(&[("w", "9")]);
        assert_eq!(
            Params::new("S", &c).f64("w", 0.0, 0.0..=2.0),
            Err(ConfigError::new("w", "9", "must be between 0 and 2"))
        );
        let c = config(&[("w", "heavy")]);
        assert_eq!(
            Params::new("S", &c)
                .f64("w", 0.0, 0.0..=2.0)
                .unwrap_err()
                .reason,
            "not a number"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_known_ones() {
        let c = config(&[("queue-wieght", "1")]);
        let mut p = Params::new("DEFAULT", &c);
        p.f64("queue-weight", 2.0, 0.0..=10.0).unwrap();
        let err = p.finish().unwrap_err();
        assert_eq!(err.parameter, "queue-wieght");
        assert_eq!(
            err.reason,
            "unknown parameter of DEFAULT; known: queue-weight"
        );
        let empty = StrategyConfig::new();
        assert!(Params::new("X", &empty).finish().is_ok());
        let c = config(&[("a", "1")]);
        assert_eq!(
            Params::new("RANDOM", &c).finish().unwrap_err().reason,
            "RANDOM takes no parameters"
        );
    }
}

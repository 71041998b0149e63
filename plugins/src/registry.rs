//! Strategy registry: names (the pool's routing-strategy annotation) to factories.
//!
//! A factory validates its parameters and builds one strategy instance per pool. Names are
//! case-sensitive upper-case identifiers, as ACK spells them (`DEFAULT`, `PREFIX_CACHE`). A name
//! may also be an *alias* of another: it builds the target's strategy and says so in
//! [`Registry::describe`], so debug output never hides which algorithm really runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::strategies::{DefaultStrategy, LoraAffinity, PrefixCache, Random, RoundRobin};
use crate::strategy::{ConfigError, Strategy};

/// Parameters of one strategy instance: pool annotations under
/// [`crate::STRATEGY_PARAM_PREFIX`], with the prefix removed.
pub type StrategyConfig = BTreeMap<String, String>;

/// Builds strategy instances. Implemented for every
/// `Fn(&StrategyConfig) -> Result<Arc<dyn Strategy>, ConfigError>`.
pub trait StrategyFactory: Send + Sync + 'static {
    /// Validate `config` and build a strategy.
    fn build(&self, config: &StrategyConfig) -> Result<Arc<dyn Strategy>, ConfigError>;
}

impl<F> StrategyFactory for F
where
    F: Fn(&StrategyConfig) -> Result<Arc<dyn Strategy>, ConfigError> + Send + Sync + 'static,
{
    fn build(&self, config: &StrategyConfig) -> Result<Arc<dyn Strategy>, ConfigError> {
        self(config)
    }
}

/// Why a strategy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No strategy has this name.
    #[error("unknown routing strategy {name:?}; known strategies: {known}")]
    Unknown {
        /// The requested name.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// The strategy rejected its parameters.
    #[error("routing strategy {name}: {source}")]
    Config {
        /// The strategy name.
        name: String,
        /// What was wrong.
        #[source]
        source: ConfigError,
    },
}

enum Entry {
    Factory(Arc<dyn StrategyFactory>),
    Alias { target: String, note: String },
}

/// Resolved registration of a name: what really runs and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resolution {
    /// The name that was asked for.
    pub requested: String,
    /// The strategy that runs.
    pub implementation: String,
    /// Why they differ, when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A name followed through its aliases.
struct Resolved<'a> {
    implementation: &'a str,
    factory: &'a Arc<dyn StrategyFactory>,
    note: Option<&'a str>,
}

/// Maps strategy names to factories.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, Arc<Entry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

/// Parameter-less factories reject any parameter.
fn no_parameters(name: &str, config: &StrategyConfig) -> Result<(), ConfigError> {
    crate::params::Params::new(name, config).finish()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in strategies: `DEFAULT`, `PREFIX_CACHE`, `LORA_AFFINITY`, `ROUND_ROBIN` and
    /// `RANDOM`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        registry.register(RoundRobin::NAME, |config: &StrategyConfig| {
            no_parameters(RoundRobin::NAME, config)?;
            Ok(Arc::new(RoundRobin::new()) as Arc<dyn Strategy>)
        });
        registry.register(Random::NAME, |config: &StrategyConfig| {
            no_parameters(Random::NAME, config)?;
            Ok(Arc::new(Random::new()) as Arc<dyn Strategy>)
        });
        registry.register(DefaultStrategy::NAME, |config: &StrategyConfig| {
            Ok(Arc::new(DefaultStrategy::from_config(config)?) as Arc<dyn Strategy>)
        });
        registry.register(PrefixCache::NAME, |config: &StrategyConfig| {
            Ok(Arc::new(PrefixCache::from_config(config)?) as Arc<dyn Strategy>)
        });
        registry.register(LoraAffinity::NAME, |config: &StrategyConfig| {
            Ok(Arc::new(LoraAffinity::from_config(config)?) as Arc<dyn Strategy>)
        });
        registry
    }

    /// Register (or replace) a factory under `name`.
    pub fn register(&mut self, name: impl Into<String>, factory: impl StrategyFactory) {
        self.entries
            .insert(name.into(), Arc::new(Entry::Factory(Arc::new(factory))));
    }

    /// Make `name` build `target`'s strategy, with `note` saying why.
    pub fn alias(
        &mut self,
        name: impl Into<String>,
        target: impl Into<String>,
        note: impl Into<String>,
    ) {
        self.entries.insert(
            name.into(),
            Arc::new(Entry::Alias {
                target: target.into(),
                note: note.into(),
            }),
        );
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    fn resolve<'a>(&'a self, name: &str) -> Result<Resolved<'a>, RegistryError> {
        let mut current = name;
        let mut note = None;
        // Aliases may chain; the bound stops a cycle.
        for _ in 0..8 {
            match self.entries.get_key_value(current).map(|(k, v)| (k, &**v)) {
                Some((key, Entry::Factory(factory))) => {
                    return Ok(Resolved {
                        implementation: key,
                        factory,
                        note,
                    });
                }
                Some((_, Entry::Alias { target, note: n })) => {
                    note = note.or(Some(n.as_str()));
                    current = target;
                }
                None => break,
            }
        }
        Err(RegistryError::Unknown {
            name: name.to_owned(),
            known: self.names().join(", "),
        })
    }

    /// What `name` runs.
    pub fn describe(&self, name: &str) -> Result<Resolution, RegistryError> {
        let resolved = self.resolve(name)?;
        Ok(Resolution {
            requested: name.to_owned(),
            implementation: resolved.implementation.to_owned(),
            note: resolved.note.map(str::to_owned),
        })
    }

    /// Build the strategy registered as `name` with `config`.
    pub fn build(
        &self,
        name: &str,
        config: &StrategyConfig,
    ) -> Result<Arc<dyn Strategy>, RegistryError> {
        let resolved = self.resolve(name)?;
        resolved
            .factory
            .build(config)
            .map_err(|source| RegistryError::Config {
                name: resolved.implementation.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolView;
    use crate::strategy::Candidates;
    use crate::testing::{pool_of, request};

    /// Which built-in `strategy` is, from what it does (strategies carry no name of their own):
    /// the keys of its debug state, and for the two without state, how it orders a pool of 16.
    fn identify(strategy: &dyn Strategy) -> &'static str {
        let state = strategy.debug_state();
        if state.get("pending_ttl_ms").is_some() {
            return "LORA_AFFINITY";
        }
        if state.get("affinity_threshold").is_some() {
            return "PREFIX_CACHE";
        }
        if state.get("cost_model").is_some() {
            return "DEFAULT";
        }
        let (_ids, views) = pool_of(16);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let headers = http::HeaderMap::new();
        let picks: Vec<Candidates> = (0..2)
            .map(|_| strategy.pick(&request(&headers), &pool).unwrap())
            .collect();
        if picks == [Candidates::rotation(0, 16), Candidates::rotation(1, 16)] {
            return "ROUND_ROBIN";
        }
        let permutation = |c: &Candidates| {
            let mut sorted = c.as_slice().to_vec();
            sorted.sort_unstable();
            sorted == (0..16).collect::<Vec<_>>()
        };
        if picks.iter().all(permutation) {
            "RANDOM"
        } else {
            "unknown"
        }
    }

    #[test]
    fn builtins_resolve() {
        let registry = Registry::with_builtins();
        assert_eq!(
            registry.names(),
            vec![
                "DEFAULT",
                "LORA_AFFINITY",
                "PREFIX_CACHE",
                "RANDOM",
                "ROUND_ROBIN"
            ]
        );
        for name in registry.names() {
            let strategy = registry.build(name, &StrategyConfig::new()).unwrap();
            assert_eq!(identify(&*strategy), name);
            let resolution = registry.describe(name).unwrap();
            assert_eq!(resolution.implementation, name);
            assert_eq!(resolution.note, None);
        }
    }

    #[test]
    fn aliases_say_what_runs() {
        let mut registry = Registry::with_builtins();
        registry.alias(
            "LEGACY",
            "ROUND_ROBIN",
            "LEGACY is ROUND_ROBIN under an old name",
        );
        let d = registry.describe("LEGACY").unwrap();
        assert_eq!(d.implementation, "ROUND_ROBIN");
        assert!(d.note.unwrap().contains("old name"));
        assert_eq!(
            identify(&*registry.build("LEGACY", &StrategyConfig::new()).unwrap()),
            "ROUND_ROBIN"
        );
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let registry = Registry::with_builtins();
        let err = registry
            .build("FASTEST", &StrategyConfig::new())
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "unknown routing strategy \"FASTEST\"; known strategies: DEFAULT, LORA_AFFINITY, PREFIX_CACHE, RANDOM, ROUND_ROBIN"
        );
    }

    #[test]
    fn parameters_are_validated() {
        let registry = Registry::with_builtins();
        let mut config = StrategyConfig::new();
        config.insert("queue-weight".into(), "2".into());
        let err = registry.build("RANDOM", &config).err().unwrap();
        assert_eq!(
            err,
            RegistryError::Config {
                name: "RANDOM".into(),
                source: ConfigError::new("queue-weight", "2", "RANDOM takes no parameters"),
            }
        );
    }

    #[test]
    fn alias_cycles_are_unknown() {
        let mut registry = Registry::new();
        registry.alias("A", "B", "a");
        registry.alias("B", "A", "b");
        assert!(matches!(
            registry.build("A", &StrategyConfig::new()),
            Err(RegistryError::Unknown { .. })
        ));
    }

    #[test]
    fn third_party_factories_register() {
        let mut registry = Registry::with_builtins();
        registry.register("MINE", |_: &StrategyConfig| {
            Ok(Arc::new(RoundRobin::new()) as Arc<dyn Strategy>)
        });
        assert!(registry.build("MINE", &StrategyConfig::new()).is_ok());
    }
}

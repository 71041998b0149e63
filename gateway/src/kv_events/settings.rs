//! A pool's KV-event settings, from its annotations under [`KV_EVENTS_PREFIX`].
//!
//! | Annotation (after the prefix) | Default | Why |
//! |---|---|---|
//! | `enabled` | `false` | The model servers must be started with `--kv-events-config`; a gateway that subscribed to servers that do not publish would only ever fall back to its estimate |
//! | `port` | 5557 | vLLM's port in its documented `endpoint` (`tcp://*:5557`); the server on a pool's k-th target port publishes on `port + k` (as vLLM's data-parallel rank k adds k to its port) |
//! | `replay-port` | 0 (none) | vLLM's `replay_endpoint` is unset by default; with one (`tcp://*:5558`), a gateway that starts or reconnects late, or loses messages, asks for what it missed instead of forgetting the endpoint's blocks. Same `+ k` rule |
//! | `topic` | `""` | vLLM's default topic; the subscription filters on it |
//! | `tokenize-timeout-ms` | 100 | How long the gateway waits for a model server's `/tokenize` before routing on its own estimate: a 32k-token prompt tokenizes in a few milliseconds, and a slow answer must not cost a request more than a miss would |

use std::collections::BTreeMap;
use std::time::Duration;

use plugins::params::Params;
use plugins::{ConfigError, StrategyConfig};

/// Pool annotation prefix of the KV-event settings.
pub const KV_EVENTS_PREFIX: &str = "kv-events.inference-gateway.dev/";

/// Where a pool's model servers publish their KV-cache events (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventsSettings {
    /// The PUB socket's port for the first target port.
    pub port: u16,
    /// The replay socket's port for the first target port, if the servers have one.
    pub replay_port: Option<u16>,
    /// The topic the servers publish under.
    pub topic: String,
    /// Longest wait for a model server's `/tokenize`.
    pub tokenize_timeout: Duration,
    /// The pool's target ports, in the order the pool lists them.
    pub target_ports: Vec<u16>,
}

impl KvEventsSettings {
    /// Read the settings from a pool's annotations (`None` when events are not enabled); an
    /// error names the annotation (without the prefix), its value and the reason.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        target_ports: &[u16],
    ) -> Result<Option<Self>, ConfigError> {
        let config: StrategyConfig = annotations
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(KV_EVENTS_PREFIX)?.to_owned(), v.clone())))
            .collect();
        let mut params = Params::new("KV events", &config);
        let enabled = params.bool("enabled", false)?;
        let port = params.usize("port", 5557, 1..=65_535)? as u16;
        let replay_port = params.usize("replay-port", 0, 0..=65_535)? as u16;
        let topic = params.string("topic", "")?;
        let tokenize_timeout = params.millis(
            "tokenize-timeout-ms",
            Duration::from_millis(100),
            1..=60_000,
        )?;
        params.finish()?;
        if !enabled {
            return Ok(None);
        }
        let last = target_ports.len().saturating_sub(1);
        for (name, base) in [("port", port), ("replay-port", replay_port)] {
            if base != 0 && usize::from(base) + last > 65_535 {
                return Err(ConfigError::new(
                    name,
                    base.to_string(),
                    format!("the server on target port {last} would publish past port 65535"),
                ));
            }
        }
        Ok(Some(Self {
            port,
            replay_port: (replay_port != 0).then_some(replay_port),
            topic,
            tokenize_timeout,
            target_ports: target_ports.to_vec(),
        }))
    }

    /// Where the server at `address` publishes: `None` when its port is not one of the pool's
    /// target ports.
    pub fn source(&self, address: std::net::SocketAddr) -> Option<super::EventSource> {
        let k = self
            .target_ports
            .iter()
            .position(|&p| p == address.port())? as u16;
        let host = match address.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Some(super::EventSource {
            publisher: format!("tcp://{host}:{}", self.port + k),
            replay: self
                .replay_port
                .map(|port| format!("tcp://{host}:{}", port + k)),
            topic: self.topic.clone().into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{KV_EVENTS_PREFIX}{k}"), v.to_string()))
            .chain([("unrelated/annotation".to_owned(), "x".to_owned())])
            .collect()
    }

    #[test]
    fn off_unless_enabled_and_vllm_s_defaults_when_on() {
        assert_eq!(
            KvEventsSettings::from_annotations(&annotations(&[]), &[8000]),
            Ok(None)
        );
        let on = KvEventsSettings::from_annotations(&annotations(&[("enabled", "true")]), &[8000])
            .unwrap()
            .unwrap();
        assert_eq!(
            (on.port, on.replay_port, on.topic.as_str()),
            (5557, None, "")
        );
        assert_eq!(on.tokenize_timeout, Duration::from_millis(100));
        let source = on.source("10.1.2.3:8000".parse().unwrap()).unwrap();
        assert_eq!(source.publisher, "tcp://10.1.2.3:5557");
        assert_eq!(source.replay, None);
        assert_eq!(on.source("10.1.2.3:9000".parse().unwrap()), None);
    }

    #[test]
    fn the_k_th_target_port_publishes_on_port_plus_k() {
        let s = KvEventsSettings::from_annotations(
            &annotations(&[
                ("enabled", "true"),
                ("port", "6000"),
                ("replay-port", "7000"),
                ("topic", "kv-events"),
            ]),
            &[8000, 8001],
        )
        .unwrap()
        .unwrap();
        let source = s.source("[fd00::1]:8001".parse().unwrap()).unwrap();
        assert_eq!(source.publisher, "tcp://[fd00::1]:6001");
        assert_eq!(source.replay.as_deref(), Some("tcp://[fd00::1]:7001"));
        assert_eq!(source.topic, b"kv-events");
    }

    #[test]
    fn bad_values_name_their_annotation() {
        let err = KvEventsSettings::from_annotations(
            &annotations(&[("enabled", "true"), ("port", "0")]),
            &[8000],
        )
        .unwrap_err();
        assert_eq!(err.parameter, "port");
        let err = KvEventsSettings::from_annotations(
            &annotations(&[("enabled", "true"), ("port", "65535")]),
            &[8000, 8001],
        )
        .unwrap_err();
        assert_eq!(err.parameter, "port");
        let err = KvEventsSettings::from_annotations(&annotations(&[("tpoic", "x")]), &[8000])
            .unwrap_err();
        assert_eq!(err.parameter, "tpoic");
    }
}

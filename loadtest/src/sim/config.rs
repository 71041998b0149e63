//! The simulator's command line (vLLM's flag names where they exist) and the resolved internal
//! configuration the server and engine run on.
//!
//! `ServeArgs` is the file format, so to speak: it accepts what `vllm serve` accepts for this
//! use, including flags that change nothing here (`--trust-remote-code`, `--dtype`, ...).
//! `SimConfig::from_args` validates it once, naming the flag, the value and the reason on error,
//! and derives the KV capacity from the profile.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use super::engine::EngineConfig;
use super::faults::{FaultConfig, StartupMode};
use super::output::{DEFAULT_NATURAL_LENGTH, NaturalLength};
use super::profile::{PROFILES, Profile};

/// The model path vLLM would be given when none is (its `root` in `/v1/models`).
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

/// `vllm-sim [serve] [MODEL] [flags]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "vllm-sim",
    about = "A simulated vLLM OpenAI-compatible server",
    version
)]
pub struct ServeArgs {
    /// Model path or name, as `vllm serve MODEL` takes it; reported as `root` in /v1/models.
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,
    /// The same as the positional MODEL.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Names the model is served under; the first one is used in metrics.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// LoRA adapters as `name=path` (or vLLM's JSON form `{"name":..,"path":..}`).
    #[arg(long, num_args = 1..)]
    pub lora_modules: Vec<String>,
    #[arg(long)]
    pub enable_lora: bool,
    #[arg(long, default_value_t = 1)]
    pub max_loras: usize,
    /// Defaults to `--max-loras`.
    #[arg(long)]
    pub max_cpu_loras: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub max_lora_rank: usize,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Defaults to the model's context length (32768 for Qwen2.5-7B).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Use this many KV blocks instead of deriving them from the profile.
    #[arg(long)]
    pub num_gpu_blocks_override: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// Raises the per-step overhead (no CUDA graphs).
    #[arg(long)]
    pub enforce_eager: bool,
    /// Accepted and ignored.
    #[arg(long)]
    pub trust_remote_code: bool,
    /// Accepted and ignored.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Accepted and ignored.
    #[arg(long)]
    pub disable_log_requests: bool,
    /// Accepted and ignored.
    #[arg(long)]
    pub disable_log_stats: bool,
    /// Hardware + model profile.
    #[arg(long, default_value = "a10-qwen2.5-7b")]
    pub profile: String,
    /// Run the same dynamics this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Also export the V0 metric names (gpu_cache_usage_perc, num_requests_swapped, ...).
    #[arg(long)]
    pub legacy_metrics: bool,
    /// Natural (EOS) output length without ignore_eos: never, fixed:N, uniform:LOW:HIGH or
    /// lognormal:MEDIAN:SIGMA.
    #[arg(long, default_value_t = DEFAULT_NATURAL_LENGTH)]
    pub natural_output_len: NaturalLength,
    /// Fraction of completion requests answered with an injected error.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Statuses the injected errors use, chosen uniformly.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    pub fail_status: Vec<u16>,
    /// Seconds after start before /health turns ready (and requests are served).
    #[arg(long, default_value_t = 0.0)]
    pub startup_delay: f64,
    /// `unready`: listen at once but answer 503 until ready; `closed`: do not listen until
    /// ready (what vLLM itself does while loading).
    #[arg(long, value_enum, default_value_t = StartupMode::Unready)]
    pub startup_mode: StartupMode,
    /// Exit (status 1, connections cut) once this many completion requests have arrived.
    #[arg(long)]
    pub exit_after_requests: Option<u64>,
    /// Exit (status 1, connections cut) this many seconds after start.
    #[arg(long)]
    pub exit_after_secs: Option<f64>,
    /// Delay every /metrics answer by this many seconds (a large value stalls scrapes).
    #[arg(long, default_value_t = 0.0)]
    pub metrics_delay: f64,
    /// Fraction of /metrics scrapes answered with `--metrics-fail-status`.
    #[arg(long, default_value_t = 0.0)]
    pub metrics_fail_rate: f64,
    #[arg(long, default_value_t = 500)]
    pub metrics_fail_status: u16,
    /// vLLM's KV-event publisher configuration as JSON, e.g.
    /// `{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",
    /// "replay_endpoint": "tcp://*:5558", "topic": "kv"}`.
    #[arg(long)]
    pub kv_events_config: Option<String>,
}

/// An invalid flag: its name, the value given and why it is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--{flag}={value}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(flag: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A statically registered LoRA adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub path: String,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// The model path (`root`).
    pub model_root: String,
    pub served_model_names: Vec<String>,
    pub lora_enabled: bool,
    pub lora_modules: Vec<LoraModule>,
    pub profile: Profile,
    pub engine: EngineConfig,
    pub enforce_eager: bool,
    pub gpu_memory_utilization: f64,
    pub seed: u64,
    pub time_scale: f64,
    pub legacy_metrics: bool,
    pub natural_output_len: NaturalLength,
    pub faults: FaultConfig,
    /// KV events, when `--kv-events-config` turns them on.
    pub kv_events: Option<crate::sim::kv_events::KvEventsConfig>,
}

fn parse_lora_module(text: &str) -> Result<LoraModule, ConfigError> {
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid("lora-modules", text, e.to_string()))?;
        let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        return match (field("name"), field("path")) {
            (Some(name), Some(path)) => Ok(LoraModule { name, path }),
            _ => Err(invalid(
                "lora-modules",
                text,
                "JSON form needs \"name\" and \"path\"",
            )),
        };
    }
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(LoraModule {
            name: name.to_string(),
            path: path.to_string(),
        }),
        _ => Err(invalid("lora-modules", text, "expected name=path")),
    }
}

impl SimConfig {
    pub fn from_args(args: &ServeArgs) -> Result<SimConfig, ConfigError> {
        let profile = Profile::by_name(&args.profile).ok_or_else(|| {
            let known: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
            invalid(
                "profile",
                &args.profile,
                format!("known profiles: {}", known.join(", ")),
            )
        })?;
        if !(args.time_scale > 0.0 && args.time_scale.is_finite()) {
            return Err(invalid(
                "time-scale",
                args.time_scale,
                "must be a positive number",
            ));
        }
        if !(args.gpu_memory_utilization > 0.0 && args.gpu_memory_utilization <= 1.0) {
            return Err(invalid(
                "gpu-memory-utilization",
                args.gpu_memory_utilization,
                "must be in (0, 1]",
            ));
        }
        for (flag, value) in [
            ("max-num-seqs", args.max_num_seqs),
            ("max-num-batched-tokens", args.max_num_batched_tokens),
            ("block-size", args.block_size),
            ("max-loras", args.max_loras),
        ] {
            if value == 0 {
                return Err(invalid(flag, value, "must be at least 1"));
            }
        }
        let lora_modules = args
            .lora_modules
            .iter()
            .map(|m| parse_lora_module(m))
            .collect::<Result<Vec<_>, _>>()?;
        let lora_enabled = args.enable_lora || !lora_modules.is_empty();
        let max_cpu_loras = args.max_cpu_loras.unwrap_or(args.max_loras);
        if max_cpu_loras < args.max_loras {
            return Err(invalid(
                "max-cpu-loras",
                max_cpu_loras,
                format!("must be at least --max-loras ({})", args.max_loras),
            ));
        }
        let lora_slots = if lora_enabled { args.max_loras } else { 0 };
        let num_gpu_blocks = args.num_gpu_blocks_override.unwrap_or_else(|| {
            profile.kv_blocks(args.gpu_memory_utilization, args.block_size, lora_slots)
        });
        if num_gpu_blocks < 2 {
            return Err(invalid(
                "gpu-memory-utilization",
                args.gpu_memory_utilization,
                "leaves no memory for the KV cache",
            ));
        }
        let max_model_len = args
            .max_model_len
            .unwrap_or(profile.model.default_max_model_len);
        let kv_tokens = (num_gpu_blocks - 1) * args.block_size;
        if max_model_len > kv_tokens {
            return Err(invalid(
                "max-model-len",
                max_model_len,
                format!(
                    "larger than the {kv_tokens} tokens the KV cache can hold; \
                     raise --gpu-memory-utilization or lower --max-model-len"
                ),
            ));
        }
        let model_root = args
            .model_tag
            .clone()
            .or_else(|| args.model.clone())
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let served_model_names = if args.served_model_name.is_empty() {
            vec![model_root.clone()]
        } else {
            args.served_model_name.clone()
        };
        let listen: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .map_err(|_| invalid("host", &args.host, "not an IP address"))?;
        let faults = FaultConfig::from_args(args)?;
        let kv_events = match &args.kv_events_config {
            Some(text) => Some(
                crate::sim::kv_events::KvEventsConfig::parse(text)
                    .map_err(|reason| invalid("kv-events-config", text, reason))?,
            ),
            None => None,
        };
        Ok(SimConfig {
            listen,
            model_root,
            served_model_names,
            lora_enabled,
            lora_modules,
            profile,
            engine: EngineConfig {
                max_num_seqs: args.max_num_seqs,
                max_num_batched_tokens: args.max_num_batched_tokens,
                block_size: args.block_size,
                num_gpu_blocks,
                max_model_len,
                max_loras: args.max_loras,
                max_cpu_loras,
                enable_prefix_caching: !args.no_enable_prefix_caching,
            },
            enforce_eager: args.enforce_eager,
            gpu_memory_utilization: args.gpu_memory_utilization,
            seed: args.seed,
            time_scale: args.time_scale,
            legacy_metrics: args.legacy_metrics,
            natural_output_len: args.natural_output_len,
            faults,
            kv_events,
        })
    }

    /// Parses a command line (without the program name) into a validated config.
    pub fn from_command_line<I, S>(flags: I) -> Result<SimConfig, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("vllm-sim"))
            .chain(flags.into_iter().map(Into::into));
        let args = ServeArgs::try_parse_from(argv).map_err(|e| e.to_string())?;
        SimConfig::from_args(&args).map_err(|e| e.to_string())
    }

    /// The name metrics carry in `model_name`.
    pub fn primary_model_name(&self) -> &str {
        &self.served_model_names[0]
    }

    /// Real time per virtual second.
    pub fn wall(&self, virtual_seconds: f64) -> Duration {
        Duration::from_secs_f64((virtual_seconds / self.time_scale).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_command_line_is_accepted() {
        let config = SimConfig::from_command_line(
            "serve-ignored /models/Qwen-2.5-7B-Instruct --port 8000 --trust-remote-code \
             --served-model-name /model/qwen --gpu-memory-utilization 0.95 --enforce-eager \
             --enable-lora --max-loras 2 --max-cpu-loras 4 --lora-modules \
             travel-helper-v1=/models/Qwen-TravelHelper-Lora \
             travel-helper-v2=/models/Qwen-TravelHelper-Lora-v2"
                .split_whitespace()
                .skip(1),
        )
        .unwrap();
        assert_eq!(config.model_root, "/models/Qwen-2.5-7B-Instruct");
        assert_eq!(config.served_model_names, ["/model/qwen"]);
        assert_eq!(config.lora_modules.len(), 2);
        assert_eq!(config.engine.max_cpu_loras, 4);
        assert!(config.enforce_eager && config.lora_enabled);
        assert!((6_500..7_000).contains(&config.engine.num_gpu_blocks));
    }

    #[test]
    fn errors_name_the_flag_and_the_reason() {
        let error = SimConfig::from_command_line(["--profile", "h100"]).unwrap_err();
        assert!(
            error.contains("--profile=h100") && error.contains("a10-qwen2.5-7b"),
            "{error}"
        );
        let error = SimConfig::from_command_line(["--num-gpu-blocks-override", "10"]).unwrap_err();
        assert!(error.contains("--max-model-len=32768"), "{error}");
    }
}

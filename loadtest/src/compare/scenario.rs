//! The comparison scenarios: for each, the simulators' flags, the workload, how it is sent, the
//! routes compared by default, and the target figure the strategies issue sets.
//!
//! Sizes are chosen so that each scenario's default run finishes within about ten minutes on a
//! 2-core machine with every process well below a full core, and so that the effect a strategy
//! targets exists at all: KV imbalance needs output lengths that vary (the seed's run stops at
//! EOS), prefix affinity needs more distinct prefixes than one server's KV cache holds, adapter
//! affinity needs more adapters than slots. Every number is overridable from the command line.

use crate::bench::dataset::lora_mix::{LoraAssignment, LoraMixSpec};
use crate::bench::dataset::multi_turn::MultiTurnSpec;
use crate::bench::dataset::random::{RandomSpec, RangeSemantics};
use crate::bench::dataset::shared_prefix::SharedPrefixSpec;
use crate::bench::dataset::{DatasetError, Workload};
use crate::bench::request::{Backend, BodyStyle};

/// A scenario's name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioName {
    /// The seed's benchmark: random 10+1550 in / 1800 out, range 0.2, concurrency 200, as the older
    /// benchmark_serving.py ran it (lengths in [L·r, L], no ignore_eos).
    Seed,
    /// Shared-prefix groups: many long system prompts, Poisson arrivals.
    Prefix,
    /// Multi-turn chat sessions whose history grows.
    MultiTurn,
    /// Eight adapters with a Zipf popularity on servers with two LoRA slots.
    Lora,
}

impl ScenarioName {
    pub fn file_stem(self) -> &'static str {
        match self {
            ScenarioName::Seed => "seed",
            ScenarioName::Prefix => "prefix",
            ScenarioName::MultiTurn => "multi-turn",
            ScenarioName::Lora => "lora",
        }
    }
}

/// A route through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Port 8080: the HTTPRoute to the Service, round-robin over its pods.
    Plain,
    /// Port 8081: the InferencePool with this routing strategy.
    Inference(String),
}

impl Route {
    pub fn parse(text: &str) -> Route {
        match text.trim() {
            "plain" | "8080" => Route::Plain,
            strategy => Route::Inference(strategy.to_ascii_uppercase()),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Route::Plain => "8080 plain (Service round-robin)".into(),
            Route::Inference(strategy) => format!("8081 {strategy}"),
        }
    }

    pub fn short(&self) -> String {
        match self {
            Route::Plain => "8080 plain".into(),
            Route::Inference(strategy) => format!("8081 {strategy}"),
        }
    }
}

/// How requests are sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sending {
    pub backend: Backend,
    pub style: BodyStyle,
    pub ignore_eos: bool,
    pub max_concurrency: Option<usize>,
    pub request_rate: f64,
    pub initial_test_run: bool,
    /// `--model` of the client (the tokenizer id in results).
    pub model_id: String,
}

/// Everything a scenario fixes.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: ScenarioName,
    pub title: &'static str,
    /// Why the scenario looks the way it does, for the report.
    pub rationale: &'static str,
    pub sending: Sending,
    /// Adapters every simulator registers (empty: the seed's two).
    pub lora_modules: Vec<String>,
    /// Adapter names the gateway must know as InferenceModels.
    pub gateway_models: Vec<String>,
    pub default_routes: Vec<Route>,
    pub default_time_scale: f64,
    pub default_size: usize,
    /// What `--num-prompts`-like size means here.
    pub size_meaning: &'static str,
}

/// The LoRA scenario's adapters: eight, four times the `--max-loras 2` slots.
pub fn lora_adapter_names() -> Vec<String> {
    (1..=8).map(|i| format!("adapter-{i}")).collect()
}

impl Scenario {
    pub fn get(name: ScenarioName) -> Scenario {
        match name {
            ScenarioName::Seed => Scenario {
                name,
                title: "The seed's benchmark: plain route vs. inference route",
                rationale: "The seed ran `benchmark_serving.py --backend vllm --dataset-name random \
                    --random-prefix-len 10 --random-input-len 1550 --random-output-len 1800 \
                    --random-range-ratio 0.2 --num-prompts 3000 --max-concurrency 200` through \
                    ports 8080 and 8081. That older script drew lengths in [L·r, L] (input 10 + \
                    U[310, 1550], max_tokens U[360, 1800]) and did not send ignore_eos, so each \
                    answer stops at the model's EOS (the simulator's natural length: log-normal, \
                    median 256 tokens) or at max_tokens: request lengths vary widely, and \
                    round-robin, blind to them, piles long requests on some pods. The 10-token \
                    prefix is less than one KV block: there is no prefix affinity to exploit.",
                sending: Sending {
                    backend: Backend::Vllm,
                    style: BodyStyle::Legacy,
                    ignore_eos: false,
                    max_concurrency: Some(200),
                    request_rate: f64::INFINITY,
                    initial_test_run: true,
                    model_id: "/models/DeepSeek-R1-Distill-Qwen-7B".into(),
                },
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                default_routes: vec![Route::Plain, Route::Inference("DEFAULT".into())],
                default_time_scale: 2.0,
                default_size: 1500,
                size_meaning: "prompts",
            },
            ScenarioName::Prefix => Scenario {
                name,
                title: "Shared-prefix groups",
                rationale: "40 groups of 15 requests; each group shares a 6,000-token system \
                    prompt, followed by a 100-token question, and asks for 128 tokens. The 40 \
                    prefixes (240k tokens) are more than twice one A10 pod's KV cache (6,640 \
                    blocks, 106k tokens), so a router that sends every group everywhere makes \
                    each pod cycle through all of them and evict, while one that keeps a group \
                    on one pod needs 8 prefixes (48k tokens) per pod. Requests arrive as a \
                    Poisson process at 2 per second, so a 6,000-token prefill (≈1.3 s on the \
                    A10 model) is the TTFT a miss costs.",
                sending: Sending {
                    backend: Backend::Vllm,
                    style: BodyStyle::Current,
                    ignore_eos: true,
                    max_concurrency: None,
                    request_rate: 2.0,
                    initial_test_run: false,
                    model_id: "/models/Qwen-2.5-7B-Instruct".into(),
                },
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("PREFIX_CACHE".into()),
                ],
                default_time_scale: 2.0,
                default_size: 15,
                size_meaning: "prompts per group (40 groups)",
            },
            ScenarioName::MultiTurn => Scenario {
                name,
                title: "Multi-turn chat sessions",
                rationale: "60 chat sessions of 6 turns: a 1,000-token system prompt shared by \
                    all, 150-token user messages and 150-token answers, so turn 6 sends about \
                    2,700 tokens of which all but the last question were computed by the \
                    previous turn. 40 requests in flight at most (closed loop). A session's \
                    history is cached only where its previous turn ran.",
                sending: Sending {
                    backend: Backend::OpenaiChat,
                    style: BodyStyle::Current,
                    ignore_eos: true,
                    max_concurrency: Some(40),
                    request_rate: f64::INFINITY,
                    initial_test_run: false,
                    model_id: "/models/Qwen-2.5-7B-Instruct".into(),
                },
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("PREFIX_CACHE".into()),
                ],
                default_time_scale: 2.0,
                default_size: 60,
                size_meaning: "sessions (6 turns each)",
            },
            ScenarioName::Lora => Scenario {
                name,
                title: "LoRA mix: eight adapters, two slots per server",
                rationale: "Every simulator registers eight adapters with the seed's \
                    `--max-loras 2 --max-cpu-loras 4`. 20% of requests ask for the base model; \
                    the rest pick an adapter with Zipf popularity (exponent 1: adapter-1 is \
                    eight times as popular as adapter-8). Prompts 400 ± 20% tokens, answers \
                    150 ± 20% (ignore_eos), Poisson arrivals at 8 per second. A server can batch \
                    only two adapters at once; every other adapter waits for a slot and loading \
                    it costs a step (7 ms from the CPU cache, 107 ms from disk).",
                sending: Sending {
                    backend: Backend::Vllm,
                    style: BodyStyle::Current,
                    ignore_eos: true,
                    max_concurrency: None,
                    request_rate: 8.0,
                    initial_test_run: false,
                    model_id: "/models/Qwen-2.5-7B-Instruct".into(),
                },
                lora_modules: lora_adapter_names()
                    .into_iter()
                    .map(|name| format!("{name}=/models/loras/{name}"))
                    .collect(),
                gateway_models: lora_adapter_names(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("LORA_AFFINITY".into()),
                ],
                default_time_scale: 2.0,
                default_size: 1200,
                size_meaning: "requests",
            },
        }
    }

    /// The workload for `size` (see [`Scenario::size_meaning`]) and `seed`.
    pub fn workload(&self, size: usize, seed: u64) -> Result<Workload, DatasetError> {
        match self.name {
            ScenarioName::Seed => RandomSpec {
                num_prompts: size,
                prefix_len: 10,
                input_len: 1550,
                output_len: 1800,
                range_ratio: 0.2,
                semantics: RangeSemantics::Legacy,
            }
            .workload(seed),
            ScenarioName::Prefix => SharedPrefixSpec {
                groups: 40,
                prompts_per_group: size,
                system_len: 6000,
                question_len: 100,
                output_len: 128,
            }
            .workload(seed, false),
            ScenarioName::MultiTurn => MultiTurnSpec {
                sessions: size,
                turns: 6,
                system_len: 1000,
                user_len: 150,
                output_len: 150,
            }
            .workload(seed),
            ScenarioName::Lora => {
                let mut workload = RandomSpec {
                    num_prompts: size,
                    prefix_len: 0,
                    input_len: 400,
                    output_len: 150,
                    range_ratio: 0.2,
                    semantics: RangeSemantics::Current,
                }
                .workload(seed)?;
                let mix = LoraMixSpec {
                    adapters: lora_adapter_names(),
                    base_fraction: 0.2,
                    assignment: LoraAssignment::Zipf,
                    zipf_exponent: 1.0,
                };
                for (session, model) in workload.sessions.iter_mut().zip(mix.assign(size, seed)?) {
                    session.model = model;
                }
                workload
                    .description
                    .push_str("; LoRA mix: 20% base model, 8 adapters with Zipf(1) popularity");
                Ok(workload)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_builds_its_default_workload() {
        for name in [
            ScenarioName::Seed,
            ScenarioName::Prefix,
            ScenarioName::MultiTurn,
            ScenarioName::Lora,
        ] {
            let scenario = Scenario::get(name);
            let workload = scenario.workload(4, 0).unwrap();
            assert!(workload.num_requests() >= 4, "{name:?}");
        }
        let lora = Scenario::get(ScenarioName::Lora).workload(200, 0).unwrap();
        assert!(lora.sessions.iter().any(|s| s.model.is_none()));
        assert!(
            lora.sessions
                .iter()
                .any(|s| s.model.as_deref() == Some("adapter-8"))
        );
    }

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("plain"), Route::Plain);
        assert_eq!(
            Route::parse("prefix_cache"),
            Route::Inference("PREFIX_CACHE".into())
        );
    }
}

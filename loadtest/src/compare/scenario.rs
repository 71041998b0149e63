//! The comparison scenarios: for each, the simulators' flags, the workload, how it is sent, the
//! routes compared by default, and the target figure the strategies issue sets.
//!
//! Sizes are chosen so that each scenario's default run finishes within about ten minutes on a
//! 2-core machine with every process well below a full core, and so that the effect a strategy
//! targets exists at all: KV imbalance needs output lengths that vary (the seed's run stops at
//! EOS), prefix affinity needs more distinct prefixes than one server's KV cache holds, adapter
//! affinity needs more adapters than slots. The rate staircase of `optimized-baseline` keeps each
//! route's sweep within about six minutes instead. The uniform, heterogeneous and
//! optimized-baseline scenarios state their arrival rates as a fraction of what the simulated
//! pods sustain, measured by [`super::capacity`], and the tests below recompute those figures.
//! Every number is overridable from the command line.

use crate::bench::dataset::lora_mix::{LoraAssignment, LoraMixSpec};
use crate::bench::dataset::multi_turn::MultiTurnSpec;
use crate::bench::dataset::random::{RandomSpec, RangeSemantics};
use crate::bench::dataset::shared_prefix::SharedPrefixSpec;
use crate::bench::dataset::{DatasetError, Workload};
use crate::bench::request::{Backend, BodyStyle};

use super::fleet_up::ObjectiveSpec;
use super::llm_d;
use super::sweep::Sweep;

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
    /// Identical requests at a steady rate below saturation: round-robin is optimal.
    Uniform,
    /// Three A10 and two L20 pods in one pool: blind spreading overloads the A10s.
    Heterogeneous,
    /// llm-d's optimized baseline (6k-token prefixes per group) at a staircase of rates.
    OptimizedBaseline,
    /// Tenants sharing the pool: an interactive tenant alone and under a batch flood, and two
    /// equal-priority tenants of different appetite (flow control on, off, and the plain route).
    Qos,
}

impl ScenarioName {
    pub fn file_stem(self) -> &'static str {
        match self {
            ScenarioName::Seed => "seed",
            ScenarioName::Prefix => "prefix",
            ScenarioName::MultiTurn => "multi-turn",
            ScenarioName::Lora => "lora",
            ScenarioName::Uniform => "uniform",
            ScenarioName::Heterogeneous => "heterogeneous",
            ScenarioName::OptimizedBaseline => "optimized-baseline",
            ScenarioName::Qos => "qos",
        }
    }

    /// The scenarios of the strategies' table (not `qos`, whose tenants run in phases).
    pub const ALL: [ScenarioName; 7] = [
        ScenarioName::Seed,
        ScenarioName::Prefix,
        ScenarioName::MultiTurn,
        ScenarioName::Lora,
        ScenarioName::Uniform,
        ScenarioName::Heterogeneous,
        ScenarioName::OptimizedBaseline,
    ];
}

/// A route through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Port 8080: the HTTPRoute to the Service, round-robin over its pods.
    Plain,
    /// Port 8081: the InferencePool with this routing strategy.
    Inference(String),
    /// Port 8081 with the pool's flow control turned off (`STRATEGY/flow-off`): a saturated pool
    /// sends every request on to the model servers' own queues, as before flow control.
    Unqueued(String),
    /// Port 8081 with the model servers publishing KV-cache events and the pool reading them
    /// (`STRATEGY/events`): the strategy sees what each pod holds instead of estimating it.
    Evented(String),
}

/// The suffix that turns a strategy route's flow control off.
const FLOW_OFF_SUFFIX: &str = "/flow-off";
/// The suffix that turns KV-cache events on for a strategy route.
const EVENTS_SUFFIX: &str = "/events";

impl Route {
    pub fn parse(text: &str) -> Route {
        let text = text.trim();
        if text == "plain" || text == "8080" {
            return Route::Plain;
        }
        let upper = text.to_ascii_uppercase();
        if let Some(strategy) = upper.strip_suffix(&FLOW_OFF_SUFFIX.to_ascii_uppercase()) {
            return Route::Unqueued(strategy.to_owned());
        }
        match upper.strip_suffix(&EVENTS_SUFFIX.to_ascii_uppercase()) {
            Some(strategy) => Route::Evented(strategy.to_owned()),
            None => Route::Inference(upper),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Route::Plain => "8080 plain (Service round-robin)".into(),
            Route::Inference(_) => self.short(),
            Route::Unqueued(strategy) => format!("8081 {strategy}, flow control off"),
            Route::Evented(strategy) => format!("8081 {strategy}, KV events"),
        }
    }

    pub fn short(&self) -> String {
        match self {
            Route::Plain => "8080 plain".into(),
            Route::Inference(strategy) => format!("8081 {strategy}"),
            Route::Unqueued(strategy) => format!("8081 {strategy}{FLOW_OFF_SUFFIX}"),
            Route::Evented(strategy) => format!("8081 {strategy}{EVENTS_SUFFIX}"),
        }
    }

    /// The pool's routing strategy (none for the plain route).
    pub fn strategy(&self) -> Option<&str> {
        match self {
            Route::Plain => None,
            Route::Inference(strategy) | Route::Unqueued(strategy) | Route::Evented(strategy) => {
                Some(strategy)
            }
        }
    }

    /// Whether the model servers publish KV-cache events and the pool reads them.
    pub fn kv_events(&self) -> bool {
        matches!(self, Route::Evented(_))
    }

    /// Whether the pool queues requests while saturated.
    pub fn flow_control(&self) -> bool {
        !matches!(self, Route::Unqueued(_))
    }

    /// The gateway listener the route is served on.
    pub fn port(&self) -> u16 {
        match self {
            Route::Plain => super::fleet_up::PLAIN_PORT,
            _ => super::fleet_up::INFERENCE_PORT,
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

impl Sending {
    /// Today's `vllm bench serve` body with ignore_eos, every request sent on its own schedule
    /// (no concurrency limit, no test request first).
    fn open_loop() -> Sending {
        Sending {
            backend: Backend::Vllm,
            style: BodyStyle::Current,
            ignore_eos: true,
            max_concurrency: None,
            request_rate: f64::INFINITY,
            initial_test_run: false,
            model_id: "/models/Qwen-2.5-7B-Instruct".into(),
        }
    }
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
    /// InferenceObjectives on the pool (the tenants' priorities).
    pub objectives: Vec<ObjectiveSpec>,
    pub default_routes: Vec<Route>,
    /// Each simulator's `--profile` in pod order when the scenario fixes a mix (empty: the
    /// `--profile` flag for all five).
    pub default_profiles: Vec<String>,
    /// Poisson rates offered stage after stage (empty: one rate, `sending.request_rate`); the
    /// size is then the simulated seconds per stage.
    pub sweep_rates: Vec<f64>,
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
                objectives: Vec::new(),
                default_routes: vec![Route::Plain, Route::Inference("DEFAULT".into())],
                default_profiles: Vec::new(),
                sweep_rates: Vec::new(),
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
                objectives: Vec::new(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("PREFIX_CACHE".into()),
                ],
                default_profiles: Vec::new(),
                sweep_rates: Vec::new(),
                default_time_scale: 2.0,
                default_size: 15,
                size_meaning: "prompts per group (40 groups)",
            },
            ScenarioName::MultiTurn => Scenario {
                name,
                title: "Multi-turn chat sessions",
                rationale: "240 chat sessions of 6 turns: a 1,000-token system prompt shared by \
                    all, 150-token user messages and 150-token answers, so turn 6 sends about \
                    2,700 tokens of which all but the last question were computed by the \
                    previous turn. 40 requests in flight at most (closed loop). A session's \
                    history is cached only where its previous turn ran. 1,440 requests: with \
                    60 sessions (360 requests) round-robin's own runs differed by 30% at p50, \
                    too much to judge a router by.",
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
                objectives: Vec::new(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("PREFIX_CACHE".into()),
                ],
                default_profiles: Vec::new(),
                sweep_rates: Vec::new(),
                default_time_scale: 2.0,
                default_size: 240,
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
                objectives: Vec::new(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("LORA_AFFINITY".into()),
                ],
                default_profiles: Vec::new(),
                sweep_rates: Vec::new(),
                default_time_scale: 2.0,
                default_size: 1200,
                size_meaning: "requests",
            },
            ScenarioName::Uniform => Scenario {
                name,
                title: "Uniform requests below saturation",
                rationale: "2,000 identical requests: 1,024 tokens in and 128 out with ignore_eos \
                    (the defaults of `vllm bench serve`'s random dataset, range ratio 0), bodies \
                    of random text that share no prefix. Queued all at once, one simulated A10 pod \
                    with the fleet's flags completes 3.59 such requests per second (1,500 \
                    requests, completions between the 20th and the 80th percentile over the time \
                    between them: `compare::capacity`), so five sustain 18.0; Poisson arrivals at \
                    12 per second are 67% of that, loaded but never saturated. With every request the \
                    same and no prefix to reuse, an even spread is optimal and round-robin is one: \
                    a good router must match it, and what it adds over round-robin's latency is \
                    its cost. Rerun the plain route (`--routes plain,plain,…`) to see round-robin's \
                    own run-to-run noise.",
                sending: Sending {
                    backend: Backend::Vllm,
                    style: BodyStyle::Current,
                    ignore_eos: true,
                    max_concurrency: None,
                    request_rate: UNIFORM_RATE,
                    initial_test_run: false,
                    model_id: "/models/Qwen-2.5-7B-Instruct".into(),
                },
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                objectives: Vec::new(),
                default_routes: four_routes(),
                default_profiles: Vec::new(),
                sweep_rates: Vec::new(),
                default_time_scale: 2.0,
                default_size: 2000,
                size_meaning: "requests",
            },
            ScenarioName::Heterogeneous => Scenario {
                name,
                title: "Heterogeneous pool: three A10 pods and two L20 pods",
                rationale: "Pods 127.0.0.2–4 simulate `a10-qwen2.5-7b`, 127.0.0.5–6 \
                    `l20-qwen2.5-7b` (4.6 times the KV cache, 1.44 times the bandwidth, about the \
                    same compute). 1,000 requests of the random dataset, 1,000 ± 50% tokens in and \
                    1,000 ± 50% out with ignore_eos: lengths that vary like the seed's, shorter so \
                    the run fits its time budget. Queued all at once (1,500 requests, \
                    `compare::capacity`), one A10 pod completes 1.03 such requests per second and \
                    one L20 pod 2.05 (its batches of 256 are compute-bound, so its larger cache \
                    and bandwidth double the A10's rate rather than more), so the pool sustains \
                    3 × 1.03 + 2 × 2.05 = 7.2, 57% of it on the L20s. Poisson arrivals at 6 per \
                    second are 83% of that, but round-robin gives each pod 1.2 per second: 116% \
                    of what an A10 sustains, so the A10s' KV caches fill and their queues grow \
                    for the whole run while the L20s run at 59%. A router that sees queues or KV usage sends \
                    the L20s more; the per-endpoint tables show how many requests each pod took.",
                sending: Sending {
                    backend: Backend::Vllm,
                    style: BodyStyle::Current,
                    ignore_eos: true,
                    max_concurrency: None,
                    request_rate: HETEROGENEOUS_RATE,
                    initial_test_run: false,
                    model_id: "/models/Qwen-2.5-7B-Instruct".into(),
                },
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                objectives: Vec::new(),
                default_routes: four_routes(),
                default_profiles: heterogeneous_profiles(),
                sweep_rates: Vec::new(),
                default_time_scale: 2.0,
                default_size: 1000,
                size_meaning: "requests",
            },
            ScenarioName::OptimizedBaseline => Scenario {
                name,
                title: "llm-d's optimized baseline: shared-prefix groups at a staircase of rates",
                rationale: "llm-d's \"optimized baseline\" (llm-d.ai, \"KV-cache wins you can \
                    see\"): 150 groups, each a 6,000-token shared prefix followed by a 1,200-token \
                    question, 1,000 output tokens with ignore_eos, on 8 pods of 2 × H100 serving \
                    Qwen3-32B, Poisson stages from 3 to 60 QPS. Scaled by KV capacity: Qwen3-32B \
                    stores 2 × 64 layers × 8 KV heads × 128 × 2 bytes = 256 KiB per token, so a \
                    pod holds (0.9 × 2 × 81,559 MiB − 65.5 GB of weights) / 256 KiB = 337k tokens \
                    and the 8 pods 2.70M: the 150 prefixes (900k tokens) take 33.3% of the \
                    fleet's KV. Five A10 pods with the seed's flags hold 5 × 106,224 = 531k \
                    tokens; 33.3% of that is 29.5 prefixes of 6,000 tokens: 30 groups. Kept on \
                    one pod each, a pod holds 6 prefixes (36k tokens); seen everywhere, each pod \
                    cycles through all 30 (180k tokens, more than its 106k). Queued all at once \
                    (600 requests, `compare::capacity`), one A10 pod completes 0.49 requests/s \
                    seeing 6 groups and 0.24 seeing all 30: five sustain about 2.45 requests/s \
                    with perfect affinity and 1.2 without. The stages, 50 simulated seconds each \
                    at 0.25, 0.5, 1, 2, 3 and 4 requests/s, back to back on the same stack, go \
                    from a tenth of the affine capacity to 1.6 times it. A cold 7,200-token prompt takes 1.7 s to \
                    prefill on an idle A10 pod (1.9 s for a pod's first request, which also waits \
                    for the seed's two adapters to load), so a stage is sustained when its TTFT \
                    p90 is at most 2 s: requests wait for little besides their own prefill. A route's sweep is 538 requests: 300 simulated seconds of stages, \
                    then round-robin drains the backlog of its overloaded stages (about \
                    (0.8 + 1.8 + 2.8) × 50 = 270 requests at 1.2/s, 225 s) and a last answer \
                    (about 60 s): under 5 minutes at time scale 2.",
                sending: Sending::open_loop(),
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                objectives: Vec::new(),
                default_routes: vec![
                    Route::Plain,
                    Route::Inference("DEFAULT".into()),
                    Route::Inference("PREFIX_CACHE".into()),
                ],
                default_profiles: Vec::new(),
                sweep_rates: OPTIMIZED_BASELINE_RATES.to_vec(),
                default_time_scale: 2.0,
                default_size: 50,
                size_meaning: "simulated seconds per stage",
            },
            ScenarioName::Qos => Scenario {
                name,
                title: "Tenants sharing one pool: priority and fairness under load",
                rationale: "Platform teams share a pool between an interactive product, batch \
                    jobs and tenants of unequal appetite. Three phases per route, each on fresh \
                    simulators and gateway: the interactive tenant (256-token prompts ±50%, 128 \
                    output tokens, 4 requests per simulated second, objective `interactive`, \
                    priority 10) alone; the same with a batch tenant (2,048-token prompts and 512 \
                    output tokens ±20%, 256 in flight, objective `batch`, priority 0) that alone \
                    saturates the pool (five A10 pods hold about 165 such requests below the KV \
                    threshold of 0.8); and two tenants of equal priority (objective `standard`, \
                    the batch shape), `steady` with 128 requests in flight and `greedy` with 512 \
                    (and twice the requests), both more than their half of the pool. \
                    The batch and standard objectives may wait ten minutes in the queue, as \
                    throughput work can. Without flow control the model servers' first-come-first-\
                    served queues decide: the interactive tenant waits behind the batch backlog \
                    and the greedy tenant, with more requests queued, gets more service.",
                sending: Sending::open_loop(),
                lora_modules: Vec::new(),
                gateway_models: Vec::new(),
                objectives: super::qos::objectives(),
                default_routes: vec![
                    Route::Inference("DEFAULT".into()),
                    Route::Unqueued("DEFAULT".into()),
                    Route::Plain,
                ],
                default_profiles: Vec::new(),
                sweep_rates: Vec::new(),
                default_time_scale: 2.0,
                default_size: 240,
                size_meaning: "interactive requests per phase (4 per simulated second); the \
                    batch tenant sends twice as many, the steady one as many, the greedy one twice \
                    as many",
            },
        }
    }

    /// The rate staircase for `size` (seconds per stage), when the scenario has one.
    pub fn sweep(&self, size: usize) -> Option<Sweep> {
        (!self.sweep_rates.is_empty()).then(|| Sweep {
            rates: self.sweep_rates.clone(),
            stage_seconds: size as f64,
        })
    }

    /// The workload for `size` (see [`Scenario::size_meaning`]) and `seed`.
    pub fn workload(&self, size: usize, seed: u64) -> Result<Workload, DatasetError> {
        match self.name {
            ScenarioName::Qos => Err(crate::bench::dataset::invalid(
                "scenario",
                "qos sends one workload per tenant (compare::qos::phases), not one for all",
            )),
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
            ScenarioName::Uniform => RandomSpec {
                num_prompts: size,
                prefix_len: 0,
                input_len: 1024,
                output_len: 128,
                range_ratio: 0.0,
                semantics: RangeSemantics::Current,
            }
            .workload(seed),
            ScenarioName::Heterogeneous => RandomSpec {
                num_prompts: size,
                prefix_len: 0,
                input_len: 1000,
                output_len: 1000,
                range_ratio: 0.5,
                semantics: RangeSemantics::Current,
            }
            .workload(seed),
            ScenarioName::OptimizedBaseline => {
                let sweep = self
                    .sweep(size)
                    .ok_or_else(|| crate::bench::dataset::invalid("rates", "no rates"))?;
                let total = sweep.total_requests();
                let mut workload = SharedPrefixSpec {
                    groups: OPTIMIZED_BASELINE_GROUPS,
                    prompts_per_group: total.div_ceil(OPTIMIZED_BASELINE_GROUPS),
                    system_len: llm_d::PREFIX_TOKENS,
                    question_len: llm_d::QUESTION_TOKENS,
                    output_len: llm_d::OUTPUT_TOKENS,
                }
                .workload(seed, false)?;
                sweep.apply(&mut workload, seed)?;
                Ok(workload)
            }
        }
    }
}

/// plain, DEFAULT, PREFIX_CACHE, LORA_AFFINITY.
fn four_routes() -> Vec<Route> {
    vec![
        Route::Plain,
        Route::Inference("DEFAULT".into()),
        Route::Inference("PREFIX_CACHE".into()),
        Route::Inference("LORA_AFFINITY".into()),
    ]
}

/// The uniform scenario's Poisson rate: 67% of five A10 pods' capacity (see its rationale).
pub const UNIFORM_RATE: f64 = 12.0;
/// The heterogeneous scenario's Poisson rate: 83% of the mixed pool's capacity, 116% of an A10
/// pod's under round-robin (see its rationale).
pub const HETEROGENEOUS_RATE: f64 = 6.0;
/// The optimized-baseline staircase (requests per simulated second).
pub const OPTIMIZED_BASELINE_RATES: [f64; 6] = [0.25, 0.5, 1.0, 2.0, 3.0, 4.0];
/// Groups of the optimized baseline scaled to five A10 pods ([`llm_d::scaled_groups`]).
pub const OPTIMIZED_BASELINE_GROUPS: usize = 30;

/// The heterogeneous pool: 127.0.0.2–4 A10, 127.0.0.5–6 L20.
pub fn heterogeneous_profiles() -> Vec<String> {
    ["a10-qwen2.5-7b"; 3]
        .into_iter()
        .chain(["l20-qwen2.5-7b"; 2])
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_builds_its_default_workload() {
        for name in ScenarioName::ALL {
            let scenario = Scenario::get(name);
            let workload = scenario.workload(4, 0).unwrap();
            assert!(workload.num_requests() >= 4, "{name:?}");
            let full = scenario.workload(scenario.default_size, 0).unwrap();
            assert!(
                full.num_requests() >= scenario.default_size.min(500),
                "{name:?}"
            );
            assert!(!scenario.default_routes.is_empty());
            assert!(matches!(scenario.default_profiles.len(), 0 | 5), "{name:?}");
        }
        let uniform = Scenario::get(ScenarioName::Uniform)
            .workload(50, 0)
            .unwrap();
        assert!(uniform.forces_ignore_eos);
        assert!(uniform.sessions.iter().all(
            |s| s.turns[0].output_len == 128 && s.turns[0].prompt.server_tokens(false) == 1024
        ));
        let baseline = Scenario::get(ScenarioName::OptimizedBaseline);
        let workload = baseline.workload(baseline.default_size, 0).unwrap();
        assert_eq!(workload.num_requests(), 538);
        assert!(workload.sessions.iter().all(|s| s.arrival.is_some()
            && s.turns[0].output_len == 1000
            && s.group.is_some_and(|g| g < OPTIMIZED_BASELINE_GROUPS)));
        assert_eq!(
            workload.sessions[0].turns[0].prompt.server_tokens(false),
            7200
        );
        let lora = Scenario::get(ScenarioName::Lora).workload(200, 0).unwrap();
        assert!(lora.sessions.iter().any(|s| s.model.is_none()));
        assert!(
            lora.sessions
                .iter()
                .any(|s| s.model.as_deref() == Some("adapter-8"))
        );
    }

    fn capacity(profile: &str, workload: &Workload) -> f64 {
        crate::compare::capacity::saturated(profile, workload)
            .unwrap()
            .requests_per_second
    }

    #[test]
    fn the_uniform_rate_is_two_thirds_of_five_a10_pods() {
        let scenario = Scenario::get(ScenarioName::Uniform);
        let a10 = capacity("a10-qwen2.5-7b", &scenario.workload(1500, 0).unwrap());
        assert!((a10 - 3.59).abs() < 0.05, "{a10}");
        let share = UNIFORM_RATE / (5.0 * a10);
        assert!((0.6..=0.7).contains(&share), "{share}");
    }

    #[test]
    fn the_heterogeneous_rate_overloads_the_a10s_only_under_round_robin() {
        let scenario = Scenario::get(ScenarioName::Heterogeneous);
        let workload = scenario.workload(1500, 0).unwrap();
        let a10 = capacity("a10-qwen2.5-7b", &workload);
        let l20 = capacity("l20-qwen2.5-7b", &workload);
        assert!(
            (a10 - 1.03).abs() < 0.03 && (l20 - 2.05).abs() < 0.03,
            "{a10} {l20}"
        );
        let pool = 3.0 * a10 + 2.0 * l20;
        let share = HETEROGENEOUS_RATE / pool;
        assert!((0.78..=0.88).contains(&share), "{share}");
        // Round-robin's fifth of the rate is more than an A10 sustains, well within an L20.
        assert!(HETEROGENEOUS_RATE / 5.0 > 1.1 * a10);
        assert!(HETEROGENEOUS_RATE / 5.0 < 0.65 * l20);
        assert_eq!(scenario.default_profiles, heterogeneous_profiles());
    }

    #[test]
    fn the_staircase_runs_from_light_to_past_the_affine_capacity() {
        let groups = |groups: usize| {
            SharedPrefixSpec {
                groups,
                prompts_per_group: 600 / groups,
                system_len: llm_d::PREFIX_TOKENS,
                question_len: llm_d::QUESTION_TOKENS,
                output_len: llm_d::OUTPUT_TOKENS,
            }
            .workload(0, false)
            .unwrap()
        };
        // One pod seeing its fifth of the groups, and one seeing all of them.
        let affine = capacity("a10-qwen2.5-7b", &groups(OPTIMIZED_BASELINE_GROUPS / 5));
        let blind = capacity("a10-qwen2.5-7b", &groups(OPTIMIZED_BASELINE_GROUPS));
        assert!(
            (affine - 0.49).abs() < 0.02 && (blind - 0.24).abs() < 0.02,
            "{affine} {blind}"
        );
        let rates = OPTIMIZED_BASELINE_RATES;
        assert!(rates.windows(2).all(|w| w[0] < w[1]));
        // About a tenth of the affine capacity at first, and about the blind capacity by stage 3.
        assert!(rates[0] <= 0.11 * 5.0 * affine);
        assert!(rates[2] <= 5.0 * blind);
        assert!(rates[rates.len() - 1] >= 1.5 * 5.0 * affine);
    }

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("plain"), Route::Plain);
        assert_eq!(
            Route::parse("prefix_cache"),
            Route::Inference("PREFIX_CACHE".into())
        );
        let off = Route::parse("default/flow-off");
        assert_eq!(off, Route::Unqueued("DEFAULT".into()));
        assert_eq!(off.short(), "8081 DEFAULT/flow-off");
        assert_eq!(Route::parse(&off.short().replace("8081 ", "")), off);
        assert!(!off.flow_control() && Route::Plain.flow_control());
        assert_eq!((off.port(), Route::Plain.port()), (8081, 8080));
        let events = Route::parse("prefix_cache/events");
        assert_eq!(events, Route::Evented("PREFIX_CACHE".into()));
        assert_eq!(events.short(), "8081 PREFIX_CACHE/events");
        assert_eq!(Route::parse(&events.short().replace("8081 ", "")), events);
        assert!(events.kv_events() && events.flow_control() && !off.kv_events());
        assert_eq!(events.strategy(), Some("PREFIX_CACHE"));
    }
}

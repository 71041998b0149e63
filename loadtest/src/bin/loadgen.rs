//! `loadgen`: the benchmark client. Wiring only: flags (named as `vllm bench serve` names them,
//! so the seed's command line runs with only the program name changed), the workload, the run,
//! the printed summary and the saved JSON. The work is in `loadtest::bench`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use loadtest::bench::dataset::lora_mix::{LoraAssignment, LoraMixSpec};
use loadtest::bench::dataset::multi_turn::MultiTurnSpec;
use loadtest::bench::dataset::random::{RandomSpec, RangeSemantics};
use loadtest::bench::dataset::shared_prefix::SharedPrefixSpec;
use loadtest::bench::dataset::{Workload, trace};
use loadtest::bench::observed::run_observed;
use loadtest::bench::prefix_bound::DEFAULT_BLOCK_SIZE;
use loadtest::bench::request::{Backend, BodyStyle, RequestShape, default_request_id_prefix};
use loadtest::bench::result::{render_text, result_file_name, timestamp_utc, to_json};
use loadtest::bench::runner::RunPlan;
use loadtest::bench::summary::{Metric, RunSettings, SummaryOptions, summarize};
use loadtest::bench::tenants::{TenantSpec, jain_index, run_tenants as tenant_runs};
use loadtest::client::StreamClient;
use serde_json::json;

/// Which workload to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DatasetName {
    /// `vllm bench serve`'s random dataset (`--random-*`).
    Random,
    /// Groups sharing a long system prompt (`--shared-prefix-*`).
    SharedPrefix,
    /// Chat sessions whose history grows (`--multi-turn-*`).
    MultiTurn,
    /// A JSONL trace with timestamps (`--trace`).
    Trace,
}

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Benchmark an OpenAI-compatible server the way `vllm bench serve` does"
)]
struct Args {
    #[arg(long, value_enum, default_value = "openai")]
    backend: Backend,
    /// Server base URL (overrides --host/--port).
    #[arg(long)]
    base_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Default: /v1/completions, or /v1/chat/completions for openai-chat.
    #[arg(long)]
    endpoint: Option<String>,
    /// The model (tokenizer id); asked from GET /v1/models when absent.
    #[arg(long)]
    model: Option<String>,
    /// The request's `model` field; defaults to --model.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Accepted for compatibility; the simulated tokenizer is always used.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Accepted for compatibility.
    #[arg(long)]
    trust_remote_code: bool,
    #[arg(long, value_enum, default_value = "random")]
    dataset_name: DatasetName,
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Requests per second (`inf`: all at once).
    #[arg(long, default_value = "inf")]
    request_rate: f64,
    /// Gamma shape of the arrival gaps; 1 is Poisson.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,

    #[arg(long, default_value_t = 0)]
    random_prefix_len: usize,
    #[arg(long, default_value_t = 1024)]
    random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    random_output_len: usize,
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// `current`: [L(1−r), L(1+r)]; `legacy`: [L·r, L] (benchmark_serving.py before v0.8.5).
    #[arg(long, value_enum, default_value = "current")]
    random_range_semantics: RangeSemantics,

    #[arg(long, default_value_t = 20)]
    shared_prefix_groups: usize,
    #[arg(long, default_value_t = 10)]
    shared_prefix_prompts_per_group: usize,
    #[arg(long, default_value_t = 2000)]
    shared_prefix_system_len: usize,
    #[arg(long, default_value_t = 100)]
    shared_prefix_question_len: usize,
    #[arg(long, default_value_t = 128)]
    shared_prefix_output_len: usize,

    #[arg(long, default_value_t = 20)]
    multi_turn_sessions: usize,
    #[arg(long, default_value_t = 5)]
    multi_turn_turns: usize,
    #[arg(long, default_value_t = 500)]
    multi_turn_system_len: usize,
    #[arg(long, default_value_t = 100)]
    multi_turn_user_len: usize,
    #[arg(long, default_value_t = 100)]
    multi_turn_output_len: usize,

    /// Adapters to spread requests over (names, or name=path as vLLM takes them).
    #[arg(long, num_args = 1..)]
    lora_modules: Vec<String>,
    #[arg(long, value_enum, default_value = "zipf")]
    lora_assignment: LoraAssignment,
    /// Popularity of the adapter of rank k ∝ 1/k^s; 0 is uniform.
    #[arg(long, default_value_t = 0.0)]
    lora_zipf_exponent: f64,
    /// Share of requests for the base model.
    #[arg(long, default_value_t = 0.0)]
    lora_base_fraction: f64,

    #[arg(long)]
    trace: Option<PathBuf>,
    #[arg(long, default_value_t = trace::DEFAULT_BLOCK_TOKENS)]
    trace_block_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    trace_speedup: f64,

    /// Request bodies of today's client, or of the older benchmark_serving.py.
    #[arg(long, value_enum, default_value = "current")]
    body_style: BodyStyle,
    /// Send ignore_eos (forced for the random dataset under the current rules).
    #[arg(long)]
    ignore_eos: bool,
    /// Send the first request once before the run, as the older scripts did.
    #[arg(long)]
    initial_test_run: bool,
    #[arg(long, default_value = "ttft,tpot,itl")]
    percentile_metrics: String,
    #[arg(long, default_value = "99")]
    metric_percentiles: String,
    /// SLOs as metric:milliseconds (ttft, tpot, e2el).
    #[arg(long, num_args = 1..)]
    goodput: Vec<String>,
    #[arg(long)]
    request_id_prefix: Option<String>,
    /// Extra request headers as KEY=VALUE.
    #[arg(long, num_args = 1..)]
    header: Vec<String>,

    #[arg(long)]
    save_result: bool,
    #[arg(long)]
    result_dir: Option<PathBuf>,
    #[arg(long)]
    result_filename: Option<String>,
    #[arg(long)]
    label: Option<String>,
    /// Extra key=value pairs for the saved JSON.
    #[arg(long, num_args = 1..)]
    metadata: Vec<String>,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    disable_tqdm: bool,

    /// A tenant, as `name=…,objective=…,fairness=…,model=…,rate=…,concurrency=…,prompts=…,
    /// input=…,output=…,range=…,delay=…` (repeatable): every tenant runs at once (after its
    /// delay in seconds) with its own random
    /// dataset, rate and headers, and is summarized on its own (the dataset flags are ignored).
    #[arg(long)]
    tenant: Vec<String>,

    /// Model servers whose /metrics to scrape during the run (base URLs).
    #[arg(long, num_args = 1..)]
    scrape: Vec<String>,
    #[arg(long, default_value_t = 250)]
    scrape_interval_ms: u64,
    /// The servers are simulators running this many times faster than their model: report
    /// simulated seconds (and read --request-rate and trace timestamps in them).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
}

fn key_value(text: &str, flag: &str) -> anyhow::Result<(String, String)> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .with_context(|| format!("--{flag} {text:?}: expected KEY=VALUE"))
}

fn summary_options(args: &Args) -> anyhow::Result<SummaryOptions> {
    let metrics = args
        .percentile_metrics
        .split(',')
        .map(|m| Metric::parse(m).with_context(|| format!("--percentile-metrics: unknown {m:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let percentiles = args
        .metric_percentiles
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .with_context(|| format!("--metric-percentiles: {p:?} is not in [0, 100]"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let goodput = args
        .goodput
        .iter()
        .map(|slo| {
            let (metric, ms) = slo
                .split_once(':')
                .with_context(|| format!("--goodput {slo:?}: expected metric:ms"))?;
            let metric = Metric::parse(metric)
                .filter(|m| *m != Metric::Itl)
                .with_context(|| format!("--goodput: {metric:?} is not ttft, tpot or e2el"))?;
            let ms: f64 = ms
                .parse()
                .with_context(|| format!("--goodput {slo:?}: not a number"))?;
            Ok((metric, ms))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(SummaryOptions {
        metrics,
        percentiles,
        goodput,
    })
}

fn build_workload(args: &Args) -> anyhow::Result<Workload> {
    let mut workload = match args.dataset_name {
        DatasetName::Random => RandomSpec {
            num_prompts: args.num_prompts,
            prefix_len: args.random_prefix_len,
            input_len: args.random_input_len,
            output_len: args.random_output_len,
            range_ratio: args.random_range_ratio,
            semantics: args.random_range_semantics,
        }
        .workload(args.seed)?,
        DatasetName::SharedPrefix => SharedPrefixSpec {
            groups: args.shared_prefix_groups,
            prompts_per_group: args.shared_prefix_prompts_per_group,
            system_len: args.shared_prefix_system_len,
            question_len: args.shared_prefix_question_len,
            output_len: args.shared_prefix_output_len,
        }
        .workload(args.seed, args.backend.is_chat())?,
        DatasetName::MultiTurn => {
            if !args.backend.is_chat() {
                bail!("--dataset-name multi-turn needs --backend openai-chat");
            }
            MultiTurnSpec {
                sessions: args.multi_turn_sessions,
                turns: args.multi_turn_turns,
                system_len: args.multi_turn_system_len,
                user_len: args.multi_turn_user_len,
                output_len: args.multi_turn_output_len,
            }
            .workload(args.seed)?
        }
        DatasetName::Trace => {
            let path = args
                .trace
                .as_ref()
                .context("--dataset-name trace needs --trace")?;
            trace::load(path, args.trace_block_tokens, args.trace_speedup, args.seed)?
        }
    };
    if !args.lora_modules.is_empty() {
        let adapters: Vec<String> = args
            .lora_modules
            .iter()
            .map(|m| {
                m.split_once('=')
                    .map_or(m.as_str(), |(name, _)| name)
                    .to_string()
            })
            .collect();
        let mix = LoraMixSpec {
            adapters,
            base_fraction: args.lora_base_fraction,
            assignment: args.lora_assignment,
            zipf_exponent: args.lora_zipf_exponent,
        };
        let picks = mix.assign(workload.sessions.len(), args.seed)?;
        for (session, pick) in workload.sessions.iter_mut().zip(picks) {
            if session.model.is_none() {
                session.model = pick;
            }
        }
        workload.description.push_str(&format!(
            "; LoRA mix over {} adapters ({:?}, exponent {}, base share {})",
            mix.adapters.len(),
            mix.assignment,
            mix.zipf_exponent,
            mix.base_fraction
        ));
    }
    Ok(workload)
}

async fn resolve_model(client: &StreamClient, base: &str) -> anyhow::Result<(String, String)> {
    let (status, body) = client
        .request(http::Method::GET, &format!("{base}/v1/models"), None)
        .await
        .context("GET /v1/models")?;
    if status != 200 {
        bail!("GET /v1/models answered {status}; pass --model");
    }
    let models: serde_json::Value = serde_json::from_slice(&body)?;
    let first = &models["data"][0];
    let id = first["id"]
        .as_str()
        .context("/v1/models has no data[0].id")?;
    let root = first["root"].as_str().unwrap_or(id);
    Ok((id.to_string(), root.to_string()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    let base = base.trim_end_matches('/').to_string();
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| args.backend.default_endpoint().to_string());
    let client = StreamClient::new(args.max_concurrency.unwrap_or(256).max(1));
    let (model_id, served) = match &args.model {
        Some(model) => (
            model.clone(),
            args.served_model_name.clone().unwrap_or(model.clone()),
        ),
        None => {
            let (id, root) = resolve_model(&client, &base).await?;
            (root, args.served_model_name.clone().unwrap_or(id))
        }
    };
    let options = summary_options(&args)?;
    if !args.tenant.is_empty() {
        return run_tenants(&args, &base, &endpoint, client, model_id, served, options).await;
    }
    let workload = build_workload(&args)?;
    let plan = base_plan(
        &args,
        &base,
        &endpoint,
        &served,
        args.ignore_eos || workload.forces_ignore_eos,
    )?;
    let description = workload.description.clone();
    let num_requests = workload.num_requests();
    eprintln!("{description}");
    let observed = run_observed(
        plan,
        workload,
        client,
        args.scrape.clone(),
        Duration::from_millis(args.scrape_interval_ms.max(10)),
    )
    .await?;
    let settings = RunSettings {
        backend: args.backend.name().to_string(),
        label: args.label.clone(),
        model_id: model_id.clone(),
        tokenizer_id: args.tokenizer.clone().unwrap_or(model_id),
        num_prompts: num_requests,
        request_rate: args.request_rate,
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency,
        time_scale: args.time_scale,
    };
    let summary = summarize(
        &observed.output.records,
        observed.output.duration,
        settings.clone(),
        options,
    );
    print!("{}", render_text(&summary));
    let bound = observed.output.bound_hit_rate;
    if !args.scrape.is_empty() {
        let servers = &observed.servers;
        println!(
            "servers: prefix-cache hit rate {:.1}% (best achievable {:.1}%), preemptions {}, adapter loads {} ({} from disk), KV spread {:.3}, KV CV {:.3}",
            servers.prefix_hit_rate * 100.0,
            bound * 100.0,
            servers.preemptions,
            servers.lora_gpu_loads,
            servers.lora_disk_loads,
            servers.kv_spread,
            servers.kv_cv
        );
    }
    if args.save_result || args.result_filename.is_some() {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let date = timestamp_utc(unix);
        let mut extras = json!({
            "workload": description,
            "time_scale": args.time_scale,
            "body_style": args.body_style,
            "range_semantics": args.random_range_semantics,
            "served_model_name": served,
            "best_achievable_prefix_hit_rate": bound,
        });
        if !args.scrape.is_empty() {
            extras["servers"] = serde_json::to_value(&observed.servers)?;
        }
        let mut result = to_json(&summary, &date, extras);
        for pair in &args.metadata {
            let (key, value) = key_value(pair, "metadata")?;
            result[key] = json!(value);
        }
        save_result(&args, &result_file_name(&settings, &date), &result)?;
    }
    Ok(())
}

/// Write `result` to `--result-filename` (else `default_name`) in `--result-dir`.
fn save_result(args: &Args, default_name: &str, result: &serde_json::Value) -> anyhow::Result<()> {
    let name = args
        .result_filename
        .clone()
        .unwrap_or_else(|| default_name.to_owned());
    let path = match &args.result_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join(name)
        }
        None => PathBuf::from(name),
    };
    std::fs::write(&path, serde_json::to_string_pretty(result)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("saved {}", path.display());
    Ok(())
}

/// The run's request shape and plan before any workload (shared by the tenant mode).
fn base_plan(
    args: &Args,
    base: &str,
    endpoint: &str,
    served: &str,
    ignore_eos: bool,
) -> anyhow::Result<RunPlan> {
    let extra_headers = args
        .header
        .iter()
        .map(|h| key_value(h, "header"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shape = RequestShape {
        url: format!("{base}{endpoint}"),
        backend: args.backend,
        style: args.body_style,
        ignore_eos,
        api_key: std::env::var("OPENAI_API_KEY").ok(),
        request_id_prefix: args
            .request_id_prefix
            .clone()
            .unwrap_or_else(|| default_request_id_prefix(args.seed)),
        extra_headers,
        more_urls: Vec::new(),
    };
    Ok(RunPlan {
        shape,
        served_model: served.to_owned(),
        max_concurrency: args.max_concurrency,
        request_rate: args.request_rate,
        burstiness: args.burstiness,
        seed: args.seed,
        progress: !args.disable_tqdm && std::env::var_os("CI").is_none(),
        initial_test_run: args.initial_test_run,
        block_size: DEFAULT_BLOCK_SIZE,
        time_scale: args.time_scale,
    })
}

/// `--tenant` mode: every tenant at once, a summary per tenant, Jain's index over their output
/// token rates, and one JSON with a section per tenant.
async fn run_tenants(
    args: &Args,
    base: &str,
    endpoint: &str,
    client: StreamClient,
    model_id: String,
    served: String,
    options: SummaryOptions,
) -> anyhow::Result<()> {
    if !args.scrape.is_empty() {
        bail!("--scrape is not supported with --tenant");
    }
    let tenants = args
        .tenant
        .iter()
        .map(|t| TenantSpec::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    // The random dataset forces ignore_eos under the current rules, as in a single run.
    let plan = base_plan(args, base, endpoint, &served, true)?;
    for tenant in &tenants {
        eprintln!(
            "tenant {}: {} requests of {} in / {} out at {} req/s{}",
            tenant.name,
            tenant.prompts,
            tenant.input,
            tenant.output,
            tenant.rate,
            tenant
                .objective
                .as_deref()
                .map(|o| format!(", objective {o}"))
                .unwrap_or_default()
        );
    }
    let outputs = tenant_runs(&tenants, &plan, client).await?;
    let mut sections = serde_json::Map::new();
    let mut rates = Vec::new();
    for (tenant, output) in tenants.iter().zip(&outputs) {
        let settings = RunSettings {
            backend: args.backend.name().to_string(),
            label: Some(tenant.name.clone()),
            model_id: model_id.clone(),
            tokenizer_id: args.tokenizer.clone().unwrap_or(model_id.clone()),
            num_prompts: tenant.prompts,
            request_rate: tenant.rate,
            burstiness: args.burstiness,
            max_concurrency: tenant.concurrency,
            time_scale: args.time_scale,
        };
        let summary = summarize(&output.records, output.duration, settings, options.clone());
        println!("== tenant {} ==", tenant.name);
        print!("{}", render_text(&summary));
        rates.push(summary.output_throughput);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut section = to_json(
            &summary,
            &timestamp_utc(unix),
            json!({"tenant": tenant.name}),
        );
        section["objective"] = json!(tenant.objective);
        section["fairness_id"] = json!(tenant.fairness);
        sections.insert(tenant.name.clone(), section);
    }
    let jain = jain_index(&rates);
    println!("Jain's fairness index over the tenants' output token rates: {jain:.3}");
    if args.save_result || args.result_filename.is_some() {
        let result = json!({
            "tenants": sections,
            "jain_index_output_throughput": jain,
            "time_scale": args.time_scale,
            "served_model_name": served,
        });
        save_result(args, "tenants.json", &result)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

//! Model-server engines and their metric dialects: reading the few signals routing needs from a
//! model server's Prometheus text page.
//!
//! A vLLM page is mostly histogram buckets (tens of kilobytes); routing needs about six series.
//! The parser walks the page line by line, compares each line's metric name with the engine's
//! small table, and parses labels and values only of the lines it wants. Nothing is allocated
//! per line. Engine tables follow the Gateway API Inference Extension's model-server protocol.

use plugins::{EndpointMetrics, LoraState};

/// The metric dialect of a model server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// vLLM V1 names, with V0 fallbacks.
    #[default]
    Vllm,
    /// SGLang.
    Sglang,
    /// `trtllm-serve`.
    Trtllm,
    /// Triton with the TensorRT-LLM backend.
    Triton,
}

impl Engine {
    /// From the pool annotation `inference.networking.x-k8s.io/model-server-runtime` or the pod
    /// label `inference.networking.k8s.io/engine-type`.
    pub fn parse(value: &str) -> Option<Engine> {
        match value.trim().to_ascii_lowercase().as_str() {
            "vllm" => Some(Engine::Vllm),
            "sglang" => Some(Engine::Sglang),
            "trtllm" | "trt-llm" | "trtllm-serve" | "tensorrt-llm" => Some(Engine::Trtllm),
            "triton" | "triton-trtllm" | "triton-tensorrt-llm" => Some(Engine::Triton),
            _ => None,
        }
    }

    fn table(self) -> &'static [Rule] {
        match self {
            Engine::Vllm => VLLM,
            Engine::Sglang => SGLANG,
            Engine::Trtllm => TRTLLM,
            Engine::Triton => TRITON,
        }
    }
}

/// What a matched series feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Waiting,
    Running,
    /// KV usage, preferred.
    KvUsage,
    /// KV usage under an older name, used only when the preferred one is absent.
    KvUsageFallback,
    /// vLLM's `lora_requests_info`.
    LoraInfo,
    /// Block size and count from labels (`block_size`/`num_gpu_blocks`, `page_size`/`num_pages`).
    CacheConfig {
        block_size: &'static str,
        num_blocks: &'static str,
    },
    BlockSize,
    NumBlocks,
}

/// A series name, optionally with a required label value, and what it feeds.
#[derive(Debug, Clone, Copy)]
struct Rule {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    signal: Signal,
}

const fn rule(name: &'static str, signal: Signal) -> Rule {
    Rule {
        name,
        label: None,
        signal,
    }
}

const VLLM: &[Rule] = &[
    rule("vllm:num_requests_waiting", Signal::Waiting),
    rule("vllm:num_requests_running", Signal::Running),
    rule("vllm:kv_cache_usage_perc", Signal::KvUsage),
    rule("vllm:gpu_cache_usage_perc", Signal::KvUsageFallback),
    rule("vllm:lora_requests_info", Signal::LoraInfo),
    rule(
        "vllm:cache_config_info",
        Signal::CacheConfig {
            block_size: "block_size",
            num_blocks: "num_gpu_blocks",
        },
    ),
];

const SGLANG: &[Rule] = &[
    rule("sglang:num_queue_reqs", Signal::Waiting),
    rule("sglang:num_running_reqs", Signal::Running),
    rule("sglang:token_usage", Signal::KvUsage),
    rule(
        "sglang:cache_config_info",
        Signal::CacheConfig {
            block_size: "page_size",
            num_blocks: "num_pages",
        },
    ),
];

const TRTLLM: &[Rule] = &[
    rule("trtllm_num_requests_waiting", Signal::Waiting),
    rule("trtllm_num_requests_running", Signal::Running),
    rule("trtllm_kv_cache_utilization", Signal::KvUsage),
    rule("trtllm_kv_cache_tokens_per_block", Signal::BlockSize),
    rule("trtllm_kv_cache_max_blocks", Signal::NumBlocks),
];

const TRITON: &[Rule] = &[
    Rule {
        name: "nv_trt_llm_request_metrics",
        label: Some(("request_type", "waiting")),
        signal: Signal::Waiting,
    },
    Rule {
        name: "nv_trt_llm_request_metrics",
        label: Some(("request_type", "scheduled")),
        signal: Signal::Running,
    },
    Rule {
        name: "nv_trt_llm_kv_cache_block_metrics",
        label: Some(("kv_cache_block_type", "fraction")),
        signal: Signal::KvUsage,
    },
    Rule {
        name: "nv_trt_llm_kv_cache_block_metrics",
        label: Some(("kv_cache_block_type", "tokens_per")),
        signal: Signal::BlockSize,
    },
    Rule {
        name: "nv_trt_llm_kv_cache_block_metrics",
        label: Some(("kv_cache_block_type", "max")),
        signal: Signal::NumBlocks,
    },
];

/// Why a page could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The page has none of the engine's queue and KV series.
    #[error("no {0:?} queue or KV-cache metrics on the page")]
    NoSignals(Engine),
}

/// The value of label `name` in a label set `{a="1",b="x"}` (without braces), unescaped only for
/// the common case of no escapes.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        let after = rest[eq + 1..].strip_prefix('"')?;
        // Find the closing quote, skipping escaped ones.
        let bytes = after.as_bytes();
        let mut end = 0;
        while end < bytes.len() && (bytes[end] != b'"' || (end > 0 && bytes[end - 1] == b'\\')) {
            end += 1;
        }
        if key == name {
            return Some(&after[..end]);
        }
        rest = after.get(end + 1..)?.trim_start_matches(',');
    }
    None
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parse `page` with `engine`'s names.
pub fn parse(page: &str, engine: Engine) -> Result<EndpointMetrics, ParseError> {
    let table = engine.table();
    let mut metrics = EndpointMetrics::default();
    let (mut waiting, mut running, mut kv, mut kv_fallback) =
        (None::<f64>, None::<f64>, None::<f64>, None::<f64>);
    let mut lora: Option<(f64, LoraState)> = None;
    let mut rest = page;
    while !rest.is_empty() {
        let (line, next) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = next;
        let Some(first) = line.as_bytes().first() else {
            continue;
        };
        if *first == b'#' {
            // The exposition format groups a family's samples after its `# TYPE` line: skip a
            // family we do not read (histogram buckets are most of the page) at memchr speed. A
            // family name is a prefix of its samples' names (`x` for `x_info`, `x_total`).
            if let Some(family) = line.strip_prefix("# TYPE ")
                && let Some(name) = family.split(' ').next()
                && !table.iter().any(|r| r.name.starts_with(name))
            {
                rest = match memchr::memmem::find(rest.as_bytes(), b"\n#") {
                    Some(_) if rest.starts_with('#') => rest,
                    Some(i) => &rest[i + 1..],
                    None if rest.starts_with('#') => rest,
                    None => "",
                };
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !table.iter().any(|r| r.name == name) {
            continue;
        }
        let (labels, rest) = if line.as_bytes().get(name_end) == Some(&b'{') {
            match line[name_end + 1..].rfind('}') {
                Some(close) => (
                    &line[name_end + 1..name_end + 1 + close],
                    &line[name_end + 2 + close..],
                ),
                None => continue,
            }
        } else {
            ("", &line[name_end..])
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        for rule in table.iter().filter(|r| r.name == name) {
            if let Some((key, expected)) = rule.label
                && label(labels, key) != Some(expected)
            {
                continue;
            }
            if metrics.model_name.is_none()
                && let Some(model) = label(labels, "model_name")
            {
                metrics.model_name = Some(model.to_owned());
            }
            // Data-parallel engines report one series each: counts add up, usage takes the max.
            match rule.signal {
                Signal::Waiting => *waiting.get_or_insert(0.0) += value,
                Signal::Running => *running.get_or_insert(0.0) += value,
                Signal::KvUsage => kv = Some(kv.map_or(value, |k: f64| k.max(value))),
                Signal::KvUsageFallback => {
                    kv_fallback = Some(kv_fallback.map_or(value, |k: f64| k.max(value)))
                }
                Signal::LoraInfo => {
                    // Every label combination ever seen stays in the registry; the newest (the
                    // largest timestamp value) is the current state.
                    if lora.as_ref().is_none_or(|(newest, _)| value > *newest) {
                        let state = LoraState {
                            max_loras: label(labels, "max_lora")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0),
                            running: split_list(
                                label(labels, "running_lora_adapters").unwrap_or(""),
                            ),
                            waiting: split_list(
                                label(labels, "waiting_lora_adapters").unwrap_or(""),
                            ),
                        };
                        lora = Some((value, state));
                    }
                }
                Signal::CacheConfig {
                    block_size,
                    num_blocks,
                } => {
                    metrics.block_size = label(labels, block_size)
                        .and_then(|v| v.parse().ok())
                        .or(metrics.block_size);
                    metrics.num_blocks = label(labels, num_blocks)
                        .and_then(|v| v.parse().ok())
                        .or(metrics.num_blocks);
                }
                Signal::BlockSize => metrics.block_size = Some(value as u32),
                Signal::NumBlocks => metrics.num_blocks = Some(value as u64),
            }
        }
    }
    let kv = kv.or(kv_fallback);
    if waiting.is_none() && running.is_none() && kv.is_none() {
        return Err(ParseError::NoSignals(engine));
    }
    metrics.waiting = waiting.unwrap_or(0.0).round() as u32;
    metrics.running = running.unwrap_or(0.0).round() as u32;
    metrics.kv_usage = kv.unwrap_or(0.0).clamp(0.0, 1.0);
    metrics.lora = lora.map(|(_, state)| state);
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM_PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="/model/qwen"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="/model/qwen"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="/model/qwen"} 0.4375
vllm:gpu_cache_usage_perc{engine="0",model_name="/model/qwen"} 0.9
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="travel-helper-v1",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="travel-helper-v1, travel-helper-v2",waiting_lora_adapters="x"} 1.8e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.6e9
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.95",num_gpu_blocks="7000"} 1.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="/model/qwen"} 0.0
vllm:num_requests_waiting_total{engine="0"} 99
"#;

    #[test]
    fn reads_vllm_v1_with_the_newest_lora_series() {
        let m = parse(VLLM_PAGE, Engine::Vllm).unwrap();
        assert_eq!((m.running, m.waiting), (12, 3));
        assert_eq!(
            m.kv_usage, 0.4375,
            "kv_cache_usage_perc wins over the V0 name"
        );
        assert_eq!(m.model_name.as_deref(), Some("/model/qwen"));
        let lora = m.lora.as_ref().unwrap();
        assert_eq!(lora.max_loras, 2);
        assert_eq!(lora.running, vec!["travel-helper-v1", "travel-helper-v2"]);
        assert_eq!(lora.waiting, vec!["x"]);
        assert_eq!((m.block_size, m.num_blocks), (Some(16), Some(7000)));
        assert_eq!(m.kv_capacity_tokens(), Some(112_000));
    }

    #[test]
    fn falls_back_to_v0_kv_usage_and_sums_data_parallel_engines() {
        let page = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2\n\
                    vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 3\n\
                    vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n";
        let m = parse(page, Engine::Vllm).unwrap();
        assert_eq!(m.running, 5);
        assert_eq!(m.kv_usage, 0.25);
        assert!(m.lora.is_none());
    }

    #[test]
    fn other_engines() {
        let sglang = "sglang:num_queue_reqs{model_name=\"m\"} 4\nsglang:num_running_reqs 7\nsglang:token_usage 0.5\n\
                      sglang:cache_config_info{page_size=\"1\",num_pages=\"9000\"} 1\n";
        let m = parse(sglang, Engine::Sglang).unwrap();
        assert_eq!(
            (m.waiting, m.running, m.kv_usage, m.block_size, m.num_blocks),
            (4, 7, 0.5, Some(1), Some(9000))
        );
        let triton = "nv_trt_llm_request_metrics{model=\"t\",request_type=\"waiting\",version=\"1\"} 2\n\
                      nv_trt_llm_request_metrics{model=\"t\",request_type=\"scheduled\",version=\"1\"} 6\n\
                      nv_trt_llm_request_metrics{model=\"t\",request_type=\"active\",version=\"1\"} 8\n\
                      nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"} 0.3\n\
                      nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"tokens_per\"} 64\n";
        let m = parse(triton, Engine::Triton).unwrap();
        assert_eq!(
            (m.waiting, m.running, m.kv_usage, m.block_size),
            (2, 6, 0.3, Some(64))
        );
        let trt = "trtllm_num_requests_waiting 1\ntrtllm_num_requests_running 2\ntrtllm_kv_cache_utilization 0.1\n";
        assert_eq!(parse(trt, Engine::Trtllm).unwrap().running, 2);
    }

    #[test]
    fn pages_without_signals_are_errors() {
        assert_eq!(
            parse("# nothing\nfoo 1\n", Engine::Vllm),
            Err(ParseError::NoSignals(Engine::Vllm))
        );
        assert!(parse("vllm:num_requests_running{", Engine::Vllm).is_err());
        assert!(parse("vllm:num_requests_running NaN\n", Engine::Vllm).is_err());
    }

    #[test]
    fn families_are_skipped_whole_but_info_families_are_read() {
        let page = "# HELP vllm:e2e histogram\n# TYPE vllm:e2e histogram\n\
                    vllm:e2e_bucket{le=\"1\"} 3\nvllm:num_requests_running 99\n\
                    # TYPE vllm:cache_config info\n\
                    vllm:cache_config_info{block_size=\"32\",num_gpu_blocks=\"10\"} 1\n\
                    # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 4\n";
        let m = parse(page, Engine::Vllm).unwrap();
        assert_eq!(m.running, 4, "samples inside a skipped family are not read");
        assert_eq!(m.block_size, Some(32));
    }

    #[test]
    fn labels_with_commas_and_escaped_quotes() {
        assert_eq!(label(r#"a="1,2",b="x\"y",c="z""#, "c"), Some("z"));
        assert_eq!(label(r#"a="1,2",b="x""#, "a"), Some("1,2"));
        assert_eq!(label("", "a"), None);
    }

    #[test]
    fn engine_names() {
        assert_eq!(Engine::parse("vLLM"), Some(Engine::Vllm));
        assert_eq!(Engine::parse("sglang"), Some(Engine::Sglang));
        assert_eq!(Engine::parse("trtllm"), Some(Engine::Trtllm));
        assert_eq!(Engine::parse("llama.cpp"), None);
    }
}

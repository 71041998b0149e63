//! Several tenants in one run: each with its own random dataset shape, arrival rate, concurrency
//! limit, InferenceObjective and fairness id, sent at the same time through one connection pool,
//! and summarized separately. This is what a shared pool sees when an interactive product, a
//! batch job and a noisy neighbour use it at once.
//!
//! A tenant is written as comma-separated `key=value` pairs (`loadgen --tenant …`):
//!
//! | Key | Default | Meaning |
//! |---|---|---|
//! | `name` | required | the tenant's name in the results; also its fairness id unless `fairness` is given |
//! | `objective` | none | sent as `x-gateway-inference-objective` |
//! | `fairness` | the name | sent as `x-gateway-inference-fairness-id` |
//! | `model` | the run's | the request's `model` |
//! | `rate` | `inf` | requests per second (Poisson; `inf` sends all at once) |
//! | `concurrency` | none | requests in flight at most |
//! | `prompts` | 100 | requests |
//! | `input` / `output` | 1024 / 128 | prompt and output tokens (the random dataset's lengths) |
//! | `range` | 0 | the random dataset's range ratio |
//! | `delay` | 0 | seconds (simulated, under a time scale) before the tenant's first request |

use std::collections::BTreeSet;

use super::dataset::random::{RandomSpec, RangeSemantics};
use super::dataset::{DatasetError, Workload};
use super::runner::{RunError, RunOutput, RunPlan, run};
use crate::client::StreamClient;

/// Header naming the InferenceObjective.
pub const OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";
/// Header naming the fairness id (the Inference Extension's name; llm-d's newer name is
/// `x-llm-d-inference-fairness-id`).
pub const FAIRNESS_HEADER: &str = "x-gateway-inference-fairness-id";

/// One tenant (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    pub name: String,
    pub objective: Option<String>,
    pub fairness: String,
    pub model: Option<String>,
    pub rate: f64,
    pub concurrency: Option<usize>,
    pub prompts: usize,
    pub input: usize,
    pub output: usize,
    pub range: f64,
    /// Simulated seconds before the tenant starts sending.
    pub delay: f64,
}

/// Why a tenant's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {text:?}: {reason}")]
pub struct TenantError {
    pub text: String,
    pub reason: String,
}

impl TenantSpec {
    /// Parse `name=…,key=value,…`.
    pub fn parse(text: &str) -> Result<TenantSpec, TenantError> {
        let error = |reason: String| TenantError {
            text: text.to_owned(),
            reason,
        };
        let mut spec = TenantSpec {
            name: String::new(),
            objective: None,
            fairness: String::new(),
            model: None,
            rate: f64::INFINITY,
            concurrency: None,
            prompts: 100,
            input: 1024,
            output: 128,
            range: 0.0,
            delay: 0.0,
        };
        let mut seen = BTreeSet::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| error(format!("{pair:?} is not key=value")))?;
            if !seen.insert(key.to_owned()) {
                return Err(error(format!("{key} is given twice")));
            }
            let number = |what: &str| -> Result<f64, TenantError> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| *v >= 0.0)
                    .ok_or_else(|| error(format!("{key}={value:?} is not a {what}")))
            };
            let count = |what: &str| -> Result<usize, TenantError> {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| error(format!("{key}={value:?} is not a {what}")))
            };
            match key {
                "name" if !value.is_empty() => spec.name = value.to_owned(),
                "objective" => spec.objective = Some(value.to_owned()),
                "fairness" => spec.fairness = value.to_owned(),
                "model" => spec.model = Some(value.to_owned()),
                "rate" => {
                    spec.rate = number("rate")?;
                    if spec.rate == 0.0 {
                        return Err(error("rate=0 sends nothing".into()));
                    }
                }
                "concurrency" => spec.concurrency = Some(count("positive count")?),
                "prompts" => spec.prompts = count("positive count")?,
                "input" => spec.input = count("positive token count")?,
                "output" => spec.output = count("positive token count")?,
                "range" => spec.range = number("ratio")?.min(1.0),
                "delay" => spec.delay = number("number of seconds")?,
                _ => {
                    return Err(error(format!(
                        "unknown key {key:?}; known: name, objective, fairness, model, rate, \
                         concurrency, prompts, input, output, range, delay"
                    )));
                }
            }
        }
        if spec.name.is_empty() {
            return Err(error("name=… is required".into()));
        }
        if spec.fairness.is_empty() {
            spec.fairness = spec.name.clone();
        }
        Ok(spec)
    }

    /// The tenant's requests: the random dataset with its lengths, seeded by `seed`.
    pub fn workload(&self, seed: u64) -> Result<Workload, DatasetError> {
        let mut workload = RandomSpec {
            num_prompts: self.prompts,
            prefix_len: 0,
            input_len: self.input,
            output_len: self.output,
            range_ratio: self.range,
            semantics: RangeSemantics::Current,
        }
        .workload(seed)?;
        if let Some(model) = &self.model {
            for session in &mut workload.sessions {
                session.model = Some(model.clone());
            }
        }
        workload.description = format!("tenant {}: {}", self.name, workload.description);
        Ok(workload)
    }

    /// `base` with the tenant's rate, concurrency, headers and request-id prefix.
    pub fn plan(&self, base: &RunPlan) -> RunPlan {
        let mut plan = base.clone();
        plan.request_rate = self.rate;
        plan.max_concurrency = self.concurrency;
        plan.progress = false;
        plan.initial_test_run = false;
        plan.shape.request_id_prefix = format!("{}{}-", base.shape.request_id_prefix, self.name);
        if let Some(objective) = &self.objective {
            plan.shape
                .extra_headers
                .push((OBJECTIVE_HEADER.to_owned(), objective.clone()));
        }
        plan.shape
            .extra_headers
            .push((FAIRNESS_HEADER.to_owned(), self.fairness.clone()));
        plan
    }
}

/// Why a multi-tenant run could not start.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("two tenants are named {0:?}")]
    DuplicateName(String),
    #[error("tenant {0}: {1}")]
    Dataset(String, DatasetError),
    #[error("tenant {0}: {1}")]
    Run(String, RunError),
}

/// Run every tenant at once (each after its delay) over `client`, each with its own plan derived
/// from `base` and its own dataset seed (`seed` plus its position). The outputs are in
/// `tenants`' order.
pub async fn run_tenants(
    tenants: &[TenantSpec],
    base: &RunPlan,
    client: StreamClient,
) -> Result<Vec<RunOutput>, TenantsError> {
    let mut names = BTreeSet::new();
    for tenant in tenants {
        if !names.insert(tenant.name.as_str()) {
            return Err(TenantsError::DuplicateName(tenant.name.clone()));
        }
    }
    let mut runs = Vec::with_capacity(tenants.len());
    for (i, tenant) in tenants.iter().enumerate() {
        let workload = tenant
            .workload(base.seed + i as u64)
            .map_err(|e| TenantsError::Dataset(tenant.name.clone(), e))?;
        let mut plan = tenant.plan(base);
        plan.seed = base.seed + i as u64;
        let client = client.clone();
        let name = tenant.name.clone();
        let delay = std::time::Duration::from_secs_f64(
            tenant.delay / base.time_scale.max(f64::MIN_POSITIVE),
        );
        runs.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run(plan, workload, client)
                .await
                .map_err(|e| TenantsError::Run(name, e))
        }));
    }
    let mut outputs = Vec::with_capacity(runs.len());
    for handle in runs {
        outputs.push(handle.await.expect("a tenant's run does not panic")?);
    }
    Ok(outputs)
}

/// Jain's fairness index of `rates`: 1 when all are equal, 1/n when one tenant gets everything.
pub fn jain_index(rates: &[f64]) -> f64 {
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|r| r * r).sum();
    if rates.is_empty() || squares == 0.0 {
        return 1.0;
    }
    sum * sum / (rates.len() as f64 * squares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_parse_with_defaults_and_name_their_errors() {
        let t = TenantSpec::parse(
            "name=interactive, objective=chat, rate=4, prompts=50, input=256, output=64",
        )
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.objective.as_deref(), t.fairness.as_str()),
            ("interactive", Some("chat"), "interactive")
        );
        assert_eq!((t.rate, t.prompts, t.input, t.output), (4.0, 50, 256, 64));
        assert_eq!(t.concurrency, None);
        let batch =
            TenantSpec::parse("name=batch,fairness=team-b,concurrency=16,delay=2.5").unwrap();
        assert_eq!(batch.fairness, "team-b");
        assert_eq!((t.delay, batch.delay), (0.0, 2.5));
        assert!(batch.rate.is_infinite());
        for (text, reason) in [
            ("objective=x", "name=… is required"),
            ("name=a,rate=0", "rate=0 sends nothing"),
            (
                "name=a,prompts=-3",
                "prompts=\"-3\" is not a positive count",
            ),
            ("name=a,name=b", "name is given twice"),
            ("name=a,colour=red", "unknown key \"colour\""),
            ("name=a,rate", "\"rate\" is not key=value"),
        ] {
            let err = TenantSpec::parse(text).unwrap_err();
            assert!(err.reason.starts_with(reason), "{text}: {}", err.reason);
        }
    }

    #[test]
    fn a_tenants_plan_carries_its_headers_rate_and_prefix() {
        let t = TenantSpec::parse("name=chat,objective=interactive,rate=2,concurrency=3").unwrap();
        let base = RunPlan {
            shape: super::super::request::RequestShape {
                url: "http://x/v1/completions".into(),
                backend: super::super::request::Backend::Vllm,
                style: super::super::request::BodyStyle::Current,
                ignore_eos: true,
                api_key: None,
                request_id_prefix: "run-".into(),
                extra_headers: vec![("x-extra".into(), "1".into())],
                more_urls: Vec::new(),
            },
            served_model: "m".into(),
            max_concurrency: None,
            request_rate: f64::INFINITY,
            burstiness: 1.0,
            seed: 0,
            progress: true,
            initial_test_run: true,
            block_size: 16,
            time_scale: 1.0,
        };
        let plan = t.plan(&base);
        assert_eq!((plan.request_rate, plan.max_concurrency), (2.0, Some(3)));
        assert!(!plan.progress && !plan.initial_test_run);
        assert_eq!(plan.shape.request_id_prefix, "run-chat-");
        assert_eq!(
            plan.shape.extra_headers,
            [
                ("x-extra".to_owned(), "1".to_owned()),
                (OBJECTIVE_HEADER.to_owned(), "interactive".to_owned()),
                (FAIRNESS_HEADER.to_owned(), "chat".to_owned()),
            ]
        );
        let workload = t.workload(1).unwrap();
        assert_eq!(workload.num_requests(), 100);
        assert!(workload.description.starts_with("tenant chat: "));
    }

    #[test]
    fn jain_index_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() {
        assert_eq!(jain_index(&[3.0, 3.0]), 1.0);
        assert_eq!(jain_index(&[5.0, 0.0]), 0.5);
        assert!((jain_index(&[2.0, 1.0]) - 0.9).abs() < 1e-9);
    }
}

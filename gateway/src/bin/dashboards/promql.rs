//! PromQL expressions built from the gateway's own metric definitions, checked as they are built.
//!
//! A gateway metric comes from its collector in [`GatewayMetrics`] ([`Catalogue::metric`]), so its
//! name is never typed here; aggregating by a label the metric does not have, reading a histogram
//! as a plain series (or a counter as a histogram), or a legend or alert summary naming a label
//! the query does not keep is recorded as a problem on the expression.
//! [`Catalogue::unknown_names`] is the last line: it finds any gateway-looking name (`gateway_*`,
//! `inference_*`, `normalized_time_per_output_token_seconds`) in finished query text that the
//! gateway does not define. Model-server (vLLM) metrics are named literally
//! ([`Metric::external`]) and not checked: the gateway defines only the few it scrapes, and the
//! observability test runs every query against real simulators.

use std::collections::BTreeMap;

use gateway::metrics::GatewayMetrics;
use prometheus::core::Collector;
use prometheus::proto::MetricType;

/// The gateway's metrics by name, as [`GatewayMetrics::descriptors`] describes them.
pub struct Catalogue {
    metrics: BTreeMap<String, (Vec<String>, MetricType)>,
}

impl Catalogue {
    /// Every metric `metrics` registers.
    pub fn new(metrics: &GatewayMetrics) -> Catalogue {
        let metrics = metrics
            .descriptors()
            .into_iter()
            .map(|(desc, kind)| (desc.fq_name, (desc.variable_labels, kind)))
            .collect();
        Catalogue { metrics }
    }

    /// The gateway metric `collector` collects (one of [`GatewayMetrics`]' fields). A collector
    /// missing from [`GatewayMetrics::descriptors`] gives an unchecked metric, whose name
    /// [`Catalogue::unknown_names`] then reports.
    pub fn metric(&self, collector: &dyn Collector) -> Metric {
        let name = collector.desc()[0].fq_name.clone();
        match self.metrics.get(&name) {
            Some((labels, kind)) => Metric {
                name,
                labels: Some(labels.clone()),
                histogram: Some(*kind == MetricType::HISTOGRAM),
            },
            None => Metric::external(&name),
        }
    }

    /// Gateway-looking metric names in `query` that the gateway does not define.
    pub fn unknown_names(&self, query: &str) -> Vec<String> {
        let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        query
            .split(|c: char| !is_name_char(c))
            .filter(|word| {
                word.starts_with("gateway_")
                    || word.starts_with("inference_")
                    || word.starts_with("normalized_time_per_output_token_seconds")
            })
            .filter(|word| !self.defines(word) && !self.is_label(word))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `word` is a label of one of the gateway's metrics (`inference_pool` looks like a
    /// metric name but is the flow-control metrics' pool label).
    fn is_label(&self, word: &str) -> bool {
        self.metrics
            .values()
            .any(|(labels, _)| labels.iter().any(|label| label == word))
    }

    /// Whether `series` is a metric of the gateway, or a `_bucket`, `_sum` or `_count` series of
    /// one of its histograms.
    fn defines(&self, series: &str) -> bool {
        if self.metrics.contains_key(series) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            series
                .strip_suffix(suffix)
                .and_then(|base| self.metrics.get(base))
                .is_some_and(|(_, kind)| *kind == MetricType::HISTOGRAM)
        })
    }
}

/// A metric a query reads: a gateway metric with its labels and type, or an external one.
#[derive(Debug, Clone)]
pub struct Metric {
    name: String,
    /// `None` for external metrics: nothing is checked.
    labels: Option<Vec<String>>,
    histogram: Option<bool>,
}

impl Metric {
    /// A model server's metric, named as it exports it; queries on it are not checked.
    pub fn external(name: &str) -> Metric {
        Metric {
            name: name.to_owned(),
            labels: None,
            histogram: None,
        }
    }

    fn part(&self, suffix: &str, histogram: bool, extra_label: Option<&str>) -> Expr {
        let mut problems = Vec::new();
        if self.histogram.is_some_and(|h| h != histogram) {
            let what = if histogram { "is not" } else { "is" };
            problems.push(format!(
                "{}{suffix}: {} {what} a histogram",
                self.name, self.name
            ));
        }
        let labels = self.labels.clone().map(|mut labels| {
            labels.extend(extra_label.map(str::to_owned));
            labels
        });
        Expr {
            text: format!("{}{suffix}", self.name),
            labels,
            problems,
        }
    }

    /// The series of a counter or gauge.
    pub fn series(&self) -> Expr {
        self.part("", false, None)
    }

    /// The `_bucket` series of a histogram (labelled `le` as well).
    pub fn buckets(&self) -> Expr {
        self.part("_bucket", true, Some("le"))
    }

    /// The `_sum` series of a histogram.
    pub fn sum(&self) -> Expr {
        self.part("_sum", true, None)
    }

    /// The `_count` series of a histogram.
    pub fn count(&self) -> Expr {
        self.part("_count", true, None)
    }
}

/// A PromQL expression with the labels its result series carry (`None` when unknown: external
/// metrics) and the problems found while building it.
#[derive(Debug, Clone)]
pub struct Expr {
    text: String,
    labels: Option<Vec<String>>,
    problems: Vec<String>,
}

impl Expr {
    /// The query text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What is wrong with the query (empty when nothing is).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// `rate(self[window])`.
    pub fn rate(self, window: &str) -> Expr {
        self.wrap(|text| format!("rate({text}[{window}])"))
    }

    /// `increase(self[window])`.
    pub fn increase(self, window: &str) -> Expr {
        self.wrap(|text| format!("increase({text}[{window}])"))
    }

    /// `sum(self)`: one series without labels.
    pub fn sum(self) -> Expr {
        let mut out = self.wrap(|text| format!("sum({text})"));
        out.labels = Some(Vec::new());
        out
    }

    /// `sum by (labels) (self)`.
    pub fn sum_by(self, labels: &[&str]) -> Expr {
        self.aggregate("sum", labels)
    }

    /// `max by (labels) (self)`.
    pub fn max_by(self, labels: &[&str]) -> Expr {
        self.aggregate("max", labels)
    }

    /// `min by (labels) (self)`.
    pub fn min_by(self, labels: &[&str]) -> Expr {
        self.aggregate("min", labels)
    }

    /// `histogram_quantile(q, self)`; `self` must keep `le`.
    pub fn quantile(self, q: f64) -> Expr {
        let mut out = self.wrap(|text| format!("histogram_quantile({q}, {text})"));
        if let Some(labels) = &mut out.labels {
            if !labels.iter().any(|l| l == "le") {
                out.problems
                    .push(format!("{}: a quantile needs the `le` label", out.text));
            }
            labels.retain(|l| l != "le");
        }
        out
    }

    /// `self / other`: the labels both sides keep.
    pub fn div(self, other: Expr) -> Expr {
        self.binary(other, "/", |a, b| format!("{a} / {b}"))
    }

    /// `(self) or (other)`: a query on one set of names that falls back to another.
    pub fn or(self, other: Expr) -> Expr {
        self.binary(other, "or", |a, b| format!("({a}) or ({b})"))
    }

    /// Record a problem when `text` (a legend, an alert summary) names a label the result does not
    /// keep, as `{{label}}` or `{{ $labels.label }}`.
    pub fn check_placeholders(&mut self, text: &str) {
        let Some(labels) = &self.labels else {
            return;
        };
        for placeholder in text.split("{{").skip(1) {
            let inner = placeholder.split("}}").next().unwrap_or_default().trim();
            let label = inner.trim_start_matches("$labels.");
            if !labels.iter().any(|l| l == label) {
                self.problems.push(format!(
                    "{}: {text:?} names `{label}`, which the query does not keep (it keeps \
                     {labels:?})",
                    self.text
                ));
            }
        }
    }

    fn wrap(mut self, render: impl FnOnce(&str) -> String) -> Expr {
        self.text = render(&self.text);
        self
    }

    fn aggregate(self, op: &str, by: &[&str]) -> Expr {
        let mut problems = self.problems;
        if let Some(labels) = &self.labels {
            for label in by {
                if !labels.iter().any(|l| l == label) {
                    problems.push(format!(
                        "{}: grouped by `{label}`, a label it does not have (it has {labels:?})",
                        self.text
                    ));
                }
            }
        }
        Expr {
            text: format!("{op} by ({}) ({})", by.join(", "), self.text),
            labels: Some(by.iter().map(|l| (*l).to_owned()).collect()),
            problems,
        }
    }

    fn binary(self, other: Expr, op: &str, render: impl FnOnce(&str, &str) -> String) -> Expr {
        let mut problems = self.problems;
        problems.extend(other.problems);
        if let (Some(a), Some(b)) = (&self.labels, &other.labels)
            && a != b
        {
            problems.push(format!(
                "{} {op} {}: the sides keep different labels ({a:?}, {b:?})",
                self.text, other.text
            ));
        }
        Expr {
            text: render(&self.text, &other.text),
            labels: self.labels.or(other.labels),
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_queries_render_and_check_labels_kinds_and_legends() {
        let metrics = GatewayMetrics::new();
        let catalogue = Catalogue::new(&metrics);
        let requests = catalogue.metric(&metrics.model_requests);
        let good = requests
            .series()
            .rate("5m")
            .sum_by(&["model_name", "target_model_name"]);
        assert_eq!(
            good.text(),
            "sum by (model_name, target_model_name) (rate(inference_model_request_total[5m]))"
        );
        assert!(good.problems().is_empty(), "{:?}", good.problems());

        let bad_label = requests.series().sum_by(&["pool"]);
        assert!(bad_label.problems()[0].contains("grouped by `pool`"));

        let duration = catalogue.metric(&metrics.model_duration);
        assert!(duration.series().problems()[0].contains("is a histogram"));
        assert!(requests.buckets().problems()[0].contains("is not a histogram"));
        let quantile = duration
            .buckets()
            .rate("1m")
            .sum_by(&["model_name"])
            .quantile(0.9);
        assert!(quantile.problems()[0].contains("needs the `le` label"));

        let mut legend = good.clone();
        legend.check_placeholders("{{model_name}} -> {{target_model_name}}");
        legend.check_placeholders("p99 of {{ $labels.model_name }}");
        assert!(legend.problems().is_empty(), "{:?}", legend.problems());
        legend.check_placeholders("{{endpoint}}");
        assert!(legend.problems()[0].contains("names `endpoint`"));
    }

    #[test]
    fn only_names_the_gateway_defines_pass() {
        let metrics = GatewayMetrics::new();
        let catalogue = Catalogue::new(&metrics);
        let query = "sum(rate(inference_model_input_tokens_sum[1m])) / \
                     sum(gateway_downstream_connections) + sum(gateway_requests_total_bucket) + \
                     sum(inference_pool_everything) + max(vllm:num_requests_running) + \
                     histogram_quantile(0.5, sum by (le) (rate(normalized_time_per_output_token_seconds_bucket[1m])))";
        assert_eq!(
            catalogue.unknown_names(query),
            vec!["gateway_requests_total_bucket", "inference_pool_everything"]
        );
    }

    #[test]
    fn every_metric_the_gateway_exposes_has_a_descriptor_of_its_kind() {
        let metrics = GatewayMetrics::new();
        let catalogue = Catalogue::new(&metrics);
        assert_eq!(
            catalogue.metrics.len(),
            metrics.descriptors().len(),
            "unique"
        );
        let page = String::from_utf8(metrics.render(&Default::default())).unwrap();
        let mut seen = 0;
        for line in page.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declaration.split_once(' ').unwrap();
                let (_, described) = &catalogue.metrics[name];
                assert_eq!(format!("{described:?}").to_lowercase(), kind, "{name}");
                seen += 1;
            }
        }
        assert!(seen >= 6, "{page}");
    }
}

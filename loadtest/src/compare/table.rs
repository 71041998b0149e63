//! `compare --table FILE...`: several scenarios' `data/NAME.json` read back into one Markdown
//! table (the one `docs/strategies.md` quotes): per scenario and route, TTFT p50/p90/p99 and their
//! ratios to the plain route's, plus round-robin's run-to-run spread when the plain route ran
//! more than once, as the noise figure to read the ratios against.
//!
//! - The plain route's figure is the mean of its runs; a route is plain when its label starts with
//!   `8080` (so data files written before repeats were numbered read the same).
//! - Spread: max / min − 1 over the plain runs, per percentile.
//! - A scenario with a rate staircase contributes the stage at the highest rate that *every*
//!   plain run sustains (TTFT p90 within the limit its file records), and says so; when none does,
//!   its lowest stage.
//!
//! Reading only: nothing here runs anything.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// Why a data file could not be tabulated.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Shape { path: String, reason: String },
}

/// The percentiles the table shows.
pub const PERCENTILES: [u32; 3] = [50, 90, 99];

/// One route's TTFT percentiles (ms) in one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteFigures {
    pub label: String,
    pub plain: bool,
    pub ttft: [f64; 3],
}

/// One scenario's routes, and what the figures are when not the whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioFigures {
    pub scenario: String,
    pub note: Option<String>,
    pub routes: Vec<RouteFigures>,
}

/// max / min − 1 (0 for fewer than two values or a non-positive minimum).
pub fn spread(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0f64, f64::max);
    if values.len() < 2 || min.is_nan() || min <= 0.0 {
        0.0
    } else {
        max / min - 1.0
    }
}

fn percentiles_of(object: &Value) -> Option<[f64; 3]> {
    let read = |p: u32| object[format!("p{p}_ttft_ms")].as_f64();
    Some([read(50)?, read(90)?, read(99)?])
}

fn shape(path: &str, reason: impl Into<String>) -> TableError {
    TableError::Shape {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// The figures of one data file's contents (`path` only names it in errors).
pub fn figures(data: &Value, path: &str) -> Result<ScenarioFigures, TableError> {
    let scenario = data["scenario"]
        .as_str()
        .ok_or_else(|| shape(path, "no \"scenario\""))?
        .to_string();
    let routes = data["routes"]
        .as_array()
        .ok_or_else(|| shape(path, "no \"routes\" list"))?;
    let label = |route: &Value| route["label"].as_str().unwrap_or("?").to_string();
    let stages = |route: &Value| route["loadgen"]["stages"].clone();
    let staged = routes.iter().any(|r| stages(r)["stages"].is_array());
    if !staged {
        let routes = routes
            .iter()
            .map(|route| {
                let label = label(route);
                Ok(RouteFigures {
                    plain: label.starts_with("8080"),
                    ttft: percentiles_of(route)
                        .ok_or_else(|| shape(path, format!("{label}: no TTFT percentiles")))?,
                    label,
                })
            })
            .collect::<Result<_, TableError>>()?;
        return Ok(ScenarioFigures {
            scenario,
            note: None,
            routes,
        });
    }
    // The highest rate every plain run sustains; None when some plain run sustains none.
    let plain: Vec<&Value> = routes
        .iter()
        .filter(|r| label(r).starts_with("8080"))
        .collect();
    let sustained: Option<f64> = plain
        .iter()
        .map(|r| stages(r)["sustained"]["rate"].as_f64())
        .try_fold(f64::INFINITY, |low, rate| rate.map(|r| low.min(r)))
        .filter(|rate| rate.is_finite());
    let limit_ms = plain
        .first()
        .and_then(|r| stages(r)["ttft_p90_limit_ms"].as_f64())
        .unwrap_or(2000.0);
    let lowest = routes
        .iter()
        .flat_map(|r| stages(r)["stages"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["rate"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let (rate, note) = match sustained {
        Some(rate) => (
            rate,
            format!(
                "stage at {rate} requests/s, the highest rate the plain route sustains at TTFT p90 ≤ {} s",
                limit_ms / 1000.0
            ),
        ),
        None if plain.is_empty() => (
            lowest,
            format!("stage at {lowest} requests/s, the lowest (no plain route to choose by)"),
        ),
        None => (
            lowest,
            format!(
                "stage at {lowest} requests/s, the lowest: the plain route sustains none at TTFT p90 ≤ {} s",
                limit_ms / 1000.0
            ),
        ),
    };
    let routes = routes
        .iter()
        .map(|route| {
            let label = label(route);
            let stage = stages(route)["stages"]
                .as_array()
                .and_then(|all| {
                    all.iter()
                        .find(|s| s["rate"].as_f64().is_some_and(|r| (r - rate).abs() < 1e-9))
                        .cloned()
                })
                .ok_or_else(|| shape(path, format!("{label}: no stage at {rate} requests/s")))?;
            Ok(RouteFigures {
                plain: label.starts_with("8080"),
                ttft: percentiles_of(&stage)
                    .ok_or_else(|| shape(path, format!("{label}: no TTFT percentiles")))?,
                label,
            })
        })
        .collect::<Result<_, TableError>>()?;
    Ok(ScenarioFigures {
        scenario,
        note: Some(note),
        routes,
    })
}

/// Reads and tabulates one data file.
pub fn read(path: &Path) -> Result<ScenarioFigures, TableError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TableError::Io {
        path: name.clone(),
        source,
    })?;
    let data: Value = serde_json::from_str(&text).map_err(|source| TableError::Json {
        path: name.clone(),
        source,
    })?;
    figures(&data, &name)
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The one table, with a line under it saying what the ratios are.
pub fn markdown(scenarios: &[ScenarioFigures]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | route | TTFT p50 (ms) | TTFT p90 (ms) | TTFT p99 (ms) | p50 / plain | p90 / plain | p99 / plain |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for scenario in scenarios {
        let plain: Vec<&RouteFigures> = scenario.routes.iter().filter(|r| r.plain).collect();
        let base: Option<[f64; 3]> = (!plain.is_empty()).then(|| {
            let mean = |i: usize| plain.iter().map(|r| r.ttft[i]).sum::<f64>() / plain.len() as f64;
            [mean(0), mean(1), mean(2)]
        });
        let title = match &scenario.note {
            Some(note) => format!("{} ({note})", scenario.scenario),
            None => scenario.scenario.clone(),
        };
        for (index, route) in scenario.routes.iter().enumerate() {
            let ratios: Vec<String> = (0..3)
                .map(|i| match base {
                    Some(base) if base[i] > 0.0 => format!("{:.2}", route.ttft[i] / base[i]),
                    _ => "—".into(),
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                if index == 0 { title.as_str() } else { "" },
                route.label,
                ms(route.ttft[0]),
                ms(route.ttft[1]),
                ms(route.ttft[2]),
                ratios.join(" | ")
            );
        }
        if plain.len() > 1 {
            let spreads: Vec<String> = (0..3)
                .map(|i| {
                    let values: Vec<f64> = plain.iter().map(|r| r.ttft[i]).collect();
                    format!("{:.1}%", spread(&values) * 100.0)
                })
                .collect();
            let _ = writeln!(
                out,
                "|  | noise: plain runs' spread (max/min − 1, {} runs) | {} |  |  |  |",
                plain.len(),
                spreads.join(" | ")
            );
        }
    }
    out.push_str(
        "\nRatios are to the plain route's figure (8080, Service round-robin; the mean of its runs \
         when it ran more than once). Noise: how far the plain route's own runs differ, the scale \
         against which a ratio near 1 should be read.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(label: &str, p50: f64, p90: f64, p99: f64) -> Value {
        json!({"label": label, "p50_ttft_ms": p50, "p90_ttft_ms": p90, "p99_ttft_ms": p99})
    }

    fn staged(label: &str, sustained: Option<f64>, stages: &[(f64, f64)]) -> Value {
        json!({
            "label": label,
            "p50_ttft_ms": 1.0, "p90_ttft_ms": 1.0, "p99_ttft_ms": 1.0,
            "loadgen": {"stages": {
                "ttft_p90_limit_ms": 2000.0,
                "sustained": {"rate": sustained},
                "stages": stages.iter().map(|&(rate, p90)| json!({
                    "rate": rate, "p50_ttft_ms": p90 / 2.0, "p90_ttft_ms": p90, "p99_ttft_ms": p90 * 2.0
                })).collect::<Vec<_>>(),
            }},
        })
    }

    #[test]
    fn whole_run_figures_ratios_and_the_plain_noise() {
        let data = json!({"scenario": "uniform", "routes": [
            route("8080 plain", 100.0, 200.0, 400.0),
            route("8081 DEFAULT", 110.0, 300.0, 300.0),
            route("8080 plain (run 2)", 100.0, 300.0, 400.0),
        ]});
        let figures = figures(&data, "uniform.json").unwrap();
        assert_eq!(figures.note, None);
        assert_eq!(
            figures.routes.iter().filter(|r| r.plain).count(),
            2,
            "{figures:?}"
        );
        let table = markdown(&[figures]);
        // Plain p90 mean 250: DEFAULT 300 / 250 = 1.20; p99 300 / 400 = 0.75.
        assert!(
            table.contains("| uniform | 8080 plain | 100 | 200 | 400 | 1.00 | 0.80 | 1.00 |"),
            "{table}"
        );
        assert!(table.contains("|  | 8081 DEFAULT | 110 | 300 | 300 | 1.10 | 1.20 | 0.75 |"));
        assert!(table.contains(
            "|  | noise: plain runs' spread (max/min − 1, 2 runs) | 0.0% | 50.0% | 0.0% |  |  |  |"
        ));
        assert_eq!(table.matches("| scenario |").count(), 1);
    }

    #[test]
    fn a_staircase_contributes_the_highest_stage_every_plain_run_sustains() {
        let data = json!({"scenario": "optimized-baseline", "routes": [
            staged("8080 plain", Some(1.0), &[(0.5, 1000.0), (1.0, 1800.0), (2.0, 9000.0)]),
            staged("8080 plain (run 2)", Some(0.5), &[(0.5, 1200.0), (1.0, 2500.0), (2.0, 9000.0)]),
            staged("8081 PREFIX_CACHE", Some(2.0), &[(0.5, 300.0), (1.0, 400.0), (2.0, 500.0)]),
        ]});
        let figures = figures(&data, "ob.json").unwrap();
        assert!(
            figures
                .note
                .as_deref()
                .unwrap()
                .contains("stage at 0.5 requests/s")
        );
        assert_eq!(figures.routes[2].ttft, [150.0, 300.0, 600.0]);
        let table = markdown(&[figures]);
        // Plain p90 at 0.5: mean of 1,000 and 1,200 = 1,100; PREFIX_CACHE 300 / 1,100 = 0.27.
        assert!(
            table.contains("|  | 8081 PREFIX_CACHE | 150 | 300 | 600 | 0.27 | 0.27 | 0.27 |"),
            "{table}"
        );
        assert!(table.contains("TTFT p90 ≤ 2 s"));

        let none = json!({"scenario": "optimized-baseline", "routes": [
            staged("8080 plain", None, &[(0.5, 3000.0), (1.0, 9000.0)]),
        ]});
        let figures = super::figures(&none, "x").unwrap();
        assert!(
            figures
                .note
                .unwrap()
                .contains("the plain route sustains none")
        );
        assert_eq!(figures.routes[0].ttft[1], 3000.0);
    }

    #[test]
    fn spread_and_bad_files() {
        assert_eq!(spread(&[100.0]), 0.0);
        assert!((spread(&[100.0, 125.0, 110.0]) - 0.25).abs() < 1e-12);
        assert!(figures(&json!({"routes": []}), "x").is_err());
        assert!(
            figures(
                &json!({"scenario": "s", "routes": [{"label": "8080 plain"}]}),
                "x"
            )
            .is_err()
        );
        assert!(read(Path::new("/nonexistent/data.json")).is_err());
    }
}

//! Grafana dashboards: rows of panels, each panel a set of PromQL targets with legends, laid out
//! three 8×8 panels to a line under a full-width row header, ids and positions in order, and
//! rendered as the JSON Grafana imports (two-space indent, keys in Grafana's order, the data
//! source left as the `${DS_PROMETHEUS}` input).
//!
//! Layout and rendering only: what the panels show is in `panels.rs`, and the checks of the
//! queries in `promql.rs`.

use serde::Serialize;

use crate::promql::Expr;

/// The one Grafana variable queries use. Replaced by a window (the observability test uses `1m`),
/// every query is plain PromQL.
pub const RATE: &str = "$__rate_interval";

/// One query of a panel, with its legend.
pub struct Target {
    pub expr: Expr,
    pub legend: String,
}

/// A target; a legend naming a label the query does not keep is recorded on the query.
pub fn target(mut expr: Expr, legend: impl Into<String>) -> Target {
    let legend = legend.into();
    expr.check_placeholders(&legend);
    Target { expr, legend }
}

/// A time series (or heatmap) panel.
pub struct Panel {
    title: &'static str,
    targets: Vec<Target>,
    unit: &'static str,
    heatmap: bool,
    description: &'static str,
}

/// A time series panel with unit `short` and no description.
pub fn panel(title: &'static str, targets: Vec<Target>) -> Panel {
    Panel {
        title,
        targets,
        unit: "short",
        heatmap: false,
        description: "",
    }
}

impl Panel {
    /// The Grafana unit of the values (`s`, `reqps`, `bytes`, `percentunit`).
    pub fn unit(mut self, unit: &'static str) -> Panel {
        self.unit = unit;
        self
    }

    /// A heatmap of bucket series instead of a time series.
    pub fn heatmap(mut self) -> Panel {
        self.heatmap = true;
        self
    }

    /// The panel's description (its tooltip).
    pub fn description(mut self, description: &'static str) -> Panel {
        self.description = description;
        self
    }
}

/// A titled row of panels.
pub struct Row {
    pub title: &'static str,
    pub panels: Vec<Panel>,
}

/// A dashboard: a title, a uid, rows.
pub struct Dashboard {
    pub title: &'static str,
    pub uid: &'static str,
    pub rows: Vec<Row>,
}

impl Dashboard {
    /// Every query with the title of its panel.
    pub fn queries(&self) -> impl Iterator<Item = (&'static str, &Expr)> {
        self.rows
            .iter()
            .flat_map(|row| &row.panels)
            .flat_map(|panel| panel.targets.iter().map(|t| (panel.title, &t.expr)))
    }

    /// The dashboard JSON, with a final newline.
    pub fn render(&self) -> String {
        let json = DashboardJson {
            inputs: [Input {
                name: "DS_PROMETHEUS",
                label: "Prometheus",
                kind: "datasource",
                plugin_id: "prometheus",
                plugin_name: "Prometheus",
            }],
            title: self.title,
            uid: self.uid,
            schema_version: 39,
            version: 1,
            editable: true,
            time: TimeRange {
                from: "now-1h",
                to: "now",
            },
            refresh: "10s",
            tags: ["inference-gateway"],
            templating: Templating { list: Vec::new() },
            panels: layout(&self.rows),
        };
        let mut text = serde_json::to_string_pretty(&json).expect("dashboards serialize");
        text.push('\n');
        text
    }
}

/// Row headers and panels with ids from 1 and grid positions: each row header on a line of its
/// own, then its panels three to a line.
fn layout(rows: &[Row]) -> Vec<PanelJson<'_>> {
    let (mut panels, mut y, mut id) = (Vec::new(), 0, 1);
    for row in rows {
        panels.push(PanelJson::Row(RowJson {
            kind: "row",
            title: row.title,
            id,
            collapsed: false,
            grid_pos: GridPos {
                h: 1,
                w: 24,
                x: 0,
                y,
            },
        }));
        id += 1;
        y += 1;
        for (i, panel) in row.panels.iter().enumerate() {
            if i > 0 && i % 3 == 0 {
                y += 8;
            }
            let x = (i % 3) as u32 * 8;
            panels.push(PanelJson::Graph(graph(
                panel,
                id,
                GridPos { h: 8, w: 8, x, y },
            )));
            id += 1;
        }
        y += 8;
    }
    panels
}

fn graph(panel: &Panel, id: u32, grid_pos: GridPos) -> GraphJson<'_> {
    let targets = panel
        .targets
        .iter()
        .zip('A'..)
        .map(|(target, ref_id)| TargetJson {
            ref_id: ref_id.to_string(),
            expr: target.expr.text(),
            legend_format: &target.legend,
            datasource: PROMETHEUS,
            format: panel.heatmap.then_some("heatmap"),
        })
        .collect();
    GraphJson {
        id,
        kind: if panel.heatmap {
            "heatmap"
        } else {
            "timeseries"
        },
        title: panel.title,
        description: panel.description,
        datasource: PROMETHEUS,
        grid_pos,
        field_config: FieldConfig {
            defaults: Defaults { unit: panel.unit },
            overrides: Vec::new(),
        },
        targets,
    }
}

const PROMETHEUS: Datasource = Datasource {
    kind: "prometheus",
    uid: "${DS_PROMETHEUS}",
};

#[derive(Serialize)]
struct DashboardJson<'a> {
    #[serde(rename = "__inputs")]
    inputs: [Input; 1],
    title: &'a str,
    uid: &'a str,
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    version: u32,
    editable: bool,
    time: TimeRange,
    refresh: &'static str,
    tags: [&'static str; 1],
    templating: Templating,
    panels: Vec<PanelJson<'a>>,
}

#[derive(Serialize)]
struct Input {
    name: &'static str,
    label: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "pluginId")]
    plugin_id: &'static str,
    #[serde(rename = "pluginName")]
    plugin_name: &'static str,
}

#[derive(Serialize)]
struct TimeRange {
    from: &'static str,
    to: &'static str,
}

#[derive(Serialize)]
struct Templating {
    list: Vec<()>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PanelJson<'a> {
    Row(RowJson),
    Graph(GraphJson<'a>),
}

#[derive(Serialize)]
struct RowJson {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    id: u32,
    collapsed: bool,
    #[serde(rename = "gridPos")]
    grid_pos: GridPos,
}

#[derive(Serialize)]
struct GraphJson<'a> {
    id: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    description: &'static str,
    datasource: Datasource,
    #[serde(rename = "gridPos")]
    grid_pos: GridPos,
    #[serde(rename = "fieldConfig")]
    field_config: FieldConfig,
    targets: Vec<TargetJson<'a>>,
}

#[derive(Serialize, Clone, Copy)]
struct Datasource {
    #[serde(rename = "type")]
    kind: &'static str,
    uid: &'static str,
}

#[derive(Serialize)]
struct GridPos {
    h: u32,
    w: u32,
    x: u32,
    y: u32,
}

#[derive(Serialize)]
struct FieldConfig {
    defaults: Defaults,
    overrides: Vec<()>,
}

#[derive(Serialize)]
struct Defaults {
    unit: &'static str,
}

#[derive(Serialize)]
struct TargetJson<'a> {
    #[serde(rename = "refId")]
    ref_id: String,
    expr: &'a str,
    #[serde(rename = "legendFormat")]
    legend_format: &'a str,
    datasource: Datasource,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::Metric;

    fn panels(n: usize) -> Vec<Panel> {
        (0..n)
            .map(|_| panel("p", vec![target(Metric::external("m").series(), "x")]))
            .collect()
    }

    #[test]
    fn rows_and_panels_are_laid_out_three_to_a_line_with_ids_in_order() {
        let dashboard = Dashboard {
            title: "t",
            uid: "u",
            rows: vec![
                Row {
                    title: "first",
                    panels: panels(4),
                },
                Row {
                    title: "second",
                    panels: panels(1),
                },
            ],
        };
        let json: serde_json::Value = serde_json::from_str(&dashboard.render()).unwrap();
        let placed: Vec<(u64, u64, u64, u64)> = json["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let at = &p["gridPos"];
                let n = |v: &serde_json::Value| v.as_u64().unwrap();
                (n(&p["id"]), n(&at["x"]), n(&at["y"]), n(&at["w"]))
            })
            .collect();
        assert_eq!(
            placed,
            vec![
                (1, 0, 0, 24),
                (2, 0, 1, 8),
                (3, 8, 1, 8),
                (4, 16, 1, 8),
                (5, 0, 9, 8),
                (6, 0, 17, 24),
                (7, 0, 18, 8),
            ]
        );
    }
}

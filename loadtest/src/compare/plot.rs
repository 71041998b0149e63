//! The report's pictures, as PNG and SVG: KV-cache usage per endpoint over time, one panel per
//! route side by side (the seed's Grafana picture), the TTFT distribution of every route, and for
//! a rate staircase the curves per route of output tokens/s and TTFT p90 against the offered rate.
//!
//! Text is rendered with `ab_glyph` from a TrueType font registered at run time (DejaVu Sans from
//! Debian's `fonts-dejavu-core` unless `--font` names another), so no system font library is
//! linked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::RouteRun;
use super::sweep::SUSTAINED_TTFT_P90_MS;

/// Where DejaVu Sans usually lives.
pub const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Why a picture could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "no font for the plots: install fonts-dejavu-core (apt-get install fonts-dejavu-core) or pass --font PATH.ttf"
    )]
    NoFont,
    #[error("reading font {path}: {source}")]
    FontFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a usable TrueType font")]
    BadFont(String),
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
}

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the font once per process.
pub fn register_font(explicit: Option<&Path>) -> Result<(), PlotError> {
    let path: PathBuf = match explicit {
        Some(path) => path.to_path_buf(),
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(PlotError::NoFont)?,
    };
    let outcome = FONT.get_or_init(|| {
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    });
    outcome.clone().map_err(|message| {
        if message.contains("TrueType") {
            PlotError::BadFont(path.display().to_string())
        } else {
            PlotError::FontFile {
                path: path.display().to_string(),
                source: std::io::Error::other(message),
            }
        }
    })
}

/// One panel of several named lines: (x, y) points each.
pub struct Panel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// One route's KV series: per endpoint, (simulated seconds since the run started, usage in %).
fn kv_panels(runs: &[RouteRun], time_scale: f64) -> Vec<Panel> {
    runs.iter()
        .map(|run| {
            let (from, to) = run.observed.window;
            let ticks: Vec<_> = run
                .observed
                .ticks
                .iter()
                .filter(|t| t.at >= from && t.at <= to)
                .collect();
            let series = run
                .observed
                .endpoints
                .iter()
                .enumerate()
                .map(|(index, endpoint)| {
                    let host = endpoint.trim_start_matches("http://").replace(":8000", "");
                    let points = ticks
                        .iter()
                        .filter_map(|t| {
                            let sample = t.samples.get(index)?.as_ref()?;
                            Some(((t.at - from) * time_scale, sample.kv_usage * 100.0))
                        })
                        .collect();
                    (host, points)
                })
                .collect();
            Panel {
                title: run.label(),
                series,
            }
        })
        .collect()
}

fn draw_error<E: std::fmt::Debug>(path: &Path) -> impl FnOnce(E) -> PlotError + '_ {
    move |error| PlotError::Draw {
        path: path.display().to_string(),
        message: format!("{error:?}"),
    }
}

/// Axis texts and the y range of a row of panels.
pub struct PanelAxes<'a> {
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// The top of the y axis; `None` fits the highest point.
    pub y_max: Option<f64>,
}

fn draw_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
    axes: &PanelAxes,
    path: &Path,
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_error(path))?;
    let points = || {
        panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|(_, points)| points.iter()))
    };
    let longest = points().map(|(x, _)| *x).fold(1.0f64, f64::max);
    let y_max = axes
        .y_max
        .unwrap_or_else(|| points().map(|(_, y)| *y).fold(1.0f64, f64::max) * 1.1);
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas) {
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..longest, 0f64..y_max)
            .map_err(draw_error(path))?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(draw_error(path))?;
        for (index, (name, points)) in panel.series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_error(path))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(draw_error(path))?;
    }
    root.present().map_err(draw_error(path))?;
    Ok(())
}

/// Writes `NAME.png` and `NAME.svg` into `dir`: `panels` side by side.
pub fn write_panels(
    dir: &Path,
    name: &str,
    panels: &[Panel],
    axes: &PanelAxes,
) -> Result<Vec<PathBuf>, PlotError> {
    let size = (560 * panels.len().max(1) as u32, 420);
    let png = dir.join(format!("{name}.png"));
    draw_panels(
        &BitMapBackend::new(&png, size).into_drawing_area(),
        panels,
        axes,
        &png,
    )?;
    let svg = dir.join(format!("{name}.svg"));
    draw_panels(
        &SVGBackend::new(&svg, size).into_drawing_area(),
        panels,
        axes,
        &svg,
    )?;
    Ok(vec![png, svg])
}

/// A distribution to draw: its label and its values in ascending order.
pub type Distribution<'a> = (String, &'a [f64]);

fn draw_cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    series: &[Distribution],
    path: &Path,
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_error(path))?;
    let all = series.iter().flat_map(|(_, values)| values.iter().copied());
    let (low, high) = all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = if low.is_finite() && low > 0.0 {
        low * 0.8
    } else {
        1.0
    };
    let high = (high * 1.25).max(low * 10.0);
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((low..high).log_scale(), 0f64..1f64)
        .map_err(draw_error(path))?;
    chart
        .configure_mesh()
        .x_desc("TTFT (ms, simulated; log scale)")
        .y_desc("share of requests with TTFT ≤ x")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_error(path))?;
    for (index, (label, values)) in series.iter().enumerate() {
        let n = values.len().max(1) as f64;
        let color = Palette99::pick(index).to_rgba();
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.max(low), (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(draw_error(path))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(draw_error(path))?;
    root.present().map_err(draw_error(path))?;
    Ok(())
}

/// Writes `NAME.png` and `NAME.svg` into `dir`: the distributions of TTFT in `series`.
pub fn write_cdf(
    dir: &Path,
    name: &str,
    caption: &str,
    series: &[Distribution],
) -> Result<Vec<PathBuf>, PlotError> {
    let size = (900, 520);
    let png = dir.join(format!("{name}.png"));
    draw_cdf(
        &BitMapBackend::new(&png, size).into_drawing_area(),
        caption,
        series,
        &png,
    )?;
    let svg = dir.join(format!("{name}.svg"));
    draw_cdf(
        &SVGBackend::new(&svg, size).into_drawing_area(),
        caption,
        series,
        &svg,
    )?;
    Ok(vec![png, svg])
}

/// Writes `STEM-kv.{png,svg}` and `STEM-ttft.{png,svg}` into `dir`; returns the paths.
pub fn write_plots(
    dir: &Path,
    stem: &str,
    runs: &[RouteRun],
    time_scale: f64,
) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = write_panels(
        dir,
        &format!("{stem}-kv"),
        &kv_panels(runs, time_scale),
        &PanelAxes {
            x_desc: "simulated seconds since the run started",
            y_desc: "KV-cache usage (%)",
            y_max: Some(100.0),
        },
    )?;
    let labels: Vec<String> = runs.iter().map(RouteRun::label).collect();
    let series: Vec<Distribution> = runs
        .iter()
        .zip(labels)
        .map(|(run, label)| (label, run.summary.ttft.samples.values()))
        .collect();
    written.extend(write_cdf(
        dir,
        &format!("{stem}-ttft"),
        "TTFT distribution per route",
        &series,
    )?);
    Ok(written)
}

/// One route's curve: (offered rate, value) per stage.
type Curve = (String, Vec<(f64, f64)>);

fn sweep_curves(runs: &[RouteRun], read: impl Fn(&super::sweep::StageResult) -> f64) -> Vec<Curve> {
    runs.iter()
        .filter(|r| !r.stages.is_empty())
        .map(|run| {
            (
                run.label(),
                run.stages.iter().map(|s| (s.rate, read(s))).collect(),
            )
        })
        .collect()
}

fn draw_sweep<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RouteRun],
    path: &Path,
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_error(path))?;
    let tokens = sweep_curves(runs, |s| s.output_tokens_per_second);
    // TTFT in seconds, kept above the log axis' floor when a stage had no successful request.
    let ttft = sweep_curves(runs, |s| (s.ttft_p90() / 1000.0).max(0.01));
    let points = || tokens.iter().flat_map(|(_, p)| p.iter());
    let max_rate = points().map(|p| p.0).fold(0.0f64, f64::max).max(0.1) * 1.05;
    let max_tokens = points().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let (low, high) = ttft
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = (low.min(SUSTAINED_TTFT_P90_MS / 1000.0) * 0.7).max(0.01);
    let high = (high.max(SUSTAINED_TTFT_P90_MS / 1000.0) * 1.5).max(low * 10.0);
    let areas = root.split_evenly((1, 2));

    let mut chart = ChartBuilder::on(&areas[0])
        .caption("Output tokens/s per stage", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_rate, 0f64..max_tokens)
        .map_err(draw_error(path))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (requests per simulated second)")
        .y_desc("output tokens/s")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(draw_error(path))?;
    for (index, (label, points)) in tokens.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(3),
            ))
            .map_err(draw_error(path))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_error(path))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(draw_error(path))?;

    let mut chart = ChartBuilder::on(&areas[1])
        .caption("TTFT p90 per stage", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..max_rate,
            (low..high).log_scale().with_key_points(
                // 1-2-5 steps, so a range within one decade still gets labels.
                [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
                    .iter()
                    .flat_map(|d| [d * 1.0, d * 2.0, d * 5.0])
                    .filter(|v| (low..=high).contains(v))
                    .collect(),
            ),
        )
        .map_err(draw_error(path))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (requests per simulated second)")
        .y_desc("TTFT p90 (s, log scale)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(draw_error(path))?;
    let limit = SUSTAINED_TTFT_P90_MS / 1000.0;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, limit), (max_rate, limit)],
            8,
            6,
            BLACK.stroke_width(1),
        ))
        .map_err(draw_error(path))?;
    for (index, (label, points)) in ttft.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(3),
            ))
            .map_err(draw_error(path))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_error(path))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(draw_error(path))?;
    root.present().map_err(draw_error(path))?;
    Ok(())
}

/// Writes `STEM-sweep.{png,svg}` (the rate staircase's curves) into `dir`; returns the paths.
pub fn write_sweep_plots(
    dir: &Path,
    stem: &str,
    runs: &[RouteRun],
) -> Result<Vec<PathBuf>, PlotError> {
    let size = (1200, 520);
    let png = dir.join(format!("{stem}-sweep.png"));
    draw_sweep(
        &BitMapBackend::new(&png, size).into_drawing_area(),
        runs,
        &png,
    )?;
    let svg = dir.join(format!("{stem}-sweep.svg"));
    draw_sweep(&SVGBackend::new(&svg, size).into_drawing_area(), runs, &svg)?;
    Ok(vec![png, svg])
}

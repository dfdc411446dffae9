//! The bench's standings at a glance: one bar per configuration, its throughput as a
//! ratio to its reference (1.0 = as fast as the reference), drawn as SVG with plotters.

use std::path::Path;

use plotters::prelude::*;

/// Where the ratio axis ends.
const AXIS_MAX: f64 = 2.5;

/// Draws `bars` (label, ratio) into `path`; the error says what failed.
pub fn draw(path: &Path, title: &str, bars: &[(String, f64)]) -> Result<(), String> {
    if bars.is_empty() {
        return Ok(());
    }
    let height = 80 + 34 * bars.len() as u32;
    let root = SVGBackend::new(path, (980, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // The axis stops at AXIS_MAX: one far-off bar (hot counters run at 10x and more)
    // would squeeze every other to a sliver. Longer bars are cut, their value written in.
    let top = bars.iter().map(|(_, r)| *r).fold(1.0f64, f64::max).min(AXIS_MAX) * 1.15;
    let n = bars.len() as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(430)
        .build_cartesian_2d(0f64..top, (0u32..n).into_segmented())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars
                .get((n - 1 - *i) as usize)
                .map_or(String::new(), |(l, _)| l.clone()),
            _ => String::new(),
        })
        .x_desc("throughput ratio to the reference")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    // Top to bottom in the order given.
    chart
        .draw_series(bars.iter().enumerate().map(|(k, (_, r))| {
            let i = n - 1 - k as u32;
            let color = if *r >= 1.0 { GREEN.mix(0.6) } else { BLUE.mix(0.5) };
            Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (r.min(top), SegmentValue::Exact(i + 1))],
                color.filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(k, (_, r))| {
            let i = n - 1 - k as u32;
            let (label, x) = match *r > top {
                true => (format!("{r:.2}x (cut)"), top * 0.85),
                false => (format!("{r:.2}x"), *r + top * 0.01),
            };
            Text::new(label, (x, SegmentValue::CenterOf(i)), ("sans-serif", 13))
        }))
        .map_err(|e| e.to_string())?;
    // The reference line.
    chart
        .draw_series(LineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

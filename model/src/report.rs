//! Pictures of a run, as SVG files (any browser shows them): the loss curves, drawn with
//! `plotters` (round ticks, a grid, a noisy curve smoothed over its faded raw points), and
//! the router heatmap, written directly (a grid of labelled cells). SVG text needs no font
//! backend: the viewer renders it.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::error::{ModelError, Result};
use crate::llama::weights::write_atomically;

const W: f64 = 720.0;
const H: f64 = 420.0;

/// One named curve of (step, value) points.
pub struct Series<'a> {
    /// The legend's label.
    pub name: &'a str,
    /// A `#rrggbb` color, e.g. `#1f77b4`.
    pub color: &'a str,
    /// (x, y) points, x usually the step.
    pub points: &'a [(f64, f64)],
    /// Draw the raw points faded and a smoothed line over them (a per-step training loss);
    /// false draws the points as they are (an evaluation curve of a few points).
    pub smooth: bool,
}

/// Line chart of several series (train and eval loss) against the step.
pub fn line_chart_svg(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let svg = line_chart(title, y_label, series)
        .map_err(|e| ModelError::Input(format!("drawing {}: {e}", path.display())))?;
    write_atomically(path, |out| std::io::Write::write_all(out, svg.as_bytes()))
}

/// The chart's SVG text.
fn line_chart(
    title: &str,
    y_label: &str,
    series: &[Series],
) -> std::result::Result<String, Box<dyn std::error::Error>> {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        (s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in series.iter().flat_map(finite) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (x1, y0, y1) = (x1.max(x0 + 1.0), y0 - pad, y1 + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W as u32, H as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_label)
            .x_label_formatter(&|x| format!("{x}"))
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.15))
            .draw()?;
        for s in series {
            let color = parse_color(s.color);
            let points = finite(s);
            let line = match s.smooth {
                true => {
                    chart.draw_series(LineSeries::new(points.clone(), color.mix(0.25)))?;
                    smoothed(&points)
                }
                false => {
                    let dots = points.iter().map(|&p| Circle::new(p, 3, color.filled()));
                    chart.draw_series(dots)?;
                    points
                }
            };
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// An exponential moving average whose span is about a tenth of the curve (at least
/// one point), started at the first point, so a noisy loss shows its trend.
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let span = (points.len() as f64 / 10.0).max(1.0);
    let alpha = 2.0 / (span + 1.0);
    let mut level = points.first().map_or(0.0, |p| p.1);
    points
        .iter()
        .map(|&(x, y)| {
            level += alpha * (y - level);
            (x, level)
        })
        .collect()
}

/// `#rrggbb` as a color (gray for anything else).
fn parse_color(hex: &str) -> RGBColor {
    let byte = |i: usize| {
        hex.get(1 + 2 * i..3 + 2 * i)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
    };
    match (hex.len(), byte(0), byte(1), byte(2)) {
        (7, Some(r), Some(g), Some(b)) => RGBColor(r, g, b),
        _ => RGBColor(128, 128, 128),
    }
}

/// Heatmap of `values[row][col]` (e.g. mean gate weight of each expert per category), with
/// the values printed in the cells.
pub fn heatmap_svg(
    path: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> Result<()> {
    let mut svg = header(title);
    let (left, top) = (140.0, 60.0);
    let cell_w = ((W - left - 20.0) / cols.len().max(1) as f64).min(90.0);
    let cell_h = ((H - top - 40.0) / rows.len().max(1) as f64).min(40.0);
    let max = values
        .iter()
        .flatten()
        .fold(f32::MIN_POSITIVE, |m, &v| m.max(v)) as f64;
    for (c, name) in cols.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
            left + (c as f64 + 0.5) * cell_w,
            top - 8.0,
            escape(name)
        );
    }
    for (r, name) in rows.iter().enumerate() {
        let y = top + r as f64 * cell_h;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12">{}</text>"#,
            left - 8.0,
            y + cell_h / 2.0 + 4.0,
            escape(name)
        );
        for (c, &v) in values
            .get(r)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let t = (v as f64 / max).clamp(0.0, 1.0);
            // White to dark blue.
            let (red, green, blue) = (
                (255.0 * (1.0 - t)) as u8,
                (255.0 - 175.0 * t) as u8,
                (255.0 - 100.0 * t) as u8,
            );
            let x = left + c as f64 * cell_w;
            let text_color = if t > 0.5 { "white" } else { "black" };
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{cell_w:.1}" height="{cell_h:.1}" fill="rgb({red},{green},{blue})" stroke="white"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{text_color}">{v:.2}</text>"#,
                x + cell_w / 2.0,
                y + cell_h / 2.0 + 4.0
            );
        }
    }
    svg.push_str("</svg>\n");
    write_atomically(path, |out| std::io::Write::write_all(out, svg.as_bytes()))
}

fn header(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_every_point() {
        let dir = std::env::temp_dir().join(format!("hydralora-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let train: Vec<(f64, f64)> = (1..=60)
            .map(|i| {
                (
                    i as f64,
                    3.0 - i as f64 / 40.0 + if i % 2 == 0 { 0.2 } else { -0.2 },
                )
            })
            .collect();
        let eval = [(20.0, 2.6), (40.0, 2.1), (60.0, 1.7)];
        line_chart_svg(
            &dir.join("loss.svg"),
            "loss <train>",
            "loss",
            &[
                Series {
                    name: "train",
                    color: "#1f77b4",
                    points: &train,
                    smooth: true,
                },
                Series {
                    name: "eval",
                    color: "#d62728",
                    points: &eval,
                    smooth: false,
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(dir.join("loss.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("loss &lt;train&gt;"), "the title, escaped");
        assert!(
            svg.contains(">\neval\n<") && svg.contains(">\ntrain\n<"),
            "the legend"
        );
        // Round ticks: 0.2-spaced losses and 10-spaced steps, not 3-decimal values.
        assert!(
            svg.contains(">\n2.0\n<") && svg.contains(">\n40\n<"),
            "{svg}"
        );
        // Train: the raw curve (faded), its smoothed line and its legend mark; eval: its
        // line and legend mark, and its three points as circles.
        let lines = |color: &str| svg.matches(&format!(r#"stroke="{color}""#)).count();
        assert_eq!((lines("#1F77B4"), lines("#D62728")), (3, 2), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3);
        // The smoothed line swings less than the raw one.
        let swing =
            |pts: &[(f64, f64)]| pts.windows(2).map(|w| (w[1].1 - w[0].1).abs()).sum::<f64>();
        assert!(swing(&smoothed(&train)) < swing(&train) / 3.0);
        heatmap_svg(
            &dir.join("router.svg"),
            "router",
            &["add".into(), "sort".into()],
            &["expert 0".into(), "expert 1".into()],
            &[vec![0.7, 0.3], vec![0.2, 0.8]],
        )
        .unwrap();
        let svg = std::fs::read_to_string(dir.join("router.svg")).unwrap();
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.contains(">0.70<") && svg.contains(">0.80<"));
    }
}

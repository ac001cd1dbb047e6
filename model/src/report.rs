//! Pictures of a run, as SVG files (any browser shows them): the loss curves and the
//! router heatmap. Written directly as SVG: a plotting crate would need a font backend for
//! its labels, and these two charts are a few dozen elements.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::llama::weights::write_atomically;

const W: f64 = 720.0;
const H: f64 = 420.0;
const MARGIN: f64 = 60.0;

/// One named curve of (step, value) points.
pub struct Series<'a> {
    /// The legend's label.
    pub name: &'a str,
    /// An SVG color, e.g. `#1f77b4` or `crimson`.
    pub color: &'a str,
    /// (x, y) points, x usually the step.
    pub points: &'a [(f64, f64)],
}

/// Line chart of several series (train and eval loss) against the step.
pub fn line_chart_svg(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let all = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| MARGIN + (x - x0) / (x1 - x0) * (W - 2.0 * MARGIN);
    let py = |y: f64| H - MARGIN - (y - y0) / (y1 - y0) * (H - 2.0 * MARGIN);
    let mut svg = header(title);
    axes(&mut svg, y_label, "step");
    for i in 0..=4 {
        let (xv, yv) = (
            x0 + (x1 - x0) * i as f64 / 4.0,
            y0 + (y1 - y0) * i as f64 / 4.0,
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
            px(xv),
            H - MARGIN + 16.0,
            fmt_num(xv)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
            MARGIN - 6.0,
            py(yv) + 4.0,
            fmt_num(yv)
        );
    }
    for (k, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let ly = MARGIN + 14.0 * k as f64;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            W - MARGIN - 110.0,
            ly - 4.0,
            s.color,
            W - MARGIN - 94.0,
            ly,
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    write_atomically(path, |out| std::io::Write::write_all(out, svg.as_bytes()))
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

fn axes(svg: &mut String, y_label: &str, x_label: &str) {
    let _ = write!(
        svg,
        r#"<line x1="{MARGIN}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{b}" stroke="black"/><text x="{cx}" y="{lx}" text-anchor="middle" font-size="12">{x}</text><text x="14" y="{cy}" font-size="12" transform="rotate(-90 14 {cy})" text-anchor="middle">{y}</text>"#,
        b = H - MARGIN,
        r = W - MARGIN,
        cx = W / 2.0,
        lx = H - 18.0,
        cy = H / 2.0,
        x = escape(x_label),
        y = escape(y_label)
    );
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
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
        let pts = [(1.0, 3.0), (2.0, 2.5), (3.0, 2.0)];
        line_chart_svg(
            &dir.join("loss.svg"),
            "loss <train>",
            "loss",
            &[Series {
                name: "train",
                color: "#1f77b4",
                points: &pts,
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(dir.join("loss.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("loss &lt;train&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 3);
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

//! A predicted-vs-human scatter plot as a self-contained SVG file (hand-written, no plotting
//! crate).
//!
//! Promises: the plot always has both axes from 0 to `max`, a dashed diagonal for perfect
//! agreement, and one semi-transparent dot per answer (overlapping dots read darker), with
//! points outside the scale clamped to its edge.

use std::fmt::Write as _;
use std::path::Path;

const SIZE: f64 = 480.0;
const MARGIN: f64 = 56.0;

/// Render the scatter as SVG text. `title` goes above the plot.
pub fn render_svg(predicted: &[f64], human: &[f64], max: f64, title: &str) -> String {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let plot = SIZE - 2.0 * MARGIN;
    let x = |v: f64| MARGIN + (v.clamp(0.0, max) / max) * plot;
    let y = |v: f64| SIZE - MARGIN - (v.clamp(0.0, max) / max) * plot;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        SIZE / 2.0,
        escape(title)
    );
    // Grid and tick labels at up to ~10 steps of a round size.
    let step = tick_step(max);
    let mut t = 0.0;
    while t <= max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="#eee"/><line x1="{d}" y1="{e}" x2="{d}" y2="{f}" stroke="#eee"/>"##,
            a = x(0.0),
            b = y(t),
            c = x(max),
            d = x(t),
            e = y(0.0),
            f = y(max)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x(0.0) - 6.0,
            y(t) + 4.0,
            label(t)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            y(0.0) + 18.0,
            label(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{plot}" height="{plot}" fill="none" stroke="#444"/>"##,
        MARGIN, MARGIN
    );
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="5,4"/>"##,
        x(0.0),
        y(0.0),
        x(max),
        y(max)
    );
    for (p, h) in predicted.iter().zip(human) {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#1f6fb4" fill-opacity="0.25"/>"##,
            x(*h),
            y(*p)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">human mark</text>"#,
        SIZE / 2.0,
        SIZE - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">predicted mark</text>"#,
        SIZE / 2.0,
        SIZE / 2.0
    );
    s.push_str("</svg>\n");
    s
}

/// Write the scatter of `predicted` (y) against `human` (x) on a 0..`max` scale to `path`.
pub fn write_plot(
    path: impl AsRef<Path>,
    predicted: &[f64],
    human: &[f64],
    max: f64,
) -> std::io::Result<()> {
    let title = format!(
        "predicted vs human marks (n = {})",
        predicted.len().min(human.len())
    );
    std::fs::write(path, render_svg(predicted, human, max, &title))
}

fn tick_step(max: f64) -> f64 {
    let raw = max / 10.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0)
}

fn label(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
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
    fn svg_has_one_dot_per_pair_and_axes() {
        let svg = render_svg(&[1.0, 2.0, 9.0], &[1.5, 2.0, 3.0], 5.0, "t <x>");
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;x&gt;"));
        assert_eq!(tick_step(5.0), 0.5);
        assert_eq!(tick_step(1.0), 0.1);
        assert_eq!(tick_step(16.0), 2.0);
    }
}

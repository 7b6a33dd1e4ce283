//! Hand-written SVG charts (no plotting dependency): line charts with axes, ticks and a legend,
//! and bar charts with interval whiskers. Output is plain SVG 1.1 text that any browser shows.

use std::fmt::Write;

/// Chart size in pixels and the margins around the plot area.
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

/// Colours of successive series (colour-blind-safe Okabe-Ito hues).
pub const PALETTE: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a marker at every point (sparse series such as per-timestep accuracy).
    pub markers: bool,
}

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// A dashed horizontal reference line (e.g. chance) and its label.
    pub reference: Option<(f64, String)>,
}

pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Interval drawn as a whisker.
    pub interval: Option<(f64, f64)>,
    pub colour: &'static str,
}

pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub bars: Vec<Bar>,
    pub y_range: (f64, f64),
}

/// Maps data coordinates to pixels inside the plot area.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (HEIGHT - TOP - BOTTOM)
    }
}

impl LineChart {
    pub fn render(&self) -> String {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let finite: Vec<(f64, f64)> = pts
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let x = span(finite.iter().map(|p| p.0));
        let y = self
            .y_range
            .unwrap_or_else(|| pad(span(finite.iter().map(|p| p.1))));
        let frame = Frame { x, y };
        let mut out = header(&self.title);
        axes(&mut out, &frame, &self.x_label, &self.y_label);
        if let Some((value, label)) = &self.reference {
            let py = frame.py(*value);
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#666" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                WIDTH - RIGHT - 2.0,
                py - 3.0,
                escape(label)
            );
        }
        for (k, s) in self.series.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let path: Vec<String> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", frame.px(x), frame.py(y)))
                .collect();
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
            if s.markers {
                for &(x, y) in s
                    .points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                {
                    let _ = write!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                        frame.px(x),
                        frame.py(y)
                    );
                }
            }
            // Legend, top left inside the plot area.
            let ly = TOP + 12.0 + 14.0 * k as f64;
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="10" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                LEFT + 8.0,
                ly - 4.0,
                LEFT + 22.0,
                ly,
                escape(&s.name)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

impl BarChart {
    pub fn render(&self) -> String {
        let n = self.bars.len().max(1) as f64;
        let frame = Frame {
            x: (0.0, n),
            y: self.y_range,
        };
        let mut out = header(&self.title);
        axes(&mut out, &frame, "", &self.y_label);
        let slot = (WIDTH - LEFT - RIGHT) / n;
        for (k, b) in self.bars.iter().enumerate() {
            let x0 = frame.px(k as f64) + 0.2 * slot;
            let (top, base) = (frame.py(b.value), frame.py(self.y_range.0));
            let _ = write!(
                out,
                r#"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                0.6 * slot,
                (base - top).max(0.0),
                b.colour
            );
            let cx = x0 + 0.3 * slot;
            if let Some((lo, hi)) = b.interval {
                let (ylo, yhi) = (frame.py(lo), frame.py(hi));
                let _ = write!(
                    out,
                    r##"<path d="M{cx:.1},{ylo:.1}V{yhi:.1}M{:.1},{ylo:.1}h12M{:.1},{yhi:.1}h12" stroke="#222" stroke-width="1.3" fill="none"/>"##,
                    cx - 6.0,
                    cx - 6.0
                );
            }
            let _ = write!(
                out,
                r#"<text x="{cx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.2}</text>"#,
                top - 4.0,
                b.value
            );
            // Labels may have two lines, split at '\n'.
            for (i, line) in b.label.split('\n').enumerate() {
                let _ = write!(
                    out,
                    r#"<text x="{cx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                    HEIGHT - BOTTOM + 16.0 + 13.0 * i as f64,
                    escape(line)
                );
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

fn header(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{:.1}" y="20" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    )
}

/// The plot frame, five ticks per axis with labels, and the axis titles.
fn axes(out: &mut String, f: &Frame, x_label: &str, y_label: &str) {
    let (x1, y1) = (WIDTH - RIGHT, HEIGHT - BOTTOM);
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        x1 - LEFT,
        y1 - TOP
    );
    for i in 0..=4 {
        let v = f.y.0 + (f.y.1 - f.y.0) * i as f64 / 4.0;
        let py = f.py(v);
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            LEFT - 6.0,
            py + 3.5,
            tick(v)
        );
    }
    if !x_label.is_empty() {
        for i in 0..=4 {
            let v = f.x.0 + (f.x.1 - f.x.0) * i as f64 / 4.0;
            let px = f.px(v);
            let _ = write!(
                out,
                r##"<line x1="{px:.1}" y1="{y1}" x2="{px:.1}" y2="{:.1}" stroke="#333"/><text x="{px:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"##,
                y1 + 4.0,
                y1 + 15.0,
                tick(v)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            (LEFT + x1) / 2.0,
            HEIGHT - 8.0,
            escape(x_label)
        );
    }
    let cy = (TOP + y1) / 2.0;
    let _ = write!(
        out,
        r#"<text x="14" y="{cy:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 14 {cy:.1})">{}</text>"#,
        escape(y_label)
    );
}

/// A short tick label: integers plainly, others with up to three significant decimals.
fn tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `(min, max)` of the values, widened when they coincide (or are absent).
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// 5% headroom above and below.
fn pad((lo, hi): (f64, f64)) -> (f64, f64) {
    let m = 0.05 * (hi - lo);
    (lo - m, hi + m)
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
    fn charts_are_well_formed_svg() {
        let line = LineChart {
            title: "a < b".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                name: "loss".into(),
                points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, f64::NAN)],
                markers: true,
            }],
            y_range: None,
            reference: Some((0.75, "chance".into())),
        }
        .render();
        assert!(line.starts_with("<svg") && line.trim_end().ends_with("</svg>"));
        assert!(line.contains("a &lt; b") && !line.contains("NaN"));
        let bars = BarChart {
            title: "quality".into(),
            y_label: "fraction good".into(),
            bars: vec![Bar {
                label: "before\n(n=8)".into(),
                value: 0.25,
                interval: Some((0.1, 0.5)),
                colour: PALETTE[0],
            }],
            y_range: (0.0, 1.0),
        }
        .render();
        assert!(bars.contains("<rect") && bars.contains("(n=8)"));
    }
}

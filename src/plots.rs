//! Line and scatter charts as self-contained SVG.

use std::fmt::Write;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Line,
    Points,
    LineAndPoints,
}

#[derive(Clone, Debug)]
pub struct Series {
    /// The legend entry; a series with an empty name has none.
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    /// Index into the palette, so that related series can share a colour.
    pub color: usize,
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

/// One axis: data range, log or linear, mapped onto a pixel range.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    px_lo: f64,
    px_hi: f64,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool, px_lo: f64, px_hi: f64) -> Axis {
        let t = |v: f64| if log { v.log10() } else { v };
        let (mut lo, mut hi) = values
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .map(t)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let pad = (hi - lo) * 0.04;
        Axis {
            lo: lo - pad,
            hi: hi + pad,
            log,
            px_lo,
            px_hi,
        }
    }

    fn px(&self, v: f64) -> Option<f64> {
        if !v.is_finite() || (self.log && v <= 0.0) {
            return None;
        }
        let t = if self.log { v.log10() } else { v };
        Some(self.px_lo + (t - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo))
    }

    /// Tick positions in data units: powers of ten (and 2, 5 multiples when few) on log axes,
    /// round steps on linear ones.
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (self.lo.floor() as i32, self.hi.ceil() as i32);
            let mults: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            let mut out = Vec::new();
            for e in a..=b {
                for m in mults {
                    let v = m * 10f64.powi(e);
                    if (self.lo..=self.hi).contains(&v.log10()) {
                        out.push(v);
                    }
                }
            }
            out
        } else {
            let raw = (self.hi - self.lo) / 6.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|s| *s >= raw)
                .unwrap_or(10.0 * mag);
            let mut v = (self.lo / step).ceil() * step;
            let mut out = Vec::new();
            while v <= self.hi + 1e-12 {
                out.push(v);
                v += step;
            }
            out
        }
    }
}

fn label(v: f64) -> String {
    // A tick at zero may be −0.0, which would print as "-0".
    let v = if v == 0.0 { 0.0 } else { v };
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let x = Axis::new(all().map(|p| p.0), self.log_x, LEFT, WIDTH - RIGHT);
        let y = Axis::new(all().map(|p| p.1), self.log_y, HEIGHT - BOTTOM, TOP);
        let mut svg = String::new();
        let w = &mut svg;
        let _ = writeln!(
            w,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(w, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            w,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            escape(&self.title)
        );
        for t in x.ticks() {
            if let Some(px) = x.px(t) {
                let _ = writeln!(
                    w,
                    r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#e5e5e5"/>"##,
                    HEIGHT - BOTTOM
                );
                let _ = writeln!(
                    w,
                    r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
                    HEIGHT - BOTTOM + 16.0,
                    label(t)
                );
            }
        }
        for t in y.ticks() {
            if let Some(py) = y.px(t) {
                let _ = writeln!(
                    w,
                    r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#e5e5e5"/>"##,
                    WIDTH - RIGHT
                );
                let _ = writeln!(
                    w,
                    r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                    LEFT - 6.0,
                    py + 4.0,
                    label(t)
                );
            }
        }
        let _ = writeln!(
            w,
            r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
            WIDTH - RIGHT - LEFT,
            HEIGHT - BOTTOM - TOP
        );
        let _ = writeln!(
            w,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            w,
            r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (TOP + HEIGHT - BOTTOM) / 2.0,
            escape(&self.y_label)
        );
        let mut legend_row = 0;
        for s in &self.series {
            let color = COLORS[s.color % COLORS.len()];
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|&(a, b)| Some((x.px(a)?, y.px(b)?)))
                .collect();
            if s.style != Style::Points && pts.len() > 1 {
                let path: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
                let _ = writeln!(
                    w,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                    path.join(" ")
                );
            }
            if s.style != Style::Line {
                for (a, b) in &pts {
                    let _ = writeln!(
                        w,
                        r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.2" fill="{color}"/>"#
                    );
                }
            }
            if s.name.is_empty() {
                continue;
            }
            let ly = TOP + 14.0 + 18.0 * legend_row as f64;
            legend_row += 1;
            let lx = WIDTH - RIGHT + 12.0;
            let _ = writeln!(
                w,
                r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{color}"/>"#,
                ly - 5.0
            );
            let _ = writeln!(
                w,
                r#"<text x="{}" y="{ly}">{}</text>"#,
                lx + 20.0,
                escape(&s.name)
            );
        }
        let _ = writeln!(w, "</svg>");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_polyline_per_line_series_and_a_legend() {
        let chart = Chart {
            title: "loss <train>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            log_x: false,
            log_y: true,
            series: vec![
                Series {
                    name: "train".into(),
                    points: vec![(1.0, 4.0), (2.0, 2.0), (3.0, 1.0)],
                    style: Style::Line,
                    color: 0,
                },
                Series {
                    name: "val".into(),
                    points: vec![(3.0, 1.5)],
                    style: Style::Points,
                    color: 1,
                },
            ],
        };
        let svg = chart.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("loss &lt;train&gt;") && svg.contains(">val<"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn zero_is_labelled_without_a_sign() {
        assert_eq!(label(-0.0), "0");
        assert_eq!(label(-0.5), "-0.5");
        assert_eq!(label(20.0), "20");
    }

    #[test]
    fn log_ticks_are_powers_of_ten() {
        let axis = Axis::new([1.0, 1000.0].into_iter(), true, 0.0, 100.0);
        assert_eq!(axis.ticks(), vec![1.0, 10.0, 100.0, 1000.0]);
    }
}

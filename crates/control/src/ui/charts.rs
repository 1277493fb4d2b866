//! The endpoint page's charts: small self-contained SVG line charts over the last hour, drawn
//! on the server (as `ferry bench --chart` draws its own), with a fixed view box so a refresh
//! never moves the page.

use std::fmt::Write as _;

use super::history::Sample;
use super::pages::esc;

const W: f64 = 480.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 24.0;
/// The longest time span shown, seconds (what the history keeps).
const WINDOW: f64 = 3600.0;
/// The shortest, so a fresh endpoint's first samples do not fill the whole width.
const MIN_SPAN: f64 = 120.0;

/// One line of a chart.
pub struct Line<'a> {
    /// Legend.
    pub label: &'a str,
    /// CSS class (its colour, in console.css).
    pub class: &'a str,
    /// Value per sample (`None`: a gap).
    pub value: &'a dyn Fn(&Sample) -> Option<f64>,
}

/// A chart of `lines` over `samples` ending at `now` (Unix seconds): the time axis spans the
/// history there is, from two minutes up to an hour.
pub fn chart(title: &str, unit: &str, samples: &[Sample], lines: &[Line<'_>], now: f64) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let span = samples
        .first()
        .map_or(MIN_SPAN, |s| (now - s.unix).clamp(MIN_SPAN, WINDOW));
    let max = samples
        .iter()
        .flat_map(|s| lines.iter().filter_map(|l| (l.value)(s)))
        .fold(0.0_f64, f64::max);
    let y_max = if max > 0.0 { nice_ceil(max) } else { 1.0 };
    let x = |unix: f64| LEFT + ((unix - (now - span)) / span).clamp(0.0, 1.0) * pw;
    let y = |v: f64| TOP + ph - (v / y_max).clamp(0.0, 1.0) * ph;
    let mut svg = String::with_capacity(8 * 1024);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><title>{t}</title><text class="ct" x="{LEFT}" y="16">{t} <tspan class="cu">{u}</tspan></text>"#,
        t = esc(title),
        u = esc(unit),
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}"/><text class="ax" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT + pw,
            LEFT - 4.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    for i in 0..=4 {
        let xx = LEFT + pw * f64::from(i) / 4.0;
        let ago = span * f64::from(4 - i) / 4.0;
        let label = if i == 4 {
            "now".to_owned()
        } else if span >= 600.0 {
            format!("-{:.0}m", ago / 60.0)
        } else {
            format!("-{ago:.0}s")
        };
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r#"<text class="ax" x="{xx:.1}" y="{:.1}" text-anchor="{anchor}">{label}</text>"#,
            H - 6.0
        );
    }
    let mut lx = W - RIGHT;
    for l in lines.iter().rev() {
        lx -= 8.0 + 7.0 * l.label.len() as f64;
        let _ = write!(
            svg,
            r#"<rect class="{c} sw" x="{lx:.1}" y="8" width="8" height="8"/><text class="lg" x="{:.1}" y="16">{}</text>"#,
            lx + 11.0,
            esc(l.label),
            c = l.class,
        );
        lx -= 12.0;
    }
    for l in lines {
        let mut d = String::new();
        let mut pen_down = false;
        for s in samples.iter().filter(|s| s.unix >= now - span) {
            match (l.value)(s) {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1}",
                        if pen_down { " L" } else { " M" },
                        x(s.unix),
                        y(v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(svg, r#"<path class="{} ln" d="{}"/>"#, l.class, d.trim());
        }
    }
    if samples.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="ax" x="{:.1}" y="{:.1}" text-anchor="middle">collecting the first sample…</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A short number for an axis or a table cell.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The next "round" number at or above `v` (1, 2, 5 × 10^k): an axis's top or step.
pub fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(unix: f64, rate: f64) -> Sample {
        Sample {
            unix,
            rate,
            ready: 1,
            loading: 0,
            cold: 0,
            error: 0,
            queued: 0,
            queue_time: None,
            gpu_seconds: 0.0,
        }
    }

    #[test]
    fn chart_draws_lines_with_gaps_and_a_fixed_box() {
        let samples = [sample(1000.0, 2.0), sample(1005.0, 5.0)];
        let rate = |s: &Sample| Some(s.rate);
        let gap = |s: &Sample| s.queue_time;
        let svg = chart(
            "Requests <rate>",
            "req/s",
            &samples,
            &[
                Line {
                    label: "rate",
                    class: "c1",
                    value: &rate,
                },
                Line {
                    label: "queue",
                    class: "c2",
                    value: &gap,
                },
            ],
            1005.0,
        );
        assert!(svg.starts_with(r#"<svg class="chart" viewBox="0 0 480 200""#));
        assert!(svg.contains("Requests &lt;rate&gt;"));
        // One path for the rate (two points, the max 5 at the top right), none for the all-gap line.
        assert_eq!(svg.matches("<path").count(), 1);
        assert!(svg.contains(&format!(" L{:.1},{:.1}", W - RIGHT, TOP)));
        // Five seconds of history: drawn over the shortest span, labelled in seconds.
        assert!(svg.contains(">-120s<") && svg.contains(">now<"), "{svg}");
        assert_eq!(nice_ceil(3.2), 5.0);
        assert_eq!(nice_ceil(0.011), 0.02);
        assert_eq!(fmt_num(123.4), "123");
    }
}

//! `--chart FILE.svg`: latency over time as a self-contained SVG (no scripts, no fonts to
//! fetch), readable in any browser. Each request is a dot at its (intended) send time; lines
//! show the p50 and p99 of successful requests per time slice; failures are red.

use std::fmt::Write as _;

use ferry_control::ui::charts::nice_ceil;
use ferry_control::ui::pages::esc;

use super::load::Point;
use super::report::Report;

const W: f64 = 960.0;
const H: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const MAX_DOTS: usize = 6000;
const SLICES: usize = 60;

/// Renders the chart.
pub fn render(points: &[Point], report: &Report) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let t_max_s = points
        .iter()
        .map(|p| p.at_us)
        .max()
        .map_or(1.0, |us| (us as f64 / 1e6).max(1e-3));
    let y_max_ms = nice_ceil(
        points
            .iter()
            .map(|p| p.latency_us as f64 / 1000.0)
            .fold(0.0, f64::max)
            .max(0.001),
    );
    let x = |s: f64| LEFT + s / t_max_s * pw;
    let y = |ms: f64| TOP + ph - (ms / y_max_ms).min(1.0) * ph;

    let mut svg = String::with_capacity(64 * 1024);
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>
<text x="{LEFT}" y="40" fill="#555">{}</text>
"##,
        esc(&format!(
            "ferry bench: latency over time, {} {}",
            report.target_kind, report.target
        )),
        esc(&subtitle(report)),
    );
    // Axes and grid.
    for i in 0..=5 {
        let v = y_max_ms * f64::from(i) / 5.0;
        let yy = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    // Time ticks at a round step.
    let step = nice_ceil(t_max_s / 5.0);
    let mut k = 0.0;
    while k * step <= t_max_s * 1.0001 {
        let t = k * step;
        let xx = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            fmt_num(t)
        );
        k += 1.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text>
<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (ms)</text>"##,
        LEFT + pw / 2.0,
        H - 18.0,
        TOP + ph / 2.0
    );
    // Dots, thinned to at most MAX_DOTS (failures always drawn).
    let stride = points.len().div_ceil(MAX_DOTS).max(1);
    svg.push_str(r##"<g fill="#4a7bd0" fill-opacity="0.35">"##);
    for p in points.iter().step_by(stride).filter(|p| p.ok) {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6"/>"#,
            x(p.at_us as f64 / 1e6),
            y(p.latency_us as f64 / 1000.0)
        );
    }
    svg.push_str("</g>\n");
    svg.push_str(r##"<g fill="#d0312d" fill-opacity="0.8">"##);
    for p in points.iter().filter(|p| !p.ok).take(MAX_DOTS) {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.2"/>"#,
            x(p.at_us as f64 / 1e6),
            y(p.latency_us as f64 / 1000.0)
        );
    }
    svg.push_str("</g>\n");
    // Per-slice p50 / p99 lines.
    let mut slices: Vec<Vec<u64>> = vec![Vec::new(); SLICES];
    for p in points.iter().filter(|p| p.ok) {
        let i = ((p.at_us as f64 / 1e6) / t_max_s * SLICES as f64) as usize;
        if let Some(s) = slices.get_mut(i.min(SLICES - 1)) {
            s.push(p.latency_us);
        }
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (i, s) in slices.iter_mut().enumerate() {
        if s.is_empty() {
            continue;
        }
        s.sort_unstable();
        let at = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        let xx = x((i as f64 + 0.5) / SLICES as f64 * t_max_s);
        p50.push(format!("{xx:.1},{:.1}", y(at(0.5) as f64 / 1000.0)));
        p99.push(format!("{xx:.1},{:.1}", y(at(0.99) as f64 / 1000.0)));
    }
    for (pts, color, label, ly) in [
        (&p99, "#e08a00", "p99", 0.0),
        (&p50, "#1b5e20", "p50", 16.0),
    ] {
        if !pts.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                pts.join(" ")
            );
        }
        let lx = LEFT + pw - 150.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{label} per slice</text>"#,
            TOP + 14.0 + ly,
            lx + 20.0,
            TOP + 14.0 + ly,
            lx + 26.0,
            TOP + 18.0 + ly
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn subtitle(r: &Report) -> String {
    let mut s = format!(
        "{} ok, {} errors, {:.1} req/s",
        r.ok, r.errors, r.throughput_rps
    );
    if let Some(l) = &r.latency_ms {
        let _ = write!(
            s,
            "; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50, l.p99, l.max
        );
    }
    s
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 || v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceil(3.2), 5.0);
        assert_eq!(nice_ceil(0.7), 1.0);
        assert_eq!(nice_ceil(120.0), 200.0);
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
        assert_eq!(fmt_num(0.25), "0.250");
    }
}

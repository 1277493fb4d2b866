//! What a run measured ([`Outcome`]) and its renderings: a table, side-by-side columns for
//! several policies ([`compare_table`]), and an SVG chart ([`svg_chart`]). JSON is the
//! `Outcome` serialized.

use std::fmt::Write as _;

use serde::Serialize;

use super::SimConfig;
use crate::autoscale::AutoscalePolicy;

/// Percentiles of a distribution, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Percentiles {
        if xs.is_empty() {
            return Percentiles::default();
        }
        xs.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |q: f64| {
            let rank = (q * xs.len() as f64).ceil() as usize;
            xs[rank.clamp(1, xs.len()) - 1]
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: xs[xs.len() - 1],
        }
    }
}

/// One time bucket of the chart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Start of the bucket, seconds.
    pub t: f64,
    /// Requests that arrived in it.
    pub arrivals: u32,
    /// Workers ready, coming up and stopped at its last tick.
    pub ready: u32,
    /// See `ready`.
    pub loading: u32,
    /// See `ready`.
    pub stopped: u32,
    /// Requests waiting in the control plane's queue at its last tick.
    pub queued: usize,
    /// Longest queue time of the requests that started in it, seconds.
    pub queue_time_max: f64,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The endpoint's policy.
    pub policy: AutoscalePolicy,
    /// Requests in the trace.
    pub requests: usize,
    /// Requests served.
    pub served: usize,
    /// Requests whose client gave up waiting in the queue.
    pub rejected: usize,
    /// Simulated seconds, to the last request's end.
    pub duration_s: f64,
    /// Worker-seconds up (launching, loading, ready or stopping).
    pub hot_s: f64,
    /// Worker-seconds stopped.
    pub stopped_s: f64,
    /// `hot_s × price_hot_s + stopped_s × price_stopped_s`.
    pub cost: f64,
    /// The trace's total work over one worker's real throughput: a clairvoyant fleet that is
    /// never idle.
    pub lower_bound_s: f64,
    /// Its price (hot).
    pub lower_bound_cost: f64,
    /// `cost / lower_bound_cost`.
    pub cost_ratio: f64,
    /// Workers launched.
    pub launches: u32,
    /// Workers resumed from cold.
    pub resumes: u32,
    /// Workers stopped.
    pub stops: u32,
    /// Workers destroyed.
    pub destroys: u32,
    /// Requests that waited for a worker that became ready after they arrived.
    pub cold_start_requests: usize,
    /// Arrival to start on a worker, seconds.
    pub queue_time: Percentiles,
    /// Arrival to finish, seconds.
    pub latency: Percentiles,
    /// The chart's buckets.
    pub timeline: Vec<Sample>,
}

/// Collects a run's measurements as it goes.
#[derive(Debug)]
pub(crate) struct Recorder {
    bucket_s: f64,
    timeline: Vec<Sample>,
    queue_times: Vec<f64>,
    latencies: Vec<f64>,
    cold_starts: usize,
    rejected: usize,
    hot_s: f64,
    cold_s: f64,
    launches: u32,
    resumes: u32,
    stops: u32,
    destroys: u32,
}

impl Recorder {
    pub(crate) fn new(bucket_s: f64) -> Recorder {
        Recorder {
            bucket_s,
            timeline: Vec::new(),
            queue_times: Vec::new(),
            latencies: Vec::new(),
            cold_starts: 0,
            rejected: 0,
            hot_s: 0.0,
            cold_s: 0.0,
            launches: 0,
            resumes: 0,
            stops: 0,
            destroys: 0,
        }
    }

    fn bucket(&mut self, t: f64) -> &mut Sample {
        let i = (t / self.bucket_s).floor().max(0.0) as usize;
        while self.timeline.len() <= i {
            let t = self.timeline.len() as f64 * self.bucket_s;
            self.timeline.push(Sample {
                t,
                ..Sample::default()
            });
        }
        &mut self.timeline[i]
    }

    pub(crate) fn arrival(&mut self, t: f64) {
        self.bucket(t).arrivals += 1;
    }

    pub(crate) fn started(&mut self, t: f64, queue_time: f64, cold: bool) {
        self.queue_times.push(queue_time);
        if cold {
            self.cold_starts += 1;
        }
        let b = self.bucket(t);
        b.queue_time_max = b.queue_time_max.max(queue_time);
    }

    pub(crate) fn finished(&mut self, latency: f64) {
        self.latencies.push(latency);
    }

    pub(crate) fn rejected(&mut self) {
        self.rejected += 1;
    }

    pub(crate) fn tick(&mut self, t: f64, [ready, loading, stopped]: [u32; 3], queued: usize) {
        let b = self.bucket(t);
        (b.ready, b.loading, b.stopped, b.queued) = (ready, loading, stopped, queued);
    }

    pub(crate) fn hot(&mut self, s: f64) {
        self.hot_s += s;
    }
    pub(crate) fn cold(&mut self, s: f64) {
        self.cold_s += s;
    }
    pub(crate) fn launch(&mut self) {
        self.launches += 1;
    }
    pub(crate) fn resume(&mut self) {
        self.resumes += 1;
    }
    pub(crate) fn stop(&mut self) {
        self.stops += 1;
    }
    pub(crate) fn destroy(&mut self) {
        self.destroys += 1;
    }

    pub(crate) fn into_outcome(
        self,
        cfg: &SimConfig,
        duration_s: f64,
        requests: usize,
        total_work: f64,
        policy: AutoscalePolicy,
    ) -> Outcome {
        let cost = self.hot_s * cfg.price_hot_s + self.cold_s * cfg.price_stopped_s;
        let lower_bound_s = total_work / cfg.worker.real_perf;
        let lower_bound_cost = lower_bound_s * cfg.price_hot_s;
        Outcome {
            policy,
            requests,
            served: self.latencies.len(),
            rejected: self.rejected,
            duration_s,
            hot_s: self.hot_s,
            stopped_s: self.cold_s,
            cost,
            lower_bound_s,
            lower_bound_cost,
            cost_ratio: if lower_bound_cost > 0.0 {
                cost / lower_bound_cost
            } else {
                0.0
            },
            launches: self.launches,
            resumes: self.resumes,
            stops: self.stops,
            destroys: self.destroys,
            cold_start_requests: self.cold_starts,
            queue_time: Percentiles::of(self.queue_times),
            latency: Percentiles::of(self.latencies),
            timeline: self.timeline,
        }
    }
}

/// The rows of the table: label and value of one outcome.
fn rows(o: &Outcome) -> Vec<(&'static str, String)> {
    vec![
        ("policy", o.policy.as_str().to_owned()),
        ("requests", o.requests.to_string()),
        ("served", o.served.to_string()),
        ("rejected", o.rejected.to_string()),
        ("simulated s", format!("{:.0}", o.duration_s)),
        ("cost $", format!("{:.4}", o.cost)),
        ("cost / lower bound", format!("{:.2}", o.cost_ratio)),
        ("hot GPU-s", format!("{:.0}", o.hot_s)),
        ("stopped GPU-s", format!("{:.0}", o.stopped_s)),
        ("lower bound GPU-s", format!("{:.0}", o.lower_bound_s)),
        ("launches", o.launches.to_string()),
        ("resumes", o.resumes.to_string()),
        ("stops", o.stops.to_string()),
        ("destroys", o.destroys.to_string()),
        ("cold-start requests", o.cold_start_requests.to_string()),
        ("queue p50 s", format!("{:.2}", o.queue_time.p50)),
        ("queue p90 s", format!("{:.2}", o.queue_time.p90)),
        ("queue p99 s", format!("{:.2}", o.queue_time.p99)),
        ("latency p50 s", format!("{:.2}", o.latency.p50)),
        ("latency p90 s", format!("{:.2}", o.latency.p90)),
        ("latency p99 s", format!("{:.2}", o.latency.p99)),
    ]
}

/// Outcomes side by side, one column each (one outcome: a two-column table).
pub fn compare_table(outcomes: &[Outcome]) -> String {
    let cols: Vec<Vec<(&str, String)>> = outcomes.iter().map(rows).collect();
    let Some(first) = cols.first() else {
        return String::new();
    };
    let label_w = first.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, (label, _)) in first.iter().enumerate() {
        let _ = write!(out, "{label:<label_w$}");
        for c in &cols {
            let _ = write!(out, "  {:>10}", c[i].1);
        }
        out.push('\n');
    }
    out
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// An SVG chart: arrivals per bucket on top, then for each outcome the workers by state
/// (ready, coming up, stopped) and the longest queue time per bucket.
pub fn svg_chart(outcomes: &[Outcome], title: &str) -> String {
    let (w, left, panel_h, gap) = (1000.0, 60.0, 120.0, 30.0);
    let plot_w = w - left - 20.0;
    let n_panels = 1 + 2 * outcomes.len();
    let h = 40.0 + n_panels as f64 * (panel_h + gap);
    let t_max = outcomes
        .iter()
        .filter_map(|o| o.timeline.last().map(|s| s.t))
        .fold(1.0f64, f64::max);
    let x = |t: f64| left + plot_w * t / t_max;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">{}</text>"#,
        xml_escape(title)
    );
    let mut top = 40.0;
    let mut panel = |svg: &mut String, label: &str, series: &[(&str, Vec<(f64, f64)>)]| {
        let y_max = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .fold(1e-9f64, f64::max);
        let y = |v: f64| top + panel_h - panel_h * v / y_max;
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/>"##
        );
        let _ = write!(
            svg,
            r#"<text x="{left}" y="{}">{} (max {:.1})</text>"#,
            top - 4.0,
            xml_escape(label),
            y_max
        );
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut d = String::new();
            for (k, (t, v)) in pts.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if k == 0 { "M" } else { "L" },
                    x(*t),
                    y(*v)
                );
            }
            let _ = write!(
                svg,
                r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.2"/>"#
            );
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
                left + plot_w - 220.0 + 75.0 * i as f64,
                top - 4.0,
                xml_escape(name)
            );
        }
        top += panel_h + gap;
    };
    if let Some(first) = outcomes.first() {
        let arrivals: Vec<(f64, f64)> = first
            .timeline
            .iter()
            .map(|s| (s.t, f64::from(s.arrivals)))
            .collect();
        panel(&mut svg, "arrivals per bucket", &[("arrivals", arrivals)]);
    }
    for o in outcomes {
        let series = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
            o.timeline.iter().map(|s| (s.t, f(s))).collect()
        };
        panel(
            &mut svg,
            &format!("{}: workers by state", o.policy.as_str()),
            &[
                ("ready", series(|s| f64::from(s.ready))),
                ("coming", series(|s| f64::from(s.loading))),
                ("stopped", series(|s| f64::from(s.stopped))),
            ],
        );
        panel(
            &mut svg,
            &format!("{}: longest queue time per bucket, s", o.policy.as_str()),
            &[("queue s", series(|s| s.queue_time_max))],
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{}">simulated time, 0 to {:.0} s</text></svg>"#,
        h - 8.0,
        t_max
    );
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
        assert_eq!(Percentiles::of(vec![3.0]).p99, 3.0);
    }
}

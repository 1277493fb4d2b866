//! Request traces: the CSV reader and the time and size transforms.
//!
//! The format is the Azure LLM inference trace's: a header, then `TIMESTAMP, ContextTokens,
//! GeneratedTokens` per request, `TIMESTAMP` as `YYYY-MM-DD HH:MM:SS[.fraction]` (or plain
//! seconds). A request's workload is counted the way Ferry's `openai` worker preset counts it,
//! `max_tokens`, i.e. its generated tokens, plus `context_weight` × its context tokens (0 by
//! default; a prefill cost can be given that way).

use std::fmt;

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Arrival, seconds from the start of the trace.
    pub at: f64,
    /// Workload units (what the client sends as `cost`, and what the worker serves).
    pub cost: f64,
}

/// A trace that could not be read: the line (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// Line number, 1-based.
    pub line: usize,
    /// What is wrong with it.
    pub msg: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace line {}: {}", self.line, self.msg)
    }
}

impl std::error::Error for TraceError {}

/// Requests in arrival order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// The requests, sorted by `at`, the first at 0.
    pub requests: Vec<Request>,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds of a `YYYY-MM-DD HH:MM:SS[.f]` timestamp (since 1970, UTC assumed), or of plain
/// seconds.
fn parse_time(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':');
    let h = t.next()?.parse::<f64>().ok()?;
    let mi = t.next()?.parse::<f64>().ok()?;
    let se = t.next()?.parse::<f64>().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    Some(days_from_civil(y, mo, da) as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + se)
}

impl Trace {
    /// Reads a CSV trace (see the module docs). A first line that does not parse as a request
    /// is taken as the header; blank lines are skipped.
    pub fn parse_csv(text: &str, context_weight: f64) -> Result<Trace, TraceError> {
        let mut raw: Vec<(f64, f64)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |msg: &str| TraceError {
                line: n + 1,
                msg: msg.to_owned(),
            };
            let mut cols = line.split(',').map(str::trim);
            let (Some(ts), Some(ctx), Some(gen)) = (cols.next(), cols.next(), cols.next()) else {
                return Err(bad("expected TIMESTAMP, ContextTokens, GeneratedTokens"));
            };
            let parsed = (
                parse_time(ts),
                ctx.parse::<f64>().ok(),
                gen.parse::<f64>().ok(),
            );
            let (Some(at), Some(ctx), Some(gen)) = parsed else {
                if n == 0 || raw.is_empty() && text.lines().take(n).all(|l| l.trim().is_empty()) {
                    continue; // the header
                }
                return Err(bad("unreadable timestamp or token count"));
            };
            if !(ctx >= 0.0 && gen >= 0.0 && ctx.is_finite() && gen.is_finite()) {
                return Err(bad("token counts must be finite and >= 0"));
            }
            raw.push((at, gen + context_weight * ctx));
        }
        if raw.is_empty() {
            return Err(TraceError {
                line: 0,
                msg: "no requests".into(),
            });
        }
        raw.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = raw[0].0;
        Ok(Trace {
            requests: raw
                .into_iter()
                .map(|(at, cost)| Request { at: at - t0, cost })
                .collect(),
        })
    }

    /// Seconds from the first arrival to the last.
    pub fn span(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.at)
    }

    /// Total workload.
    pub fn total_work(&self) -> f64 {
        self.requests.iter().map(|r| r.cost).sum()
    }

    /// Every arrival time divided by `factor` (2 = twice as fast).
    pub fn speed(mut self, factor: f64) -> Trace {
        if factor > 0.0 && factor.is_finite() {
            for r in &mut self.requests {
                r.at /= factor;
            }
        }
        self
    }

    /// Every gap between consecutive arrivals longer than `min_gap` seconds multiplied by
    /// `factor`; `min_gap` 0 stretches every gap (the trace then lasts `factor` times as long).
    pub fn stretch_gaps(mut self, factor: f64, min_gap: f64) -> Trace {
        if !(factor > 0.0 && factor.is_finite()) {
            return self;
        }
        let mut prev_in = 0.0;
        let mut prev_out = 0.0;
        for r in &mut self.requests {
            let gap = r.at - prev_in;
            prev_in = r.at;
            let gap = if gap > min_gap { gap * factor } else { gap };
            prev_out += gap;
            r.at = prev_out;
        }
        self
    }

    /// Every request's workload multiplied by `factor`.
    pub fn scale_sizes(mut self, factor: f64) -> Trace {
        if factor >= 0.0 && factor.is_finite() {
            for r in &mut self.requests {
                r.cost *= factor;
            }
        }
        self
    }

    /// The trace played `times` times back to back (each copy starts one mean gap after the
    /// previous one ends).
    pub fn tile(self, times: u32) -> Trace {
        if times <= 1 || self.requests.is_empty() {
            return self;
        }
        let n = self.requests.len();
        let period = self.span() + self.span() / n.max(1) as f64;
        let mut out = Vec::with_capacity(n * times as usize);
        for k in 0..times {
            let shift = period * f64::from(k);
            out.extend(self.requests.iter().map(|r| Request {
                at: r.at + shift,
                cost: r.cost,
            }));
        }
        Trace { requests: out }
    }

    /// Only the requests that arrive in the first `seconds`.
    pub fn truncate(mut self, seconds: f64) -> Trace {
        self.requests.retain(|r| r.at <= seconds);
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const CSV: &str = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
        2023-11-16 18:17:03.5000000,100,10\n\
        2023-11-16 18:17:04.0000000,50,20\n\
        2023-11-16 18:17:14.0000000,10,30\n";

    #[test]
    fn reads_the_azure_format() {
        let t = Trace::parse_csv(CSV, 0.0).unwrap();
        let at: Vec<f64> = t.requests.iter().map(|r| r.at).collect();
        assert_eq!(at, vec![0.0, 0.5, 10.5]);
        assert_eq!(t.total_work(), 60.0);
        let t = Trace::parse_csv(CSV, 0.1).unwrap();
        assert_eq!(t.requests[0].cost, 20.0);
        // A day boundary and plain seconds.
        assert_eq!(
            parse_time("2023-11-17 00:00:00").unwrap() - parse_time("2023-11-16 23:59:59").unwrap(),
            1.0
        );
        assert_eq!(parse_time("1970-01-01 00:00:01.5"), Some(1.5));
        assert_eq!(Trace::parse_csv("3,1,2\n1,1,1\n", 0.0).unwrap().span(), 2.0);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = Trace::parse_csv("a,b,c\n1,2,3\n2,x,3\n", 0.0).unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(Trace::parse_csv("h,h,h\n", 0.0).unwrap_err().line, 0);
        assert_eq!(
            Trace::parse_csv("h,h,h\n1,-2,3\n", 0.0).unwrap_err().line,
            2
        );
        assert_eq!(Trace::parse_csv("h,h,h\n1,2\n", 0.0).unwrap_err().line, 2);
    }

    #[test]
    fn transforms() {
        let t = Trace::parse_csv(CSV, 0.0).unwrap();
        let at = |t: &Trace| t.requests.iter().map(|r| r.at).collect::<Vec<_>>();
        assert_eq!(at(&t.clone().speed(2.0)), vec![0.0, 0.25, 5.25]);
        assert_eq!(
            at(&t.clone().stretch_gaps(10.0, 0.0)),
            vec![0.0, 5.0, 105.0]
        );
        // Only gaps above 1 s stretch.
        assert_eq!(
            at(&t.clone().stretch_gaps(10.0, 1.0)),
            vec![0.0, 0.5, 100.5]
        );
        assert_eq!(t.clone().scale_sizes(2.0).total_work(), 120.0);
        let tiled = t.clone().tile(2);
        assert_eq!(tiled.requests.len(), 6);
        assert_eq!(tiled.requests[3].at, 10.5 + 3.5);
        assert_eq!(t.truncate(1.0).requests.len(), 2);
    }
}

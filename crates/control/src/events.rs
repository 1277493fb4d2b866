//! The recent history of each endpoint and workergroup, for `/get_endpoint_logs/` and
//! `/get_autogroup_logs/`: the autoscaler's decisions with their reasons, worker lifecycle
//! changes and errors, and the endpoint's status line, newest last.
//!
//! Four cumulative levels, Vast's: `info0` holds what a user must know (decisions, errors,
//! rolling updates), `info1` adds worker lifecycle changes, `trace` adds status-line changes,
//! `debug` everything. Bounded: the newest [`KEEP`] entries per endpoint and per workergroup,
//! in memory (a restart starts a fresh history; the records themselves are in the store).

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::registry::WorkerState;

/// Entries kept per endpoint and per workergroup.
pub const KEEP: usize = 500;

/// How much an entry matters: a level shows its own entries and every more important one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Decisions, errors, rolling updates.
    Info0 = 0,
    /// Worker lifecycle.
    Info1 = 1,
    /// Status-line changes.
    Trace = 2,
    /// Everything else.
    Debug = 3,
}

#[derive(Debug, Clone)]
struct Entry {
    unix: f64,
    level: Level,
    text: String,
}

/// The logs of one endpoint or workergroup as Vast's API returns them: one text per level.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Logs {
    /// Level 0.
    pub info0: String,
    /// Levels 0–1.
    pub info1: String,
    /// Levels 0–2.
    pub trace: String,
    /// Every level.
    pub debug: String,
}

/// What the logs last saw of a worker, to log changes only.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    endpoint: i64,
    group: i64,
    state: WorkerState,
    error: String,
}

/// Recent history by endpoint and by workergroup.
#[derive(Debug, Default)]
pub struct Events {
    endpoints: HashMap<i64, VecDeque<Entry>>,
    groups: HashMap<i64, VecDeque<Entry>>,
    workers: HashMap<i64, Seen>,
    status: HashMap<i64, String>,
}

impl Events {
    /// Records an entry for an endpoint and, when given, one of its workergroups.
    pub fn record(
        &mut self,
        unix: f64,
        endpoint: i64,
        group: Option<i64>,
        level: Level,
        text: String,
    ) {
        let entry = Entry { unix, level, text };
        if let Some(g) = group {
            push(self.groups.entry(g).or_default(), entry.clone());
        }
        push(self.endpoints.entry(endpoint).or_default(), entry);
    }

    /// Logs a worker's state or error when it changed since the last look (called every tick,
    /// so a change shorter than a tick can go unseen).
    pub fn observe_worker(
        &mut self,
        unix: f64,
        (endpoint, group, worker): (i64, i64, i64),
        state: WorkerState,
        error: &str,
    ) {
        let now = Seen {
            endpoint,
            group,
            state,
            error: error.to_owned(),
        };
        let before = self.workers.insert(worker, now.clone());
        if before.as_ref() == Some(&now) {
            return;
        }
        let from = before.as_ref().map_or("new", |b| b.state.as_str());
        if before.as_ref().map(|b| b.state) != Some(state) {
            let text = format!("worker {worker}: {from} -> {}", state.as_str());
            self.record(unix, endpoint, Some(group), Level::Info1, text);
        }
        if !error.is_empty() && before.as_ref().map(|b| b.error.as_str()) != Some(error) {
            let text = format!("worker {worker} error: {error}");
            self.record(unix, endpoint, Some(group), Level::Info0, text);
        }
    }

    /// Logs and forgets the workers that are gone (`exists` says which still are).
    pub fn sweep(&mut self, unix: f64, exists: impl Fn(i64) -> bool) {
        let gone: Vec<(i64, Seen)> = self
            .workers
            .iter()
            .filter(|(id, _)| !exists(**id))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        for (id, seen) in gone {
            self.workers.remove(&id);
            let text = format!("worker {id}: {} -> removed", seen.state.as_str());
            self.record(unix, seen.endpoint, Some(seen.group), Level::Info1, text);
        }
    }

    /// Logs an endpoint's status line when it changed.
    pub fn observe_status(&mut self, unix: f64, endpoint: i64, line: String) {
        if self.status.get(&endpoint) != Some(&line) {
            self.status.insert(endpoint, line.clone());
            self.record(unix, endpoint, None, Level::Trace, line);
        }
    }

    /// An endpoint's logs, the last `tail` lines of each level when given.
    pub fn endpoint(&self, id: i64, tail: Option<usize>) -> Logs {
        render(self.endpoints.get(&id), tail)
    }

    /// A workergroup's logs.
    pub fn group(&self, id: i64, tail: Option<usize>) -> Logs {
        render(self.groups.get(&id), tail)
    }
}

fn push(q: &mut VecDeque<Entry>, e: Entry) {
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(e);
}

fn render(entries: Option<&VecDeque<Entry>>, tail: Option<usize>) -> Logs {
    let level = |max: Level| {
        let lines: Vec<String> = entries
            .into_iter()
            .flatten()
            .filter(|e| e.level <= max)
            .map(|e| format!("{} {}", timestamp(e.unix), e.text))
            .collect();
        let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
        lines[skip..].join("\n")
    };
    Logs {
        info0: level(Level::Info0),
        info1: level(Level::Info1),
        trace: level(Level::Trace),
        debug: level(Level::Debug),
    }
}

/// `2026-11-29T14:21:39Z` (UTC, seconds).
fn timestamp(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_cumulative_newest_last_and_bounded() {
        let mut ev = Events::default();
        ev.record(0.0, 1, Some(2), Level::Info0, "decided".into());
        ev.observe_worker(1.0, (1, 2, 9), WorkerState::Loading, "");
        ev.observe_worker(2.0, (1, 2, 9), WorkerState::Loading, ""); // no change, no line
        ev.observe_worker(3.0, (1, 2, 9), WorkerState::Error, "boom");
        ev.observe_status(4.0, 1, "ready workers: 0".into());
        let logs = ev.endpoint(1, None);
        assert_eq!(
            logs.info0,
            "1970-01-01T00:00:00Z decided\n1970-01-01T00:00:03Z worker 9 error: boom"
        );
        assert_eq!(logs.info1.lines().count(), 4);
        assert!(logs
            .info1
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("worker 9: new -> loading"));
        assert!(logs.trace.ends_with("ready workers: 0"));
        assert_eq!(logs.debug, logs.trace);
        // The workergroup sees its own entries, not the endpoint's status line.
        assert_eq!(ev.group(2, None).trace.lines().count(), 4);
        assert_eq!(ev.endpoint(1, Some(1)).info1.lines().count(), 1);
        for i in 0..(KEEP + 10) {
            ev.record(5.0, 1, None, Level::Debug, format!("n{i}"));
        }
        let d = ev.endpoint(1, None).debug;
        assert_eq!(d.lines().count(), KEEP);
        assert!(d.ends_with(&format!("n{}", KEEP + 9)));
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(1_795_962_099.0), "2026-11-29T14:21:39Z");
        assert_eq!(timestamp(951_782_400.0), "2000-02-29T00:00:00Z");
    }
}

//! What each kind of hostile client did and how its connections ended, shared by its tasks.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Kind {
    opened: u64,
    /// How connections ended (`close 3008`, `reset`, `open at end`, `refused http 503`, ...).
    outcomes: BTreeMap<String, u64>,
    /// Answers to individual requests (API and OsmAnd kinds), e.g. `http 200 error 107`.
    responses: BTreeMap<String, u64>,
    /// Seconds from opening to the server closing, for connections the server closed during the run.
    closed_after: Vec<f64>,
    counters: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
pub struct Tally {
    kinds: Mutex<BTreeMap<&'static str, Kind>>,
}

impl Tally {
    fn with(&self, kind: &'static str, f: impl FnOnce(&mut Kind)) {
        if let Ok(mut kinds) = self.kinds.lock() {
            f(kinds.entry(kind).or_default());
        }
    }

    /// Registers a kind so it shows in the report even if it never got to open anything.
    pub fn declare(&self, kind: &'static str) {
        self.with(kind, |_| {});
    }

    pub fn opened(&self, kind: &'static str) {
        self.with(kind, |k| k.opened += 1);
    }

    /// A connection ended with `outcome`; `closed_after` is set when the server closed it during the run.
    pub fn ended(&self, kind: &'static str, outcome: &str, closed_after: Option<Duration>) {
        self.with(kind, |k| {
            *k.outcomes.entry(outcome.to_string()).or_default() += 1;
            if let Some(d) = closed_after {
                k.closed_after.push(d.as_secs_f64());
            }
        });
    }

    pub fn response(&self, kind: &'static str, label: &str) {
        self.with(kind, |k| {
            *k.responses.entry(label.to_string()).or_default() += 1
        });
    }

    pub fn count(&self, kind: &'static str, counter: &'static str, n: u64) {
        self.with(kind, |k| *k.counters.entry(counter).or_default() += n);
    }

    pub fn json(&self) -> Value {
        let Ok(kinds) = self.kinds.lock() else {
            return json!({});
        };
        let mut out = serde_json::Map::new();
        for (name, k) in kinds.iter() {
            let mut closed = k.closed_after.clone();
            closed.sort_by(f64::total_cmp);
            let at = |q: f64| closed.get(((closed.len() as f64 - 1.0) * q).round() as usize);
            out.insert(
                name.to_string(),
                json!({
                    "opened": k.opened,
                    "outcomes": k.outcomes,
                    "responses": k.responses,
                    "closed_by_server_during_run": closed.len(),
                    "seconds_to_close_p50": at(0.5),
                    "seconds_to_close_max": closed.last(),
                    "counters": k.counters,
                }),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_outcomes_and_close_times() {
        let tally = Tally::default();
        tally.declare("idle_tcp");
        tally.opened("slowloris");
        tally.opened("slowloris");
        tally.ended("slowloris", "http 408", Some(Duration::from_secs(10)));
        tally.ended("slowloris", "open at end", None);
        let v = tally.json();
        assert_eq!(v["idle_tcp"]["opened"], 0);
        assert_eq!(v["slowloris"]["opened"], 2);
        assert_eq!(v["slowloris"]["outcomes"]["http 408"], 1);
        assert_eq!(v["slowloris"]["seconds_to_close_max"], 10.0);
    }
}

//! The benchmark's report: one entry per scenario with min / median / max of the write gap
//! and the client errors over its trials, the lost acknowledged commits and (for a partition)
//! the commits the isolated side acknowledged after the cut. Printed as a table, or as one
//! JSON object with `swarm-bench --output json`:
//!
//! `{"nodes": N, "scenarios": [{"name": …, "trials": K, "gap_s": {"min": …, "median": …,
//! "max": …}, "errors": {…}, "lost": TOTAL, "acked_after_cut": TOTAL}]}`

use crate::scenarios::DisruptionReport;
use serde::Serialize;
use std::fmt;

/// Minimum, median and maximum of a set of figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    /// The figures' min / median / max; all zero for an empty set.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Stats {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n == 0 {
            return Stats {
                min: 0.0,
                median: 0.0,
                max: 0.0,
            };
        }
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Stats {
            min: values[0],
            median,
            max: values[n - 1],
        }
    }
}

/// What one scenario cost over its trials.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub trials: usize,
    /// Longest time without an acknowledged commit, seconds.
    pub gap_s: Stats,
    /// Failed client attempts.
    pub errors: Stats,
    /// Acknowledged commits missing afterwards, summed over the trials.
    pub lost: usize,
    /// Commits the isolated side acknowledged after the cut, summed (0 unless a partition).
    pub acked_after_cut: usize,
}

impl ScenarioReport {
    /// The summary of a scenario's trials.
    pub fn from_trials(name: &str, trials: &[DisruptionReport], acked_after_cut: usize) -> Self {
        ScenarioReport {
            name: name.to_string(),
            trials: trials.len(),
            gap_s: Stats::of(trials.iter().map(|r| r.write_gap.as_secs_f64())),
            errors: Stats::of(trials.iter().map(|r| r.client_errors as f64)),
            lost: trials.iter().map(|r| r.lost).sum(),
            acked_after_cut,
        }
    }
}

/// The whole benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub nodes: usize,
    pub scenarios: Vec<ScenarioReport>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:>6}  {:>22}  {:>22}  {:>5}  {:>15}",
            "scenario",
            "trials",
            "gap s min/med/max",
            "errors min/med/max",
            "lost",
            "acked after cut"
        )?;
        for s in &self.scenarios {
            writeln!(
                f,
                "{:<22} {:>6}  {:>6.2} {:>6.2} {:>6.2}    {:>6.0} {:>6.1} {:>6.0}   {:>5}  {:>15}",
                s.name,
                s.trials,
                s.gap_s.min,
                s.gap_s.median,
                s.gap_s.max,
                s.errors.min,
                s.errors.median,
                s.errors.max,
                s.lost,
                s.acked_after_cut
            )?;
        }
        write!(f, "nodes: {}", self.nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_sets() {
        assert_eq!(Stats::of([3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Stats::of([4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Stats::of([]).max, 0.0);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let report = BenchReport {
            nodes: 3,
            scenarios: vec![ScenarioReport {
                name: "node-loss".into(),
                trials: 3,
                gap_s: Stats::of([1.0, 2.0, 3.0]),
                errors: Stats::of([0.0, 1.0, 2.0]),
                lost: 0,
                acked_after_cut: 0,
            }],
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["nodes"], 3);
        assert_eq!(v["scenarios"][0]["name"], "node-loss");
        assert_eq!(v["scenarios"][0]["gap_s"]["median"], 2.0);
        assert_eq!(v["scenarios"][0]["errors"]["max"], 2.0);
        assert_eq!(v["scenarios"][0]["lost"], 0);
        assert_eq!(v["scenarios"][0]["acked_after_cut"], 0);
    }
}

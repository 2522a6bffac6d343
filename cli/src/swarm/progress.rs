//! Output for people and for CI logs alike: plain lines on standard error, each prefixed
//! with the seconds elapsed, printed only when what they say changes (no cursor movement, no
//! colours, no spinner), and aligned tables for plans and status.

use std::time::Instant;

/// Progress lines of one long operation.
pub struct Progress {
    started: Instant,
    last: String,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            started: Instant::now(),
            last: String::new(),
        }
    }

    /// Seconds since the start.
    pub fn elapsed_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Prints `line` now.
    pub fn say(&mut self, line: &str) {
        eprintln!("[{:>4}s] {line}", self.elapsed_secs());
        self.last = line.to_string();
    }

    /// Prints `line` unless it repeats the last one.
    pub fn update(&mut self, line: &str) {
        if line != self.last {
            self.say(line);
        }
    }
}

/// Rows as a left-aligned table, columns separated by two spaces; the first row is the
/// header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["long".to_string(), "x".into(), "".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong  x\n");
    }
}

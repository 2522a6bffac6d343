//! Cron-like schedules (`minute hour day-of-month month day-of-week`), for the backup
//! schedule: parsed and checked by the generator, evaluated by the repository's sidecar. The
//! usual syntax of crontab(5): `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and
//! `a-b/n`; day of week 0-7 (0 and 7 are Sunday). As in cron, when both day fields are
//! restricted, a day matching either runs.

use std::fmt;

/// The civil date (year, month 1-12, day 1-31) of `days` since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's algorithm); both the schedule's evaluation and the
/// backup listing's UTC times use it.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_any: bool,
    weekdays_any: bool,
}

/// Why a schedule was refused: says which field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

impl Schedule {
    /// Parses `text` (five fields separated by spaces).
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "`{text}` has {} field(s): write five, `minute hour day-of-month month \
                 day-of-week`, for example `0 3 * * 0` (Sundays at 03:00)",
                fields.len()
            )));
        }
        let mut sets = Vec::new();
        for (field, (name, min, max)) in fields.iter().zip(FIELDS) {
            sets.push(parse_field(field, name, min, max)?);
        }
        let mut weekdays = sets.pop().unwrap_or_default();
        // 7 is Sunday too.
        if weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        let months = sets.pop().unwrap_or_default();
        let days = sets.pop().unwrap_or_default();
        let hours = sets.pop().unwrap_or_default();
        let minutes = sets.pop().unwrap_or_default();
        Ok(Schedule {
            text: fields.join(" "),
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_any: fields[2] == "*",
            weekdays_any: fields[4] == "*",
        })
    }

    /// Whether the schedule runs at this minute (`weekday` 0 = Sunday, `day` and `month`
    /// from 1).
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let at = |set: &Vec<bool>, i: u32| set.get(i as usize).copied().unwrap_or(false);
        let day_ok = match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => at(&self.days, day),
            (true, false) => at(&self.weekdays, weekday),
            (false, false) => at(&self.days, day) || at(&self.weekdays, weekday),
        };
        at(&self.minutes, minute) && at(&self.hours, hour) && at(&self.months, month) && day_ok
    }

    /// The schedule as written (fields separated by one space).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_field(field: &str, name: &str, min: u32, max: u32) -> Result<Vec<bool>, CronError> {
    let bad = |why: String| {
        CronError(format!(
            "the {name} field `{field}` {why}: use `*`, a number from {min} to {max}, a range \
             `a-b`, a list `a,b` or a step `*/n`"
        ))
    };
    let number = |s: &str| -> Result<u32, CronError> {
        let n: u32 = s
            .parse()
            .map_err(|_| bad(format!("has `{s}`, which is not a number")))?;
        if n < min || n > max {
            return Err(bad(format!("has {n}, outside {min}-{max}")));
        }
        Ok(n)
    };
    let mut set = vec![false; max as usize + 1];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad(format!("has the step `{s}`, not a positive number")))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad(format!("has the range {a}-{b}, which runs backwards")));
            }
            (a, b)
        } else {
            let n = number(range)?;
            // `5/10` means from 5 to the end in steps of 10, as in common crons.
            (n, if step > 1 { max } else { n })
        };
        let mut i = from;
        while i <= to {
            set[i as usize] = true;
            i += step;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_schedules() {
        let weekly = Schedule::parse("0 3 * * 0").unwrap();
        assert!(weekly.matches(0, 3, 10, 5, 0));
        assert!(!weekly.matches(0, 3, 10, 5, 1));
        assert!(!weekly.matches(1, 3, 10, 5, 0));
        let sunday7 = Schedule::parse("0 3 * * 7").unwrap();
        assert!(sunday7.matches(0, 3, 10, 5, 0));
        let weekdays = Schedule::parse("30  2 * * 1-6").unwrap();
        assert_eq!(weekdays.as_str(), "30 2 * * 1-6");
        assert!(weekdays.matches(30, 2, 1, 1, 6));
        assert!(!weekdays.matches(30, 2, 1, 1, 0));
        let every15 = Schedule::parse("*/15 * * * *").unwrap();
        for m in 0..60 {
            assert_eq!(every15.matches(m, 7, 3, 3, 3), m % 15 == 0, "{m}");
        }
        let list = Schedule::parse("0 0,12 1 */3 *").unwrap();
        assert!(list.matches(0, 12, 1, 4, 2));
        assert!(!list.matches(0, 12, 1, 2, 2));
        // Both day fields restricted: either one runs (cron's rule).
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(either.matches(0, 0, 1, 5, 4));
        assert!(either.matches(0, 0, 9, 5, 1));
        assert!(!either.matches(0, 0, 9, 5, 2));
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        for (text, part) in [
            ("0 3 * *", "has 4 field(s)"),
            ("60 3 * * *", "minute field `60` has 60, outside 0-59"),
            ("0 24 * * *", "hour field `24`"),
            ("0 3 0 * *", "day of month field `0`"),
            ("0 3 * 13 *", "month field `13`"),
            ("0 3 * * 8", "day of week field `8`"),
            ("0 3 * * mon", "`mon`, which is not a number"),
            ("*/0 3 * * *", "the step `0`"),
            ("0 5-2 * * *", "runs backwards"),
        ] {
            let err = Schedule::parse(text).unwrap_err().to_string();
            assert!(err.contains(part), "{text}: {err}");
        }
    }
}

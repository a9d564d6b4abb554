//! Plain-text output: aligned tables, human ages, and the `--since` grammar.

use chrono::{DateTime, Utc};

/// Columns padded to their widest cell; the last column is not padded so
/// that long errors do not drag trailing spaces.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// `none` when there are no `items`, else the table of `header` with
    /// the row `row` makes of each item: what every `ls` prints.
    pub fn listing<T>(
        header: Vec<&'static str>,
        items: &[T],
        none: &str,
        row: impl Fn(&T) -> Vec<String>,
    ) -> String {
        if items.is_empty() {
            return none.into();
        }
        let mut t = Table::new(header);
        for item in items {
            t.row(row(item));
        }
        t.render()
    }

    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == n {
                    s += c;
                } else {
                    s += &format!("{c:<w$}  ", w = widths[i]);
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(self.header.clone());
        for r in &self.rows {
            out += &line(r.iter().map(String::as_str).collect());
        }
        out
    }
}

/// A row's cells, each shown by its `Display` (text, numbers, states):
/// `cells![r.id, r.instance, age_at(now, r.created_at)]`.
macro_rules! cells {
    ($($cell:expr),* $(,)?) => {
        vec![$($cell.to_string()),*]
    };
}
pub(crate) use cells;

/// `items` as pretty JSON on its own line: what `--json` prints.
pub fn json_lines<T: serde::Serialize + ?Sized>(items: &T) -> anyhow::Result<String> {
    use anyhow::Context;
    Ok(serde_json::to_string_pretty(items).context("encoding JSON")? + "\n")
}

/// `95` → `1m35s`, `7300` → `2h01m`, `200000` → `2d07h`.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Age of `t` at `now`.
pub fn age_at(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    age((now - t).num_milliseconds() as f64 / 1000.0)
}

/// `t` relative to `now`: `5m03s ago` or `in 5m03s`.
pub fn relative(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    if t <= now {
        format!("{} ago", age_at(now, t))
    } else {
        format!("in {}", age_at(t, now))
    }
}

/// At most `max` characters, on one line, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        one_line
            .chars()
            .take(max.saturating_sub(1))
            .collect::<String>()
            + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(5.0), "5s");
        assert_eq!(age(95.0), "1m35s");
        assert_eq!(age(7300.0), "2h01m");
        assert_eq!(age(200_000.0), "2d07h");
    }

    #[test]
    fn truncation_keeps_one_line() {
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}

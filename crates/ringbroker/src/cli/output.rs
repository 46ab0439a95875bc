//! What the CLI prints: aligned tables with upper-case headers (as `rpk` prints them) for
//! people, JSON with stable snake_case field names for scripts (`--format json`).

use clap::ValueEnum;
use std::io::Write as _;

/// Writes to stdout and flushes. A reader that went away (`ringbroker consume t | head -1`)
/// ends the process quietly with status 0, like the tools it is piped into expect; any other
/// write error ends it with status 1.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        stdout_failed(e);
    }
}

/// Ends the process after a failed write to stdout (see [`emit`]).
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("ringbroker: writing stdout: {e}");
    std::process::exit(1);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned tables.
    #[default]
    Text,
    /// One JSON document (produce and consume: one JSON object per line).
    Json,
}

/// Columns padded to their widest cell, separated by two spaces.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
            let mut text = String::new();
            for (i, (cell, w)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut self.header.iter().copied(), &mut out);
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str), &mut out);
        }
        out
    }

    pub fn print(&self) {
        emit(&self.render());
    }
}

/// `KEY  value` lines, keys padded (the summary block above a table).
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (k, v) in fields {
        text.push_str(format!("{k:width$}  {v}").trim_end());
        text.push('\n');
    }
    emit(&text);
}

/// A section title, `rpk`-style.
pub fn print_section(title: &str) {
    emit(&format!("{title}\n{}\n", "=".repeat(title.len())));
}

/// A JSON document on stdout (pretty, ends with a newline).
pub fn print_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_string());
    emit(&format!("{text}\n"));
}

/// A list of node ids as `1,2,3`.
pub fn ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "PARTITIONS"]);
        t.row(vec!["a-long-name".into(), "3".into()]);
        t.row(vec!["b".into(), "12".into()]);
        assert_eq!(
            t.render(),
            "NAME         PARTITIONS\na-long-name  3\nb            12\n"
        );
    }
}

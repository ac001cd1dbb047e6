//! Benchmark output: an aligned table for people, or one JSON object per line for scripts.

use std::io::Write;

/// How a benchmark prints its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    JsonLines,
}

/// A column of the human table.
#[derive(Clone, Debug)]
pub struct Column {
    pub header: &'static str,
    pub width: usize,
    /// Numbers are right-aligned, labels left-aligned.
    pub right: bool,
}

impl Column {
    pub fn label(header: &'static str, widest: usize) -> Column {
        Column {
            header,
            width: widest.max(header.len()),
            right: false,
        }
    }

    pub fn number(header: &'static str, width: usize) -> Column {
        Column {
            header,
            width: width.max(header.len()),
            right: true,
        }
    }
}

/// A table printed row by row as results arrive (a long benchmark shows progress).
pub struct Table {
    columns: Vec<Column>,
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Table {
        Table { columns }
    }

    pub fn header(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| c.header.to_string()).collect();
        let line = self.line(&names);
        let rule = "-".repeat(line.len());
        format!("{line}\n{rule}")
    }

    pub fn line(&self, cells: &[String]) -> String {
        let parts: Vec<String> = self
            .columns
            .iter()
            .zip(cells)
            .map(|(c, s)| {
                if c.right {
                    format!("{s:>w$}", w = c.width)
                } else {
                    format!("{s:<w$}", w = c.width)
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    }
}

/// Prints a line and flushes, so rows appear while the next case runs.
pub fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = Table::new(vec![Column::label("shape", 9), Column::number("gflops", 8)]);
        assert_eq!(t.header(), "shape        gflops\n-------------------");
        assert_eq!(
            t.line(&["256x256".into(), "12.5".into()]),
            "256x256        12.5"
        );
    }
}

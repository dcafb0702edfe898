//! Printing query results: an aligned table for people, CSV and JSON for
//! programs. Numbers are right-aligned, text left-aligned, long cells cut
//! with an ellipsis so a row stays on one line.

use crate::readonly::QueryResult;

/// Longest cell shown in the table view.
const MAX_CELL: usize = 60;

fn cell_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        // Cells may come from traced processes or from a remote agent:
        // no escape sequence or control character reaches the terminal.
        serde_json::Value::String(s) => crate::text::sanitize(s, usize::MAX),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                let s = format!("{f:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn cut(s: String) -> String {
    if s.chars().count() <= MAX_CELL {
        s
    } else {
        let mut t: String = s.chars().take(MAX_CELL - 1).collect();
        t.push('…');
        t
    }
}

/// The rows as an aligned text table with a header and a footer line.
#[must_use]
pub fn render_table(r: &QueryResult) -> String {
    let columns: Vec<String> = r
        .columns
        .iter()
        .map(|c| crate::text::sanitize(c, MAX_CELL))
        .collect();
    let cells: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| row.iter().map(|v| cut(cell_text(v))).collect())
        .collect();
    let numeric: Vec<bool> = (0..r.columns.len())
        .map(|i| r.rows.iter().all(|row| row[i].is_number() || row[i].is_null()))
        .collect();
    let widths: Vec<usize> = (0..r.columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain(std::iter::once(columns[i].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[String]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if numeric[i] {
                    format!("{v:>w$}", w = widths[i])
                } else {
                    format!("{v:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = String::new();
    out.push_str(&line(&columns));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// The footer: row count, and a note when the row cap cut the result.
#[must_use]
pub fn footer(r: &QueryResult, limit: usize) -> String {
    let n = r.rows.len();
    let mut s = format!("{n} row{}", if n == 1 { "" } else { "s" });
    if r.truncated {
        s.push_str(&format!(" (cut at {limit}; raise --limit to see more)"));
    }
    s
}

fn csv_field(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// RFC 4180 CSV with a header row.
#[must_use]
pub fn render_csv(r: &QueryResult) -> String {
    let header: Vec<serde_json::Value> = r.columns.iter().map(|c| c.clone().into()).collect();
    let mut out = csv_line(&header);
    for row in &r.rows {
        out.push_str(&csv_line(row));
    }
    out
}

/// One RFC 4180 CSV line (with its CRLF), for printing rows as they come.
#[must_use]
pub fn csv_line(row: &[serde_json::Value]) -> String {
    let mut line = row.iter().map(csv_field).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result() -> QueryResult {
        QueryResult {
            columns: vec!["node".into(), "cnt".into(), "avg_us".into()],
            rows: vec![
                vec![json!("gpu-node-01"), json!(12345), json!(13.25)],
                vec![json!("n2"), json!(7), serde_json::Value::Null],
            ],
            truncated: true,
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn table_aligns_numbers_right_and_text_left() {
        let t = render_table(&result());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "node           cnt  avg_us");
        assert_eq!(lines[2], "gpu-node-01  12345   13.25");
        assert_eq!(lines[3], "n2               7    NULL");
        assert_eq!(
            footer(&result(), 2),
            "2 rows (cut at 2; raise --limit to see more)"
        );
    }

    #[test]
    fn escape_sequences_never_reach_the_terminal() {
        let r = QueryResult {
            columns: vec!["name\u{1b}[2J".into()],
            rows: vec![vec![json!("evil\u{1b}]0;pwned\u{7}\u{1b}[31mred\nline")]],
            truncated: false,
            elapsed_ms: 0.0,
        };
        let t = render_table(&r);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert_eq!(t.lines().count(), 3, "no forged line: {t:?}");
        assert!(t.contains("evil]0;pwned[31mred line"), "{t:?}");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = QueryResult {
            columns: vec!["a".into()],
            rows: vec![vec![json!("x,\"y\"")]],
            truncated: false,
            elapsed_ms: 0.0,
        };
        assert_eq!(render_csv(&r), "a\r\n\"x,\"\"y\"\"\"\r\n");
    }
}

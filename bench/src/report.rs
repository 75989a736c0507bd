//! The report: tables for people, JSON for machines, failures counted.

use crate::*;

/// The figures of a run, as they are printed and written.
pub(crate) struct Report {
    pub(crate) json: serde_json::Map<String, Value>,
    pub(crate) errors: u64,
    pub(crate) lost: u64,
    pub(crate) failures: Vec<String>,
}

impl Report {
    pub(crate) fn error(&mut self, what: &str, load: &Load) {
        if load.errors > 0 {
            self.errors += load.errors;
            self.failures.push(format!(
                "{what}: {} calls failed (first: {})",
                load.errors,
                load.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
}

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) if v < 100.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

pub(crate) fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        fmt_count(v.round() as u64)
    } else {
        format!("{v:.1}")
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.2}"))
}

/// Whole seconds when they are whole, else to the tenth.
pub(crate) fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

pub(crate) fn table(title: &str, note: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = format!("\n== {title}\n");
    if !note.is_empty() {
        out.push_str(note);
        out.push('\n');
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(headers.iter().map(|h| h.to_string()).collect()));
    out.push_str(&line(w.iter().map(|n| "-".repeat(*n)).collect()));
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// The order of the scenarios' sections in the printed report.
pub(crate) const SECTION_ORDER: [&str; 9] = [
    "send",
    "lifecycle",
    "fanout",
    "catchup",
    "scale",
    "sustained",
    "audit",
    "stats",
    "abuse",
];

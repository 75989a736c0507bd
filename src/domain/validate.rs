//! Field rules and limits. Each parser returns the cleaned value or a
//! description of what is wrong, for a `BadRequest` field violation.

use std::collections::BTreeMap;

use super::Time;

/// Size limits of requests; every one is configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most characters in a subject.
    pub subject_chars: usize,
    /// Most bytes in a body.
    pub body_bytes: usize,
    /// Most bytes in a note.
    pub note_bytes: usize,
    /// Most labels on a message.
    pub labels: usize,
    /// Most characters in a label key.
    pub label_key_chars: usize,
    /// Most characters in a label value.
    pub label_value_chars: usize,
    /// Most characters in a display name.
    pub display_name_chars: usize,
    /// Page size when the request says 0.
    pub default_page_size: usize,
    /// Largest page size; larger requests are clamped.
    pub max_page_size: usize,
    /// Largest decoded request, in bytes.
    pub request_bytes: usize,
}

/// Default most characters in a subject.
pub const DEFAULT_SUBJECT_CHARS: usize = 256;
/// Default most bytes in a body (64 KiB).
pub const DEFAULT_BODY_BYTES: usize = 64 * 1024;
/// Default most bytes in a note (2 KiB).
pub const DEFAULT_NOTE_BYTES: usize = 2 * 1024;
/// Default most labels.
pub const DEFAULT_LABELS: usize = 32;
/// Default most bytes in a decoded request (1 MiB).
pub const DEFAULT_REQUEST_BYTES: usize = 1024 * 1024;
/// Default page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Default largest page size.
pub const DEFAULT_MAX_PAGE_SIZE: usize = 1000;
/// How far ahead of the server's clock an `occur_time` may lie.
pub const CLOCK_SKEW_SECS: i64 = 60;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            subject_chars: DEFAULT_SUBJECT_CHARS,
            body_bytes: DEFAULT_BODY_BYTES,
            note_bytes: DEFAULT_NOTE_BYTES,
            labels: DEFAULT_LABELS,
            label_key_chars: 64,
            label_value_chars: 256,
            display_name_chars: 128,
            default_page_size: DEFAULT_PAGE_SIZE,
            max_page_size: DEFAULT_MAX_PAGE_SIZE,
            request_bytes: DEFAULT_REQUEST_BYTES,
        }
    }
}

impl Limits {
    /// A display name: 1 to `display_name_chars` characters, not blank.
    pub fn display_name(&self, s: &str) -> Result<String, String> {
        required_chars(s, self.display_name_chars)
    }

    /// A subject: 1 to `subject_chars` characters, not blank.
    pub fn subject(&self, s: &str) -> Result<String, String> {
        required_chars(s, self.subject_chars)
    }

    /// A body: at most `body_bytes` bytes.
    pub fn body(&self, s: &str) -> Result<String, String> {
        if s.len() > self.body_bytes {
            return Err(format!("must be at most {} bytes", self.body_bytes));
        }
        Ok(s.to_owned())
    }

    /// A note; `required` for decline, reject and withdraw.
    pub fn note(&self, s: &str, required: bool) -> Result<String, String> {
        if required && s.trim().is_empty() {
            return Err("is required: give the reason".into());
        }
        if s.len() > self.note_bytes {
            return Err(format!("must be at most {} bytes", self.note_bytes));
        }
        Ok(s.to_owned())
    }

    /// Labels: at most `labels`, keys 1–64 of `a-z 0-9 _ - . /`, values at
    /// most `label_value_chars` characters.
    pub fn labels(&self, labels: &BTreeMap<String, String>) -> Result<(), String> {
        if labels.len() > self.labels {
            return Err(format!("at most {} labels are allowed", self.labels));
        }
        for (k, v) in labels {
            let n = k.chars().count();
            if n == 0 || n > self.label_key_chars {
                return Err(format!(
                    "key '{k}' must be 1 to {} characters",
                    self.label_key_chars
                ));
            }
            if !k.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | '/')
            }) {
                return Err(format!("key '{k}' may hold only a-z 0-9 _ - . /"));
            }
            if v.chars().count() > self.label_value_chars {
                return Err(format!(
                    "value of '{k}' must be at most {} characters",
                    self.label_value_chars
                ));
            }
        }
        Ok(())
    }

    /// A page size: 0 means the default, above the maximum is clamped,
    /// negative is an error.
    pub fn page_size(&self, n: i32) -> Result<usize, String> {
        match usize::try_from(n) {
            Err(_) => Err("must not be negative".into()),
            Ok(0) => Ok(self.default_page_size),
            Ok(n) => Ok(n.min(self.max_page_size)),
        }
    }
}

/// A reported `occur_time`: at most `CLOCK_SKEW_SECS` ahead of `now`.
pub fn occur_time(t: Option<Time>, now: Time) -> Result<Option<Time>, String> {
    match t {
        Some(t) if t > now.plus_secs(CLOCK_SKEW_SECS) => {
            Err("must not lie in the future (60 s of clock skew is tolerated)".into())
        }
        t => Ok(t),
    }
}

/// A `respond_by` deadline: must lie in the future.
pub fn respond_by(t: Option<Time>, now: Time) -> Result<Option<Time>, String> {
    match t {
        Some(t) if t <= now => Err("must lie in the future".into()),
        t => Ok(t),
    }
}

fn required_chars(s: &str, max: usize) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("is required".into());
    }
    let n = s.chars().count();
    if n > max {
        return Err(format!("must be at most {max} characters (got {n})"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_characters_not_bytes() {
        let l = Limits::default();
        assert!(l.subject(&"é".repeat(256)).is_ok());
        assert!(l.subject(&"é".repeat(257)).is_err());
        assert!(l.display_name("").is_err());
        assert!(l.display_name("   ").is_err());
    }

    #[test]
    fn page_size_defaults_clamps_and_refuses_negative() {
        let l = Limits::default();
        assert_eq!(l.page_size(0), Ok(50));
        assert_eq!(l.page_size(5000), Ok(1000));
        assert!(l.page_size(-1).is_err());
    }

    #[test]
    fn label_keys_are_checked() {
        let l = Limits::default();
        let mut m = BTreeMap::new();
        m.insert("topic".to_string(), "sanctions".to_string());
        assert!(l.labels(&m).is_ok());
        m.insert("Topic".to_string(), "x".to_string());
        assert!(l.labels(&m).is_err());
    }
}

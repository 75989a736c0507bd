//! Times and durations as people read and type them: shown in the local
//! zone, durations as `2h13m`; given as RFC 3339 or relative to now.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local, Utc};
use prost_types::Timestamp;

use super::CliError;

/// A timestamp as a `DateTime`, if it is one.
pub fn of(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// A timestamp in the local zone, to the second (`2019-08-25 14:02:11`).
pub fn local(t: Option<&Timestamp>) -> String {
    match t.and_then(of) {
        Some(t) => t
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => "-".to_owned(),
    }
}

/// A timestamp in the local zone, to the minute (`2019-08-25 14:02`).
pub fn local_minute(t: Option<&Timestamp>) -> String {
    match t.and_then(of) {
        Some(t) => t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string(),
        None => "-".to_owned(),
    }
}

/// A duration as `3d4h`, `2h13m`, `5m30s` or `45s`: its two largest units.
pub fn human(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds();
    if secs < 0 {
        return format!("-{}", human(-d));
    }
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The time between two timestamps, when both are set.
pub fn between(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<chrono::TimeDelta> {
    Some(of(to?)? - of(from?)?)
}

/// Now, as a timestamp.
pub fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

fn duration(flag: &str, s: &str) -> Result<Duration, CliError> {
    humantime::parse_duration(s).map_err(|e| {
        CliError::usage(format!(
            "{flag}: '{s}' is not a duration like 30d, 2h30m or 90s ({e})"
        ))
    })
}

fn rfc3339(flag: &str, s: &str) -> Result<Timestamp, CliError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| Timestamp::from(SystemTime::from(t)))
        .map_err(|_| {
            CliError::usage(format!(
                "{flag}: '{s}' is neither an RFC 3339 time (2019-08-25T14:00:00+02:00) \
                 nor +DURATION (from now) or -DURATION (ago), like +2h or -30m"
            ))
        })
}

/// A time given as RFC 3339, `+DURATION` (from now) or `-DURATION` (ago).
pub fn parse(flag: &str, s: &str) -> Result<Timestamp, CliError> {
    let now = SystemTime::now();
    if let Some(d) = s.strip_prefix('+') {
        let at = now
            .checked_add(duration(flag, d)?)
            .ok_or_else(|| CliError::usage(format!("{flag}: '{s}' is too far ahead")))?;
        return Ok(Timestamp::from(at));
    }
    if let Some(d) = s.strip_prefix('-') {
        let back = duration(flag, d)?;
        let at = now
            .checked_sub(back)
            .ok_or_else(|| CliError::usage(format!("{flag}: '{s}' is too far back")))?;
        return Ok(Timestamp::from(at));
    }
    rfc3339(flag, s)
}

/// A time in the future: a duration from now (`30d`, `+30d`) or RFC 3339.
pub fn parse_expiry(flag: &str, s: &str) -> Result<Timestamp, CliError> {
    if s.starts_with(|c: char| c.is_ascii_digit()) && humantime::parse_duration(s).is_ok() {
        return parse(flag, &format!("+{s}"));
    }
    parse(flag, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_their_two_largest_units() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(human(d(45)), "45s");
        assert_eq!(human(d(330)), "5m30s");
        assert_eq!(human(d(2 * 3600 + 13 * 60 + 5)), "2h13m");
        assert_eq!(human(d(3 * 86_400 + 4 * 3600 + 7)), "3d4h");
        assert_eq!(human(d(-90)), "-1m30s");
    }

    #[test]
    fn times_are_rfc3339_or_relative() {
        let t = parse("--at", "2019-08-25T14:00:00Z").unwrap();
        assert_eq!(t.seconds, 1_566_741_600);
        let ago = parse("--at", "-2h").unwrap();
        assert!(ago.seconds < now().seconds - 7_000);
        let ahead = parse("--respond-by", "+1d").unwrap();
        assert!(ahead.seconds > now().seconds + 86_000);
        assert!(parse("--at", "yesterday").is_err());
        assert!(parse_expiry("--expires", "30d").unwrap().seconds > now().seconds);
    }
}

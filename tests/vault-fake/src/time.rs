//! Time as OpenBao writes it: RFC 3339 with Go's trimmed nanoseconds (`time.RFC3339Nano`), and
//! `delete_version_after` durations (whole seconds, Go's `Duration.String()` form).

use std::time::{Duration, SystemTime};

use crate::error::ApiError;

/// `2026-11-22T10:09:20.63904796Z`: nanoseconds with trailing zeros trimmed, no fraction at all
/// for a whole second (Go's `time.RFC3339Nano`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let full = humantime::format_rfc3339_nanos(t).to_string();
    let Some((head, frac)) = full.trim_end_matches('Z').split_once('.') else {
        return full;
    };
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { format!("{head}Z") } else { format!("{head}.{frac}Z") }
}

/// Go's `Duration.String()` for whole seconds: `0s`, `45s`, `1m30s`, `1h0m0s`, `-1s`.
pub(crate) fn go_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let sign = if secs < 0 { "-" } else { "" };
    let abs = secs.unsigned_abs();
    let (h, m, s) = (abs / 3600, (abs / 60) % 60, abs % 60);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, _) => format!("{sign}{m}m{s}s"),
        _ => format!("{sign}{h}h{m}m{s}s"),
    }
}

/// A `TypeDurationSecond` field: a number of seconds, or a Go duration string (`90s`, `1h30m`,
/// `1.5s`), truncated to whole seconds as OpenBao stores it.
pub(crate) fn parse_duration_secs(field: &str, value: &serde_json::Value) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request(format!("error converting input for field \"{field}\": invalid duration"));
    match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or_else(bad),
        serde_json::Value::String(s) => parse_go_duration(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Parses `[-]N` (seconds) or a Go duration (`1h2m3.5s`, `500ms`) into whole seconds.
fn parse_go_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += number * scale;
        rest = &rest[unit_end..];
    }
    let secs = (nanos / 1e9).trunc() as i64;
    Some(if negative { -secs } else { secs })
}

/// `now + secs` (secs > 0).
pub(crate) fn after(now: SystemTime, secs: i64) -> SystemTime {
    now + Duration::from_secs(secs.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_trims_like_go() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 639_047_960);
        assert!(rfc3339(t).ends_with(".63904796Z"), "{}", rfc3339(t));
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert!(rfc3339(whole).ends_with(":40Z"), "{}", rfc3339(whole));
    }

    #[test]
    fn durations_round_trip_like_openbao() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(90), "1m30s");
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(-1), "-1s");
        assert_eq!(parse_go_duration("1.5s"), Some(1));
        assert_eq!(parse_go_duration("1h30m"), Some(5400));
        assert_eq!(parse_go_duration("90"), Some(90));
        assert_eq!(parse_go_duration("-5s"), Some(-5));
        assert_eq!(parse_go_duration("x"), None);
    }
}

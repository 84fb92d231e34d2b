//! Time bounds as people type them: RFC 3339 (`2026-11-28T01:00:00Z`), a date (`2026-11-28`,
//! midnight UTC), `now`, and relative forms meaning "that long ago" (`1h`, `7d`, `now-15m`). Used
//! by `--from/--to`, `GET /v1/events?from=&to=` and `time:` clauses in queries, so all three read
//! times the same way.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

/// Parses a time bound relative to `now`.
pub fn parse_time_at(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        // Checked: the far ends of the calendar with an offset fall outside it in UTC.
        return t
            .checked_to_offset(UtcOffset::UTC)
            .ok_or_else(|| out_of_range(s));
    }
    if let Ok(d) = Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")) {
        return Ok(d.midnight().assume_utc());
    }
    let rel = s.strip_prefix("now-").unwrap_or(s);
    match humantime::parse_duration(rel) {
        // Checked: `100000000y` ago is before the calendar starts.
        Ok(d) => time::Duration::try_from(d)
            .ok()
            .and_then(|d| now.checked_sub(d))
            .ok_or_else(|| out_of_range(s)),
        Err(_) => Err(format!(
            "{s:?} is not a time: use RFC 3339 (2026-11-28T01:00:00Z), a date (2026-11-28), now, \
             or how long ago (15m, 1h, 7d, now-1h)"
        )),
    }
}

fn out_of_range(s: &str) -> String {
    format!("{s:?} is out of range: use a time between the years 1 and 9999")
}

/// Parses a time bound relative to the current time.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    parse_time_at(s, OffsetDateTime::now_utc())
}

/// RFC 3339 with milliseconds, UTC: the precision both backends store.
pub fn format_ms(t: OffsetDateTime) -> String {
    let t = truncate_ms(t.to_offset(UtcOffset::UTC));
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Drops sub-millisecond precision (both backends store milliseconds).
pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t - Duration::from_nanos(u64::from(nanos % 1_000_000))
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn absolute_relative_and_dates() {
        let now = datetime!(2026-11-28 12:00:00 UTC);
        assert_eq!(parse_time_at("now", now).unwrap(), now);
        assert_eq!(
            parse_time_at("1h", now).unwrap(),
            datetime!(2026-11-28 11:00:00 UTC)
        );
        assert_eq!(
            parse_time_at("now-7d", now).unwrap(),
            datetime!(2026-11-21 12:00:00 UTC)
        );
        assert_eq!(
            parse_time_at("2026-11-28T01:00:00+01:00", now).unwrap(),
            datetime!(2026-11-28 00:00:00 UTC)
        );
        assert_eq!(
            parse_time_at("2026-11-27", now).unwrap(),
            datetime!(2026-11-27 00:00:00 UTC)
        );
        let err = parse_time_at("yesterday-ish", now).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
        // The ends of the calendar are errors, not panics (issue 12).
        for s in [
            "100000000y",
            "now-9999999999999d",
            "9999-12-31T23:59:59-23:59",
        ] {
            assert!(parse_time_at(s, now).is_err(), "{s}");
        }
    }

    #[test]
    fn milliseconds() {
        let t = datetime!(2026-11-28 12:00:00.123456789 UTC);
        assert_eq!(format_ms(t), "2026-11-28T12:00:00.123Z");
        assert_eq!(epoch_ms(t) % 1000, 123);
    }
}

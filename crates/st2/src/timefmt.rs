//! StackStorm's timestamp spelling (`2026-01-02T03:04:05.123456Z`, microseconds, UTC), read
//! leniently (space separator, `+00`, `+0000`, `+00:00`) and written exactly.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// Parses a StackStorm timestamp; `None` when it is not one.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    let mut t = s.trim().replacen(' ', "T", 1);
    for suffix in ["+00", "+0000"] {
        if t.ends_with(suffix) && !t.ends_with("+00:00") {
            t.truncate(t.len() - suffix.len());
            t.push('Z');
        }
    }
    OffsetDateTime::parse(&t, &Rfc3339).ok()
}

/// Formats like StackStorm: UTC, six fractional digits, `Z`.
pub fn format(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stackstorm_timestamps() {
        for s in [
            "2026-01-02T03:04:05.123456Z",
            "2026-01-02 03:04:05.123456+00",
            "2026-01-02T03:04:05.123456+0000",
            "2026-01-02T03:04:05.123456+00:00",
        ] {
            let t = parse(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(format(t), "2026-01-02T03:04:05.123456Z");
        }
        assert!(parse("yesterday").is_none());
    }
}

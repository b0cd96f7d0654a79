//! The time window of `baton logs --since/--since-time`, parsed the same way by the CLI
//! (to fail before calling) and by the server (which decides).

use baton_proto::LogSince;

/// Go's duration syntax, as kubectl's `--since` takes it: one or more `<number><unit>`
/// (`10m`, `1h30m`, `1.5h`, `500ms`), units `ns us µs ms s m h`. Answers milliseconds,
/// rounded up so that `--since` never selects less than was asked; must be more than 0.
pub fn parse_duration_millis(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 10s, 5m, 1h30m");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += num * scale;
    }
    let millis = (nanos / 1e6).ceil();
    // NaN cannot come from digits and dots, but a huge number can be infinite.
    if millis < 1.0 || !millis.is_finite() || millis > u64::MAX as f64 {
        return Err(format!("--since must be greater than 0, not {s:?}"));
    }
    Ok(millis as u64)
}

/// An RFC 3339 time (`2026-12-07T01:02:03Z`, `...03.5+01:00`) as nanoseconds since the epoch.
pub fn parse_time_nanos(s: &str) -> Result<i64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("invalid --since-time {s:?} (want RFC 3339): {e}"))?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| format!("--since-time {s:?} is out of range"))
}

/// The window of a request's `since` and `since_time`, at most one of them.
pub fn window(since: Option<&str>, since_time: Option<&str>) -> Result<Option<LogSince>, String> {
    match (since, since_time) {
        (Some(_), Some(_)) => Err("at most one of since and since-time may be given".into()),
        (Some(d), None) => Ok(Some(LogSince::Ago {
            millis: parse_duration_millis(d)?,
        })),
        (None, Some(t)) => Ok(Some(LogSince::At {
            unix_nanos: parse_time_nanos(t)?,
        })),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_and_kubectl_write_them() {
        let ms = |s| parse_duration_millis(s);
        assert_eq!(ms("3s"), Ok(3_000));
        assert_eq!(ms("10m"), Ok(600_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1.5h"), Ok(5_400_000));
        assert_eq!(ms("250ms"), Ok(250));
        // Rounded up, never to nothing.
        assert_eq!(ms("1ns"), Ok(1));
        assert_eq!(ms("1500us"), Ok(2));
        for bad in ["", "10", "m", "5x", "-5s", "1..5s", "0s", "s5"] {
            assert!(ms(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn times_and_the_window() {
        assert_eq!(
            parse_time_nanos("1970-01-01T00:00:01.5Z"),
            Ok(1_500_000_000)
        );
        assert_eq!(
            parse_time_nanos("1970-01-01T01:00:02+01:00"),
            Ok(2_000_000_000)
        );
        assert!(parse_time_nanos("yesterday").is_err());
        assert_eq!(
            window(Some("2s"), None),
            Ok(Some(LogSince::Ago { millis: 2000 }))
        );
        assert_eq!(
            window(None, Some("1970-01-01T00:00:00Z")),
            Ok(Some(LogSince::At { unix_nanos: 0 }))
        );
        assert_eq!(window(None, None), Ok(None));
        assert!(window(Some("2s"), Some("1970-01-01T00:00:00Z")).is_err());
    }
}

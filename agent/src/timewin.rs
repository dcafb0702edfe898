//! Time windows for analysis commands: `--since 5m`, `--from`, `--to`.
//!
//! `--since` counts back from the newest recorded event (so it works the
//! same on a live agent and on a database copied off a cluster days later).
//! `--from`/`--to` take RFC 3339 times (`2026-11-21T12:00:00Z`, with
//! optional fraction and offset) or Unix timestamps in s, ms, us or ns
//! (told apart by magnitude).

use std::time::Duration;

use rusqlite::Connection;

pub use ingero_api::Window;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix ns of an RFC 3339 time or a Unix timestamp.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("'{text}' is not a time: use RFC 3339 (2026-11-21T12:00:00Z) or a Unix timestamp");
    if let Ok(n) = t.parse::<i64>() {
        let abs = n.unsigned_abs();
        return Ok(if abs >= 100_000_000_000_000_000 {
            n
        } else if abs >= 100_000_000_000_000 {
            n * 1_000
        } else if abs >= 100_000_000_000 {
            n * 1_000_000
        } else {
            n * 1_000_000_000
        });
    }
    let (date, time) = t.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']).filter(|i| *i >= 8) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').ok_or_else(bad)?;
        let (h, m) = (
            h.parse::<i64>().map_err(|_| bad())?,
            m.parse::<i64>().map_err(|_| bad())?,
        );
        (c, sign * (h * 3600 + m * 60))
    } else {
        (time, 0)
    };
    let mut c = clock.split(':');
    let (Some(h), Some(mi), Some(s), None) = (c.next(), c.next(), c.next(), c.next()) else {
        return Err(bad());
    };
    let (h, mi) = (
        h.parse::<i64>().map_err(|_| bad())?,
        mi.parse::<i64>().map_err(|_| bad())?,
    );
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs = whole.parse::<i64>().map_err(|_| bad())?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || secs > 60 {
        return Err(bad());
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        digits.parse::<i64>().map_err(|_| bad())?
    };
    let unix = days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + secs - offset_secs;
    Ok(unix * 1_000_000_000 + nanos)
}

/// Unix ns as RFC 3339 UTC with milliseconds.
#[must_use]
pub fn format_instant(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let ms = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The (oldest, newest) integer event timestamps of a database, if it has
/// any. Rows whose `timestamp` is not an integer (text, a real or a blob
/// written by another tool) are passed over instead of failing the probe;
/// each bound walks the timestamp index from its end past such rows.
pub fn event_range(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    let bound = |order: &str| -> rusqlite::Result<Option<i64>> {
        let mut stmt = conn.prepare(&format!(
            "SELECT timestamp FROM main.events WHERE typeof(timestamp) = 'integer' ORDER BY timestamp {order} LIMIT 1"
        ))?;
        let mut rows = stmt.query([])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    };
    Ok(bound("ASC")?.zip(bound("DESC")?))
}

/// The window the flags ask for; `None` means the whole database.
pub fn resolve(
    range: Option<(i64, i64)>,
    since: Option<Duration>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Option<Window>, String> {
    if since.is_none() && from.is_none() && to.is_none() {
        return Ok(None);
    }
    let (oldest, newest) = range.unwrap_or((0, 0));
    let to = to.map(parse_instant).transpose()?.unwrap_or(newest);
    let from = match (since, from) {
        (Some(_), Some(_)) => return Err("use --since or --from, not both".into()),
        (Some(d), None) => to - d.as_nanos() as i64,
        (None, Some(f)) => parse_instant(f)?,
        (None, None) => oldest,
    };
    if from > to {
        return Err("the window ends before it starts (check --from/--to)".into());
    }
    Ok(Some(Window { from, to }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_unix_timestamps() {
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_instant("2026-11-21T12:00:00Z"),
            Ok(1_795_262_400 * 1_000_000_000)
        );
        assert_eq!(
            parse_instant("2026-11-21T13:00:00+01:00"),
            parse_instant("2026-11-21T12:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-21T12:00:00.250Z"),
            Ok(1_795_262_400_250_000_000)
        );
        assert_eq!(parse_instant("1795262400"), Ok(1_795_262_400_000_000_000));
        assert_eq!(parse_instant("1795262400000"), Ok(1_795_262_400_000_000_000));
        assert_eq!(
            parse_instant("1795262400000000000"),
            Ok(1_795_262_400_000_000_000)
        );
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for ns in [0, 1_795_262_400_250_000_000, 951_782_400_000_000_000] {
            assert_eq!(parse_instant(&format_instant(ns)), Ok(ns));
        }
        assert_eq!(
            format_instant(1_795_262_400_250_000_000),
            "2026-11-21T12:00:00.250Z"
        );
    }

    #[test]
    fn odd_timestamps_are_passed_over() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE events(id TEXT, timestamp INTEGER NOT NULL);
             CREATE INDEX i ON events(timestamp);
             INSERT INTO events VALUES ('a', 5), ('b', 'soon'), ('c', 9), ('d', 2.5), ('e', X'00');",
        )?;
        assert_eq!(event_range(&conn)?, Some((5, 9)));
        conn.execute_batch("DELETE FROM events WHERE typeof(timestamp) = 'integer'")?;
        assert_eq!(event_range(&conn)?, None);
        Ok(())
    }

    #[test]
    fn since_counts_back_from_the_newest_event() {
        let range = Some((1_000, 10_000_000_000));
        let w = resolve(range, Some(Duration::from_secs(5)), None, None);
        assert_eq!(
            w,
            Ok(Some(Window {
                from: 5_000_000_000,
                to: 10_000_000_000
            }))
        );
        assert_eq!(resolve(range, None, None, None), Ok(None));
        assert!(resolve(range, Some(Duration::from_secs(1)), Some("0"), None).is_err());
    }
}

//! Durations as people write them (`250ms`, `10s`, `5m`, `1h`, `2d`), the
//! one parser behind `--since`, the API's `since` parameter and every
//! duration in `ingero.yaml`. Strict: anything else is an error saying
//! what is accepted.

use std::time::Duration;

/// Parses `250ms`, `10s`, `1.5s`, `5m`, `1h`, `2d` (also `ns`, `us`, `min`).
///
/// # Errors
/// A sentence naming the text and the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => f64::NAN,
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < 1e12)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!("'{text}' is not a duration: use a number with ms, s, m, h or d (e.g. 10s, 5m)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_and_junk_is_refused() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "5", "5x", "-1s", "ms", "1e99s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

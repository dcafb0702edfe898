//! Human units on the command line and in `ingero.yaml`: sizes (`8m`,
//! `10g`, `4096`) and durations (`250ms`, `10s`, `5m`, `1h`), and their
//! compact display. Parsing is strict: anything else is an error that says
//! what is accepted.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

/// A size in bytes, written `N`, `Nk`, `Nm`, `Ng` (binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_suffix("ib").or_else(|| t.strip_suffix('b')).unwrap_or(&t);
        let (digits, shift) = match t.char_indices().last() {
            Some((i, 'k')) => (&t[..i], 10),
            Some((i, 'm')) => (&t[..i], 20),
            Some((i, 'g')) => (&t[..i], 30),
            Some((i, 't')) => (&t[..i], 40),
            _ => (t, 0),
        };
        digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1u64 << shift))
            .map(ByteSize)
            .ok_or_else(|| format!("'{text}' is not a size: use bytes or a suffix k, m, g (e.g. 8m, 10g)"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_yaml_ng::Value::deserialize(d)?;
        match raw {
            serde_yaml_ng::Value::Number(n) => n
                .as_u64()
                .map(ByteSize)
                .ok_or_else(|| serde::de::Error::custom("a size must be a whole number of bytes")),
            serde_yaml_ng::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "a size is a number or a string such as 8m",
            )),
        }
    }
}

/// A duration written `250ms`, `10s`, `5m`, `1h`, `2d` (or `1.5s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ingero_api::parse_duration(text).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    /// The largest unit that divides the duration exactly: `90s` as `90s`,
    /// `300s` as `5m`, `1500ms` as `1500ms`; parses back to itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000_000_000u128),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if ns.is_multiple_of(size) {
                return write!(f, "{}{unit}", ns / size);
            }
        }
        write!(f, "{ns}ns")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `1234567` ns as `1.23ms`: three significant digits, for tables and logs.
#[must_use]
pub fn format_ns(ns: f64) -> String {
    let (value, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "us")
    } else {
        (ns, "ns")
    };
    if value >= 100.0 {
        format!("{value:.0}{unit}")
    } else if value >= 10.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.2}{unit}")
    }
}

/// `1234567` as `1.2M`, for rates in the live summary.
#[must_use]
pub fn format_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.0}k", n / 1e3)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// A span of time in words a person reads at a glance, two units at most:
/// `850ms`, `14.2 s`, `2 min 14 s`, `3 h 12 min`, `2 d 4 h`.
#[must_use]
pub fn format_span(ns: i64) -> String {
    const S: i64 = 1_000_000_000;
    let ns = ns.max(0);
    if ns < S {
        return format_ns(ns as f64);
    }
    if ns < 60 * S {
        return format!("{:.1} s", ns as f64 / S as f64);
    }
    let secs = (ns + S / 2) / S;
    let (big, small, units) = if secs < 3600 {
        (secs / 60, secs % 60, ("min", "s"))
    } else if secs < 86_400 {
        (secs / 3600, secs % 3600 / 60, ("h", "min"))
    } else {
        (secs / 86_400, secs % 86_400 / 3600, ("d", "h"))
    };
    if small == 0 {
        format!("{big} {}", units.0)
    } else {
        format!("{big} {} {small} {}", units.0, units.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_human_units() {
        const S: i64 = 1_000_000_000;
        assert_eq!(format_span(850_000_000), "850ms");
        assert_eq!(format_span(14_240_000_000), "14.2 s");
        assert_eq!(format_span(134 * S), "2 min 14 s");
        assert_eq!(format_span(120 * S), "2 min");
        assert_eq!(format_span(3 * 3600 * S + 12 * 60 * S + 5 * S), "3 h 12 min");
        assert_eq!(format_span(365 * 86_400 * S), "365 d");
        assert_eq!(format_span(2 * 86_400 * S + 4 * 3600 * S), "2 d 4 h");
    }

    #[test]
    fn durations_print_as_they_parse() {
        for text in ["10s", "5m", "1500ms", "2d", "250us", "7ns"] {
            let d: HumanDuration = text.parse().expect("parses");
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(HumanDuration(Duration::from_secs(120)).to_string(), "2m");
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("8m".parse::<ByteSize>(), Ok(ByteSize(8 << 20)));
        assert_eq!("10G".parse::<ByteSize>(), Ok(ByteSize(10 << 30)));
        assert_eq!("512KiB".parse::<ByteSize>(), Ok(ByteSize(512 << 10)));
        assert!("ten".parse::<ByteSize>().is_err());
        assert!("-1k".parse::<ByteSize>().is_err());
        assert!("99999999999999t".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(8 << 20).to_string(), "8m");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            "10s".parse::<HumanDuration>().map(|d| d.0),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().map(|d| d.0),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().map(|d| d.0),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            "1.5h".parse::<HumanDuration>().map(|d| d.0),
            Ok(Duration::from_secs(5400))
        );
        assert!("10".parse::<HumanDuration>().is_err(), "a unit is required");
        assert!("soon".parse::<HumanDuration>().is_err());
        assert!("-5s".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn formatting_keeps_three_digits() {
        assert_eq!(format_ns(843_000.0), "843us");
        assert_eq!(format_ns(13_200.0), "13.2us");
        assert_eq!(format_ns(1_500_000_000.0), "1.50s");
        assert_eq!(format_count(1234.0), "1.2k");
        assert_eq!(format_count(42.0), "42");
    }
}

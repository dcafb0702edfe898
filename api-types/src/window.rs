//! Time ranges on the wire: a closed [`Window`] of Unix ns, a [`Span`]
//! that may be empty, and [`Since`], the "last N of recorded data" that
//! every windowed endpoint takes.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// An inclusive range of Unix nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// First instant, Unix ns.
    pub from: i64,
    /// Last instant, Unix ns.
    pub to: i64,
}

impl Window {
    /// Length in seconds (0 for an inverted window).
    #[must_use]
    pub fn seconds(&self) -> f64 {
        (self.to - self.from).max(0) as f64 / 1e9
    }
}

/// A range that is absent when there was nothing to analyse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First instant, Unix ns.
    pub from: Option<i64>,
    /// Last instant, Unix ns.
    pub to: Option<i64>,
}

impl Span {
    /// The smallest span holding every window.
    #[must_use]
    pub fn covering(windows: impl IntoIterator<Item = Window> + Clone) -> Self {
        Self {
            from: windows.clone().into_iter().map(|w| w.from).min(),
            to: windows.into_iter().map(|w| w.to).max(),
        }
    }
}

/// How much recorded data a request covers, counted back from the newest
/// event. On the wire: `"all"` or a duration (`"5m"`, `"300000ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Everything recorded.
    All,
    /// The last this much of recorded data.
    Last(Duration),
}

impl Since {
    /// The duration, or `None` for everything.
    #[must_use]
    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::All => None,
            Self::Last(d) => Some(d),
        }
    }

    /// `None` as [`Since::All`].
    #[must_use]
    pub fn from_duration(d: Option<Duration>) -> Self {
        d.map_or(Self::All, Self::Last)
    }

    /// The query string of a windowed endpoint: `?since=300000ms`.
    #[must_use]
    pub fn query(self) -> String {
        format!("?since={self}")
    }
}

impl FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(Self::All),
            other => parse_duration(other).map(Self::Last),
        }
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Last(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

impl Serialize for Since {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Since {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_round_trips_through_its_text() {
        for s in [
            Since::All,
            Since::Last(Duration::from_secs(300)),
            Since::Last(Duration::from_millis(1)),
        ] {
            assert_eq!(s.to_string().parse::<Since>(), Ok(s));
        }
        assert_eq!("5m".parse::<Since>(), Ok(Since::Last(Duration::from_secs(300))));
        assert!("soon".parse::<Since>().is_err());
    }

    #[test]
    fn a_span_covers_its_windows() {
        let s = Span::covering([Window { from: 5, to: 9 }, Window { from: 2, to: 7 }]);
        assert_eq!((s.from, s.to), (Some(2), Some(9)));
        assert_eq!(Span::covering(Vec::<Window>::new()), Span::default());
    }
}

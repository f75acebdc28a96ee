//! Positions in the log as the command line writes them: `earliest`, `end`, `P:O,P:O,...`
//! (partition:offset pairs), or a point in time, `ts:MILLIS` (milliseconds since the Unix
//! epoch) or an RFC 3339 timestamp. A time is turned into offsets by [`crate::timestamps`].

use std::collections::BTreeMap;
use std::str::FromStr;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// Each partition from offset 0; a partition whose log no longer starts there is refused.
    Earliest,
    /// Each partition from wherever its log starts now, accepting that records before it were
    /// deleted (retention or DeleteRecords).
    LogStart,
    /// The listed partitions from these offsets; unlisted ones from their first record.
    Offsets(BTreeMap<i32, i64>),
    /// Each partition from its first record whose timestamp is at or after this time (ms).
    Timestamp(i64),
}

/// Where a replay stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// The end of each partition when the replay reaches it (partition EOF).
    End,
    /// Before these offsets (exclusive) in the listed partitions; unlisted ones to their end.
    Offsets(BTreeMap<i32, i64>),
    /// Before each partition's first record whose timestamp is at or after this time (ms).
    Timestamp(i64),
}

fn offsets(s: &str) -> Result<BTreeMap<i32, i64>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',') {
        let (p, o) = pair.split_once(':').ok_or_else(|| {
            format!("{pair:?} is not PARTITION:OFFSET, ts:MILLIS or an RFC 3339 time")
        })?;
        let p: i32 = p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| format!("partition {p:?} is not a non-negative integer"))?;
        let o: i64 = o
            .trim()
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| format!("offset {o:?} is not a non-negative integer"))?;
        if out.insert(p, o).is_some() {
            return Err(format!("partition {p} is given twice"));
        }
    }
    Ok(out)
}

/// `ts:MILLIS` or an RFC 3339 time (`2024-05-01T12:00:00Z`, `...+02:00`) as Unix milliseconds;
/// `None` when `s` is neither (so it may be offsets).
fn timestamp(s: &str) -> Option<Result<i64, String>> {
    if let Some(ms) = s.strip_prefix("ts:") {
        return Some(
            ms.trim()
                .parse::<i64>()
                .ok()
                .filter(|ms| *ms >= 0)
                .ok_or_else(|| format!("{ms:?} is not a non-negative number of milliseconds")),
        );
    }
    // An RFC 3339 time has a date with dashes; offsets never do.
    if s.contains('-') && s.contains('T') {
        return Some(
            chrono::DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}")),
        );
    }
    None
}

impl FromStr for From {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(From::Earliest),
            "log-start" => Ok(From::LogStart),
            _ => match timestamp(s) {
                Some(t) => t.map(From::Timestamp),
                None => offsets(s).map(From::Offsets),
            },
        }
    }
}

impl FromStr for To {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "end" => Ok(To::End),
            _ => match timestamp(s) {
                Some(t) => t.map(To::Timestamp),
                None => offsets(s).map(To::Offsets),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("earliest".parse::<From>(), Ok(From::Earliest));
        assert_eq!("log-start".parse::<From>(), Ok(From::LogStart));
        assert_eq!("end".parse::<To>(), Ok(To::End));
        assert_eq!(
            "0:5, 3:7".parse::<To>(),
            Ok(To::Offsets(BTreeMap::from([(0, 5), (3, 7)])))
        );
        assert!("0:5,0:6".parse::<From>().is_err());
        assert!("x:5".parse::<From>().is_err());
        assert!("0:-1".parse::<From>().is_err());
        assert!("05".parse::<From>().is_err());
        assert!("".parse::<To>().is_err());
    }

    #[test]
    fn parses_times() {
        assert_eq!(
            "ts:1700000000123".parse::<From>(),
            Ok(From::Timestamp(1_700_000_000_123))
        );
        assert_eq!(
            "2023-11-14T22:13:20.123Z".parse::<To>(),
            Ok(To::Timestamp(1_700_000_000_123))
        );
        assert_eq!(
            "2023-11-15T00:13:20.123+02:00".parse::<From>(),
            Ok(From::Timestamp(1_700_000_000_123))
        );
        assert!("ts:".parse::<From>().is_err());
        assert!("ts:-5".parse::<To>().is_err());
        assert!("ts:12x".parse::<To>().is_err());
        assert!("2023-11-14T25:00:00Z".parse::<To>().is_err());
        assert!("2023-11-14 22:13:20Z".parse::<To>().is_err());
    }
}

//! Positions in the log as the command line writes them: `earliest`, `end`, or
//! `P:O,P:O,...` (partition:offset pairs).

use std::collections::BTreeMap;
use std::str::FromStr;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// Each partition from its first record.
    Earliest,
    /// The listed partitions from these offsets; unlisted ones from their first record.
    Offsets(BTreeMap<i32, i64>),
}

/// Where a replay stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// The end of each partition when the replay reaches it (partition EOF).
    End,
    /// Before these offsets (exclusive) in the listed partitions; unlisted ones to their end.
    Offsets(BTreeMap<i32, i64>),
}

fn offsets(s: &str) -> Result<BTreeMap<i32, i64>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',') {
        let (p, o) = pair
            .split_once(':')
            .ok_or_else(|| format!("{pair:?} is not PARTITION:OFFSET"))?;
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

impl FromStr for From {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(From::Earliest),
            _ => offsets(s).map(From::Offsets),
        }
    }
}

impl FromStr for To {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "end" => Ok(To::End),
            _ => offsets(s).map(To::Offsets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("earliest".parse::<From>(), Ok(From::Earliest));
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
}

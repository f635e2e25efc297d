//! The one duration syntax of every duration flag and scenario key:
//! `12` (seconds), `2.5` (seconds), `500ms`, `12s`, `15m`, `1h`. Public so
//! other CLIs of the workspace parse durations the same way.

use std::time::Duration;

/// Parses `12`, `500ms`, `12s`, `15m`, `1h` (decimals allowed: `2.5s`).
/// The error is one sentence that says what to write instead.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || format!("`{s}` is not a duration: write e.g. 12, 500ms, 12s, 15m or 1h");
    let unit_ns: u64 = match unit.trim() {
        "ms" => 1_000_000,
        "s" | "" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        unit => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}`: use ms, s, m or h (no unit: seconds)"
            ))
        }
    };
    let too_big = || format!("`{s}` is too long a duration");
    // Whole numbers stay exact integers; decimals go through f64.
    if let Ok(n) = num.parse::<u64>() {
        let ns = n.checked_mul(unit_ns).ok_or_else(too_big)?;
        return Ok(Duration::from_nanos(ns));
    }
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    // try_: a huge value must be an error, not a panic.
    Duration::try_from_secs_f64(n * unit_ns as f64 / 1e9).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_every_documented_form() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("12"), Duration::from_secs(12));
        assert_eq!(d("12s"), Duration::from_secs(12));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("15m"), Duration::from_secs(900));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("2.5s"), Duration::from_millis(2500));
        assert_eq!(d(" 3 s "), Duration::from_secs(3));
        for bad in [
            "",
            "s",
            "5y",
            "-1s",
            "1e3s",
            "1.2.3s",
            "99999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn whole_units_round_trip(n in 0u64..1_000_000, unit in prop::sample::select(vec!["", "s", "ms", "m", "h"])) {
            let want = match unit {
                "ms" => Duration::from_millis(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => Duration::from_secs(n),
            };
            prop_assert_eq!(parse_duration(&format!("{n}{unit}")).unwrap(), want);
        }
    }
}

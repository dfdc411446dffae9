//! Durations as the plugin JSON writes them: `"250ms"`, `"1s"`, `"1m"`, `"1h"`, `"1d"`.

/// Parses a duration string into whole milliseconds.
///
/// Accepts one unsigned integer followed by exactly one unit. Fractions, signs,
/// spaces and compound forms ("1m30s") are refused so that a config means one thing.
pub fn parse_millis(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse_millis("250ms"), Some(250));
        assert_eq!(parse_millis("1s"), Some(1_000));
        assert_eq!(parse_millis("1m"), Some(60_000));
        assert_eq!(parse_millis("2h"), Some(7_200_000));
        assert_eq!(parse_millis("1d"), Some(86_400_000));
        assert_eq!(parse_millis("0s"), Some(0));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "1",
            "s",
            "1x",
            "-1s",
            "1.5s",
            " 1s",
            "1s ",
            "1m30s",
            "1S",
            "9999999999999s",
        ] {
            assert_eq!(parse_millis(bad), None, "{bad:?} should be refused");
        }
    }
}

//! Duration strings as `fly.toml` files write them: Go's `time.ParseDuration` forms
//! (`"10s"`, `"1m0s"`, `"1.5s"`, `"300ms"`, `"6h0m0s"`) and humantime's friendlier ones
//! (`"2 minutes"`, `"1h 30m"`). Owns string parsing only: what a bare TOML number means
//! (seconds or milliseconds) depends on the key and is decided by the caller.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration string. Go's syntax is tried first because that is what Fly
/// writes (and humantime rejects fractions such as `"1.5s"`); humantime covers the rest.
///
/// # Errors
///
/// A message naming the text when it is empty, negative, a bare number or not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration: expected a number and a unit, such as `10s`".to_string());
    }
    if let Some(duration) = parse_go(text) {
        return Ok(duration);
    }
    humantime::parse_duration(text).map_err(|_| {
        format!("invalid duration `{text}`: expected a number and a unit, such as `10s`, `1m30s`, `1.5s` or `300ms`")
    })
}

/// Go's `time.ParseDuration` without negative values: a sequence of decimal numbers,
/// each with an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`).
fn parse_go(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        total = total.checked_add(component_nanos(number, unit_nanos(unit)?)?)?;
        rest = next;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    let nanos = u32::try_from(total % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, nanos))
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// `number` (digits with at most one `.`) times `unit` nanoseconds, fraction truncated
/// below a nanosecond like Go does.
fn component_nanos(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut nanos = whole.checked_mul(unit)?;
    let mut scale = unit;
    for digit in fraction.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos += u128::from(digit - b'0') * scale;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn parses_go_durations_as_fly_writes_them() {
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("1m0s"), Ok(ms(60_000)));
        assert_eq!(parse_duration("3m0s"), Ok(ms(180_000)));
        assert_eq!(parse_duration("6h0m0s"), Ok(ms(6 * 3_600_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(90 * 60_000)));
        assert_eq!(parse_duration("300ms"), Ok(ms(300)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("120s"), Ok(ms(120_000)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1_500)));
        assert_eq!(parse_duration("1µs"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_duration(" 5s "), Ok(ms(5_000)));
    }

    #[test]
    fn parses_fractions() {
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("0.25m"), Ok(ms(15_000)));
        assert_eq!(parse_duration("1.5h30m"), Ok(ms(120 * 60_000)));
        assert_eq!(parse_duration("2.0000000001s"), Ok(ms(2_000)));
    }

    #[test]
    fn parses_humantime_forms() {
        assert_eq!(parse_duration("2 minutes"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h 30m"), Ok(ms(90 * 60_000)));
        assert_eq!(parse_duration("5sec"), Ok(ms(5_000)));
    }

    #[test]
    fn rejects_garbage_bare_numbers_and_negatives() {
        for bad in ["abc", "", "  ", "10", "-5s", "1.2.3s", "s", "5 parsecs", "."] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains("duration"), "{bad}: {error}");
        }
    }

    #[test]
    fn error_names_the_value() {
        assert_eq!(
            parse_duration("abc"),
            Err("invalid duration `abc`: expected a number and a unit, such as `10s`, `1m30s`, `1.5s` or `300ms`"
                .to_string())
        );
    }
}

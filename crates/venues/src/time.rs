//! Venue timestamps to [`UnixNanos`]: epoch milliseconds or microseconds (Binance) and
//! RFC 3339 text (Coinbase, Kraken). Pure arithmetic, no clock and no date library; an
//! unusable time (Coinbase has sent `0001-01-01T00:00:00Z`) is `None`, and the runtime
//! falls back to the receive time.

use raven_model::UnixNanos;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` for anything else, for
/// fractions beyond nanoseconds, and for instants before 1970.
pub fn rfc3339(text: &str) -> Option<UnixNanos> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        b[r].iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(start..i)? * 10u64.pow(9 - digits as u32);
    }
    let offset_secs: i64 = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from(digits[0] - b'0') * 10 + i64::from(digits[1] - b'0');
            let m = i64::from(digits[2] - b'0') * 10 + i64::from(digits[3] - b'0');
            let secs = h * 3600 + m * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(UnixNanos::PER_SECOND)?
        .checked_add(nanos)
        .map(UnixNanos)
}

/// Epoch microseconds (`timeUnit=MICROSECOND`).
pub fn from_micros(us: u64) -> Option<UnixNanos> {
    us.checked_mul(1_000).map(UnixNanos)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venue_timestamps_parse_to_the_nanosecond() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-04-07T14:30:00.123456Z", 1_775_572_200_123_456_000),
            ("2023-10-06T17:35:55.440295Z", 1_696_613_755_440_295_000),
            ("2024-02-29T00:00:00.000000001Z", 1_709_164_800_000_000_001),
            ("2024-02-29T02:00:00+02:00", 1_709_164_800_000_000_000),
            ("2019-08-01T00:00:03.818Z", 1_564_617_603_818_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(rfc3339(text), Some(UnixNanos(nanos)), "{text}");
        }
    }

    #[test]
    fn unusable_timestamps_are_none() {
        for text in [
            "0001-01-01T00:00:00.000000Z",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-01-01T24:00:00Z",
            "2023-01-01T00:00:00.Z",
            "2023-01-01T00:00:00.1234567890Z",
            "2023-01-01T00:00:00",
            "2023-01-01 00:00",
            "",
            "2023-01-01T00:00:00Zjunk",
            "２023-01-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339(text), None, "{text}");
        }
    }
}

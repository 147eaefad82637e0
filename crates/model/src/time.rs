//! Timestamps: `u64` nanoseconds since the Unix epoch. Reading the clock is the caller's
//! job; nothing in the model reads it, which is what lets replay match live exactly.

use std::fmt;

/// Nanoseconds since the Unix epoch (UTC). `UnixNanos::ZERO` means "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixNanos(pub u64);

impl UnixNanos {
    /// The null timestamp: the source did not provide one.
    pub const ZERO: UnixNanos = UnixNanos(0);
    /// Nanoseconds in one second.
    pub const PER_SECOND: u64 = 1_000_000_000;

    /// From milliseconds since the epoch (exchange wire formats often use these).
    /// Returns `None` on overflow instead of wrapping.
    pub fn from_millis(ms: u64) -> Option<UnixNanos> {
        ms.checked_mul(1_000_000).map(UnixNanos)
    }

    /// The raw nanosecond count.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Start of the interval of `width_ns` that contains this instant.
    pub fn floor_to(self, width_ns: u64) -> UnixNanos {
        UnixNanos(self.0 - self.0 % width_ns)
    }

    /// Parses an instant: Unix nanoseconds, or RFC 3339 (`2026-11-28T05:00:00Z`, fractions
    /// to the nanosecond and offsets allowed); the error says which forms are taken.
    pub fn parse(text: &str) -> Result<UnixNanos, String> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(UnixNanos)
                .map_err(|_| format!("time {text:?} is out of range"));
        }
        rfc3339(text).map(UnixNanos).ok_or_else(|| {
            format!(
                "invalid time {text:?}: expected Unix nanoseconds or RFC 3339, e.g. 2026-11-28T05:00:00Z or 2026-11-28T06:00:00.5+01:00"
            )
        })
    }
}

/// Nanoseconds of an RFC 3339 instant, proleptic Gregorian (Howard Hinnant's days from
/// civil); `None` for anything else or before the epoch.
fn rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = fraction[..digits].parse::<i64>().ok()? * 10i64.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    // Days from 1970-01-01 to the date (proleptic Gregorian; Howard Hinnant's method).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds.checked_mul(1_000_000_000)?.checked_add(nanos)?).ok()
}

impl fmt::Display for UnixNanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<u64, String> {
        UnixNanos::parse(text).map(UnixNanos::as_u64)
    }

    #[test]
    fn times_are_unix_nanoseconds_or_rfc3339() {
        assert_eq!(p("1795842000000000000"), Ok(1_795_842_000_000_000_000));
        assert_eq!(p("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(p("2026-11-28T05:00:00Z"), Ok(1_795_842_000_000_000_000));
        assert_eq!(
            p("2026-11-28T06:00:00+01:00"),
            Ok(1_795_842_000_000_000_000)
        );
        assert_eq!(
            p("2026-11-28T04:30:00-00:30"),
            Ok(1_795_842_000_000_000_000)
        );
        assert_eq!(
            p("2026-11-28T05:00:00.000000001Z"),
            Ok(1_795_842_000_000_000_001)
        );
        assert_eq!(p("2026-11-28T05:00:00.5Z"), Ok(1_795_842_000_500_000_000));
        assert_eq!(p("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000_000_000));
        for bad in [
            "",
            "yesterday",
            "2026-11-28",
            "2026-11-28T05:00:00",
            "2026-13-01T00:00:00Z",
            "2026-11-28T05:00:00.Z",
            "2026-11-28T05:00:00.1234567891Z",
            "2026-11-28T05:00:00+0100",
            "1969-12-31T23:59:59Z",
            "99999999999999999999",
        ] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

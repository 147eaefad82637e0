//! Fixed-point `Price` and `Qty`: exact decimal parsing and canonical formatting.
//!
//! Both are integers counting units of 10^-9 ([`FIXED_SCALE`]), the market-data
//! convention. `Price` is an `i64` (±9.2 billion, enough for any quoted price). `Qty` is
//! an `i128`: at the same scale an `i64` would stop at 9.2e9 units, and crypto sizes such
//! as 1e12 tokens are real; `i128` reaches 1.7e29 units, so no size can overflow.
//! Keeping one scale for both means a price times a quantity never needs rescaling.
//!
//! Parsing accepts exactly `-?[0-9]+(\.[0-9]+)?` with at most nine decimals. Anything
//! else — empty, exponent forms, `NaN`, stray signs or dots, too many decimals, values
//! out of range — is a [`FixedError`] naming the input. Nothing is rounded, truncated or
//! saturated, and no value ever passes through `f64`: display uses the exact decimal
//! `Display` form.

use std::fmt;
use std::str::FromStr;

/// Decimal places of the fixed-point scale shared by prices and quantities.
pub const FIXED_DECIMALS: u32 = 9;
/// Units per whole: a `Price` or `Qty` of `FIXED_SCALE` units is 1.0.
pub const FIXED_SCALE: i64 = 1_000_000_000;

const POW10: [u64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Why a decimal string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedErrorKind {
    /// The input was empty.
    Empty,
    /// Not of the form `-?digits[.digits]` (exponents, `NaN`, extra signs or dots).
    Malformed,
    /// More than [`FIXED_DECIMALS`] digits after the point: would need rounding.
    TooManyDecimals,
    /// The value does not fit the type.
    Overflow,
}

impl fmt::Display for FixedErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FixedErrorKind::Empty => "empty string",
            FixedErrorKind::Malformed => {
                "not a plain decimal (expected digits, an optional leading '-' and at most one '.')"
            }
            FixedErrorKind::TooManyDecimals => "more than 9 decimal places (would need rounding)",
            FixedErrorKind::Overflow => "out of range",
        })
    }
}

/// A decimal string that is not an exact fixed-point value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {kind}")]
pub struct FixedError {
    what: &'static str,
    input: String,
    kind: FixedErrorKind,
}

impl FixedError {
    fn new(what: &'static str, input: &str, kind: FixedErrorKind) -> FixedError {
        // Keep hostile inputs from making huge error messages.
        let input: String = input.chars().take(64).collect();
        FixedError { what, input, kind }
    }

    /// What was wrong with the input.
    pub fn kind(&self) -> FixedErrorKind {
        self.kind
    }

    /// The offending input (first 64 characters).
    pub fn input(&self) -> &str {
        &self.input
    }
}

/// Parses `-?[0-9]+(\.[0-9]{1,9})?` into (negative, magnitude in 1e-9 units).
///
/// One pass over the bytes: integer digits accumulate in a `u64` (19 digits cannot
/// overflow it), the fraction in another, and only integer parts longer than 19 digits
/// take the checked `u128` path.
#[inline]
fn parse_units(s: &str) -> Result<(bool, u128), FixedErrorKind> {
    let bytes = s.as_bytes();
    let (negative, body) = match bytes.split_first() {
        None => return Err(FixedErrorKind::Empty),
        Some((b'-', rest)) => (true, rest),
        Some(_) => (false, bytes),
    };
    let mut i = 0;
    let mut int = 0u64;
    while let Some(&b) = body.get(i) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if i == 19 {
            return parse_long(body).map(|m| (negative, m));
        }
        int = int * 10 + u64::from(d);
        i += 1;
    }
    if i == 0 {
        return Err(FixedErrorKind::Malformed);
    }
    let int_units = u128::from(int) * FIXED_SCALE as u128;
    match body.get(i) {
        None => return Ok((negative, int_units)),
        Some(b'.') => i += 1,
        Some(_) => return Err(FixedErrorKind::Malformed),
    }
    let frac = &body[i..];
    if frac.is_empty() {
        return Err(FixedErrorKind::Malformed);
    }
    let mut f = 0u64;
    for (n, &b) in frac.iter().enumerate() {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(FixedErrorKind::Malformed);
        }
        if n == FIXED_DECIMALS as usize {
            // A second '.' or a letter is a worse problem than the length: say that.
            return Err(if frac.iter().all(u8::is_ascii_digit) {
                FixedErrorKind::TooManyDecimals
            } else {
                FixedErrorKind::Malformed
            });
        }
        f = f * 10 + u64::from(d);
    }
    let frac_units = f * POW10[FIXED_DECIMALS as usize - frac.len()];
    Ok((negative, int_units + u128::from(frac_units)))
}

/// The rare integer part of more than 19 digits: checked `u128` arithmetic throughout.
#[cold]
fn parse_long(body: &[u8]) -> Result<u128, FixedErrorKind> {
    let (int, frac) = match body.iter().position(|&b| b == b'.') {
        Some(dot) => (&body[..dot], Some(&body[dot + 1..])),
        None => (body, None),
    };
    let mut acc = 0u128;
    for &b in int {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(FixedErrorKind::Malformed);
        }
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(u128::from(d)))
            .ok_or(FixedErrorKind::Overflow)?;
    }
    let int_units = acc
        .checked_mul(FIXED_SCALE as u128)
        .ok_or(FixedErrorKind::Overflow)?;
    let frac_units = match frac {
        None => 0,
        // Reuse the short path on "0.<fraction>" for the fractional rules.
        Some(f) => {
            let mut short = Vec::with_capacity(f.len() + 2);
            short.extend_from_slice(b"0.");
            short.extend_from_slice(f);
            let text = std::str::from_utf8(&short).map_err(|_| FixedErrorKind::Malformed)?;
            parse_units(text)?.1
        }
    };
    int_units
        .checked_add(frac_units)
        .ok_or(FixedErrorKind::Overflow)
}

/// Writes a magnitude in 1e-9 units as the canonical decimal: no leading zeros, no
/// trailing fractional zeros, no point for whole numbers, `-` only for nonzero values.
fn write_units(f: &mut fmt::Formatter<'_>, negative: bool, magnitude: u128) -> fmt::Result {
    let whole = magnitude / FIXED_SCALE as u128;
    let mut frac = (magnitude % FIXED_SCALE as u128) as u64;
    let sign = if negative && magnitude != 0 { "-" } else { "" };
    if frac == 0 {
        return write!(f, "{sign}{whole}");
    }
    let mut width = FIXED_DECIMALS as usize;
    while frac.is_multiple_of(10) {
        frac /= 10;
        width -= 1;
    }
    write!(f, "{sign}{whole}.{frac:0width$}")
}

/// A price in units of 10^-9 of the quote currency. Negative prices are valid (spreads,
/// some futures); ordering is numeric.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Price(i64);

impl Price {
    /// Zero.
    pub const ZERO: Price = Price(0);
    /// The largest representable price.
    pub const MAX: Price = Price(i64::MAX);
    /// The smallest representable price.
    pub const MIN: Price = Price(i64::MIN);

    /// From a raw count of 1e-9 units.
    pub const fn from_units(units: i64) -> Price {
        Price(units)
    }

    /// The raw count of 1e-9 units.
    pub const fn units(self) -> i64 {
        self.0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Price) -> Option<Price> {
        self.0.checked_add(other.0).map(Price)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Price) -> Option<Price> {
        self.0.checked_sub(other.0).map(Price)
    }
}

impl FromStr for Price {
    type Err = FixedError;

    fn from_str(s: &str) -> Result<Price, FixedError> {
        let (negative, magnitude) =
            parse_units(s).map_err(|kind| FixedError::new("price", s, kind))?;
        let value = if negative {
            0i128 - magnitude as i128
        } else {
            magnitude as i128
        };
        i64::try_from(value)
            .map(Price)
            .map_err(|_| FixedError::new("price", s, FixedErrorKind::Overflow))
    }
}

impl TryFrom<&str> for Price {
    type Error = FixedError;

    fn try_from(s: &str) -> Result<Price, FixedError> {
        s.parse()
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_units(f, self.0 < 0, u128::from(self.0.unsigned_abs()))
    }
}

impl fmt::Debug for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Price({self})")
    }
}

/// A quantity in units of 10^-9 of the base asset (or contracts). Signed so that a
/// negative size coming in from outside is representable and can be reported as an
/// integrity error instead of being silently clamped; books never hold one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Qty(i128);

impl Qty {
    /// Zero: in a book delta, removes the level.
    pub const ZERO: Qty = Qty(0);
    /// The largest representable quantity.
    pub const MAX: Qty = Qty(i128::MAX);

    /// From a raw count of 1e-9 units.
    pub const fn from_units(units: i128) -> Qty {
        Qty(units)
    }

    /// From a whole number of base units (e.g. 5 BTC).
    pub const fn from_whole(whole: i64) -> Qty {
        Qty(whole as i128 * FIXED_SCALE as i128)
    }

    /// The raw count of 1e-9 units.
    pub const fn units(self) -> i128 {
        self.0
    }

    /// True for zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// True below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Qty) -> Option<Qty> {
        self.0.checked_add(other.0).map(Qty)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Qty) -> Option<Qty> {
        self.0.checked_sub(other.0).map(Qty)
    }
}

impl FromStr for Qty {
    type Err = FixedError;

    fn from_str(s: &str) -> Result<Qty, FixedError> {
        let (negative, magnitude) =
            parse_units(s).map_err(|kind| FixedError::new("quantity", s, kind))?;
        let value = i128::try_from(magnitude)
            .map_err(|_| FixedError::new("quantity", s, FixedErrorKind::Overflow))?;
        Ok(Qty(if negative { -value } else { value }))
    }
}

impl TryFrom<&str> for Qty {
    type Error = FixedError;

    fn try_from(s: &str) -> Result<Qty, FixedError> {
        s.parse()
    }
}

impl fmt::Display for Qty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_units(f, self.0 < 0, self.0.unsigned_abs())
    }
}

impl fmt::Debug for Qty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Qty({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prices_round_trip_to_canonical_form() {
        let cases = [
            ("0.00000001", "0.00000001", 10),
            ("65000.10", "65000.1", 65_000_100_000_000),
            ("0.000001234", "0.000001234", 1_234),
            (
                "123456789.123456789",
                "123456789.123456789",
                123_456_789_123_456_789,
            ),
            ("0", "0", 0),
            ("-0", "0", 0),
            ("-0.5", "-0.5", -500_000_000),
            ("007.700", "7.7", 7_700_000_000),
            ("9223372036.854775807", "9223372036.854775807", i64::MAX),
            ("-9223372036.854775808", "-9223372036.854775808", i64::MIN),
            ("1209.67000000", "1209.67", 1_209_670_000_000),
        ];
        for (input, canonical, units) in cases {
            let p: Price = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.units(), units, "{input}");
            assert_eq!(p.to_string(), canonical, "{input}");
            assert_eq!(canonical.parse::<Price>().unwrap(), p, "{input}");
        }
    }

    #[test]
    fn bad_prices_are_errors_that_name_the_input() {
        use FixedErrorKind::*;
        let cases = [
            ("", Empty),
            ("-", Malformed),
            ("1e5", Malformed),
            ("NaN", Malformed),
            ("0.-1", Malformed),
            ("0.-10000", Malformed),
            ("1.2.3", Malformed),
            ("+1", Malformed),
            (".5", Malformed),
            ("5.", Malformed),
            (" 1", Malformed),
            ("1,5", Malformed),
            ("--1", Malformed),
            ("0.0000000001", TooManyDecimals),
            ("1.1234567891", TooManyDecimals),
            ("9223372036.854775808", Overflow),
            ("-9223372036.854775809", Overflow),
            ("100000000000000000000000", Overflow),
            ("1000000000000000000000000000000000000000000", Overflow),
        ];
        for (input, kind) in cases {
            let err = input.parse::<Price>().expect_err(input);
            assert_eq!(err.kind(), kind, "{input}");
            assert_eq!(err.input(), input);
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn quantities_hold_huge_crypto_sizes() {
        let q: Qty = "1000000000000".parse().unwrap();
        assert_eq!(q.units(), 1_000_000_000_000 * 1_000_000_000);
        assert_eq!(q.to_string(), "1000000000000");
        let q: Qty = "123456789012345678901.000000001".parse().unwrap();
        assert_eq!(q.to_string(), "123456789012345678901.000000001");
        assert_eq!(Qty::from_whole(5), "5".parse().unwrap());
        let err = "1000000000000000000000000000000"
            .parse::<Qty>()
            .unwrap_err();
        assert_eq!(err.kind(), FixedErrorKind::Overflow);
        // A negative size parses (so the book can report it), it is not clamped to zero.
        assert!("-3.5".parse::<Qty>().unwrap().is_negative());
    }

    /// Reference canonicalization, written the slow obvious way on strings.
    fn canonical(s: &str) -> String {
        let (neg, body) = s.strip_prefix('-').map_or((false, s), |b| (true, b));
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let zero = int == "0" && frac.is_empty();
        let sign = if neg && !zero { "-" } else { "" };
        if frac.is_empty() {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    }

    proptest! {
        #[test]
        fn parse_of_format_is_identity(units in any::<i64>()) {
            let p = Price::from_units(units);
            prop_assert_eq!(p.to_string().parse::<Price>().unwrap(), p);
        }

        #[test]
        fn qty_parse_of_format_is_identity(units in any::<i128>()) {
            let q = Qty::from_units(units);
            prop_assert_eq!(q.to_string().parse::<Qty>().unwrap(), q);
        }

        #[test]
        fn format_of_parse_is_canonical(s in "-?[0-9]{1,9}(\\.[0-9]{1,9})?") {
            let p: Price = s.parse().unwrap();
            prop_assert_eq!(p.to_string(), canonical(&s));
        }

        #[test]
        fn qty_format_of_parse_is_canonical(s in "-?[0-9]{1,20}(\\.[0-9]{1,9})?") {
            let q: Qty = s.parse().unwrap();
            prop_assert_eq!(q.to_string(), canonical(&s));
        }
    }
}

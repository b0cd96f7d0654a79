//! Kubernetes resource quantities ("500m", "1.5Gi", "129e6") to integer units.
//!
//! The parser is exact: it keeps the number as an integer mantissa plus decimal and
//! binary exponents and only divides once at the end, rounding up as Kubernetes'
//! `Quantity.Value()`/`MilliValue()` do, so "0.1" cores is 100m and not 99m.

/// Refuse more than this many cores: no edge board has it and it keeps sums in range.
pub const MAX_CPU_CORES: u64 = 1_000_000;

/// At most this many significant digits in a quantity; keeps every product in `u128`.
const MAX_DIGITS: usize = 20;
/// The largest decimal exponent accepted in "NeM" form.
const MAX_EXPONENT: i32 = 18;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("quantity {0:?} is negative")]
    Negative(String),
    #[error("quantity {0:?} is not a valid Kubernetes quantity")]
    Invalid(String),
    #[error("quantity {0:?} has an unknown suffix {1:?}")]
    UnknownSuffix(String, String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// A parsed quantity: `mantissa * 10^exp10 * 2^exp2`.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let original = s;
    let s = s.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let invalid = || QuantityError::Invalid(original.to_string());
    let s = match s.as_bytes()[0] {
        b'-' => return Err(QuantityError::Negative(original.to_string())),
        b'+' => &s[1..],
        _ => s,
    };
    // The number: digits, optionally '.', optionally more digits (".5" and "5." are valid).
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(invalid());
    }
    let digits = format!("{int_part}{frac_part}");
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(QuantityError::TooLarge(original.to_string()));
    }
    let mantissa: u128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| invalid())?
    };
    let mut exp10 = -(frac_part.len() as i32);
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other if other.starts_with(['e', 'E']) => {
            let exp: i32 = other[1..].parse().map_err(|_| {
                QuantityError::UnknownSuffix(original.to_string(), other.to_string())
            })?;
            if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&exp) {
                return Err(QuantityError::TooLarge(original.to_string()));
            }
            exp10 += exp;
        }
        other => {
            return Err(QuantityError::UnknownSuffix(
                original.to_string(),
                other.to_string(),
            ))
        }
    }
    Ok(Parsed {
        mantissa,
        exp10,
        exp2,
    })
}

/// `ceil(q * 10^scale)` as an integer, or `None` on overflow.
fn scaled_ceil(q: Parsed, scale: i32) -> Option<u128> {
    if q.mantissa == 0 {
        return Some(0);
    }
    let exp10 = q.exp10 + scale;
    let mut num = q.mantissa.checked_mul(1u128.checked_shl(q.exp2)?)?;
    if exp10 >= 0 {
        num = num.checked_mul(10u128.checked_pow(exp10.unsigned_abs())?)?;
        Some(num)
    } else {
        match 10u128.checked_pow(exp10.unsigned_abs()) {
            Some(den) => Some(num.div_ceil(den)),
            // The divisor exceeds u128, and so does it the numerator: the value is a
            // positive fraction below one unit, which rounds up to one.
            None => Some(1),
        }
    }
}

/// Parses a CPU quantity into millicores: "500m" -> 500, "0.5" -> 500, "2" -> 2000.
pub fn parse_cpu_millis(s: &str) -> Result<u32, QuantityError> {
    let q = parse(s)?;
    let millis = scaled_ceil(q, 3).ok_or_else(|| QuantityError::TooLarge(s.to_string()))?;
    if millis > u128::from(MAX_CPU_CORES * 1000) {
        return Err(QuantityError::TooLarge(s.to_string()));
    }
    u32::try_from(millis).map_err(|_| QuantityError::TooLarge(s.to_string()))
}

/// Parses a memory quantity into bytes: "32Mi", "1.5Gi", "129e6", "1G", "4096".
pub fn parse_memory_bytes(s: &str) -> Result<u64, QuantityError> {
    let q = parse(s)?;
    let bytes = scaled_ceil(q, 0).ok_or_else(|| QuantityError::TooLarge(s.to_string()))?;
    u64::try_from(bytes).map_err(|_| QuantityError::TooLarge(s.to_string()))
}

/// Formats bytes for display with the largest binary unit, e.g. "32Mi", "1.5Gi", "100".
pub fn format_memory(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    for (i, (unit, shift)) in UNITS.iter().enumerate() {
        let size = 1u64 << shift;
        if bytes >= size {
            if bytes % size == 0 {
                return format!("{}{unit}", bytes >> shift);
            }
            // One decimal, rounded to nearest, the precision `kubectl top` users expect.
            let tenths = (u128::from(bytes) * 10 + u128::from(size) / 2) / u128::from(size);
            if tenths >= 10240 && i > 0 {
                // Rounded up to the next unit: "1Gi" rather than "1024Mi".
                return format!("1{}", UNITS[i - 1].0);
            }
            return if tenths % 10 == 0 {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    bytes.to_string()
}

/// Formats millicores as kubectl does: whole cores as "2", anything else as "1500m".
pub fn format_cpu(millis: u64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_table() {
        let ok: &[(&str, u32)] = &[
            ("500m", 500),
            ("0.5", 500),
            ("2", 2000),
            ("1.5", 1500),
            ("+1", 1000),
            (".25", 250),
            ("1.", 1000),
            ("0", 0),
            ("0m", 0),
            ("100m", 100),
            ("0.0001", 1), // rounds up like Kubernetes
            ("1k", 1_000_000),
            ("1e3", 1_000_000),
            ("1000000", 1_000_000_000),
            (" 250m ", 250),
        ];
        for (input, want) in ok {
            assert_eq!(parse_cpu_millis(input), Ok(*want), "input {input:?}");
        }
        let bad: &[(&str, QuantityError)] = &[
            ("", QuantityError::Empty),
            ("-1", QuantityError::Negative("-1".into())),
            ("-500m", QuantityError::Negative("-500m".into())),
            ("abc", QuantityError::Invalid("abc".into())),
            ("1.2.3", QuantityError::Invalid("1.2.3".into())),
            (".", QuantityError::Invalid(".".into())),
            ("1x", QuantityError::UnknownSuffix("1x".into(), "x".into())),
            (
                "1 m",
                QuantityError::UnknownSuffix("1 m".into(), " m".into()),
            ),
            ("1000001", QuantityError::TooLarge("1000001".into())),
            ("1E", QuantityError::TooLarge("1E".into())),
            ("1e99", QuantityError::TooLarge("1e99".into())),
            (
                "123456789012345678901234",
                QuantityError::TooLarge("123456789012345678901234".into()),
            ),
        ];
        for (input, want) in bad {
            assert_eq!(
                parse_cpu_millis(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn memory_table() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ki", 1024),
            ("32Mi", 32 << 20),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("129e6", 129_000_000),
            ("129E6", 129_000_000),
            ("1.29e8", 129_000_000),
            ("12e-1", 2), // 1.2 bytes rounds up
            ("100m", 1),  // 0.1 byte rounds up, as Kubernetes does
            ("15Ei", 15 << 60),
        ];
        for (input, want) in ok {
            assert_eq!(parse_memory_bytes(input), Ok(*want), "input {input:?}");
        }
        let bad: &[(&str, QuantityError)] = &[
            ("-1Mi", QuantityError::Negative("-1Mi".into())),
            ("16Ei", QuantityError::TooLarge("16Ei".into())),
            ("20E", QuantityError::TooLarge("20E".into())),
            ("1e19", QuantityError::TooLarge("1e19".into())),
            ("Mi", QuantityError::Invalid("Mi".into())),
            (
                "1mi",
                QuantityError::UnknownSuffix("1mi".into(), "mi".into()),
            ),
            (
                "1KB",
                QuantityError::UnknownSuffix("1KB".into(), "KB".into()),
            ),
            (
                "1eX",
                QuantityError::UnknownSuffix("1eX".into(), "eX".into()),
            ),
            (
                "0x10",
                QuantityError::UnknownSuffix("0x10".into(), "x10".into()),
            ),
        ];
        for (input, want) in bad {
            assert_eq!(
                parse_memory_bytes(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn formatting_table() {
        let mem: &[(u64, &str)] = &[
            (0, "0"),
            (1000, "1000"),
            (1024, "1Ki"),
            (32 << 20, "32Mi"),
            (3 << 29, "1.5Gi"),
            (1_000_000_000, "953.7Mi"),
            ((1 << 30) - 1, "1Gi"), // rounds to nearest tenth
            (u64::MAX, "16Ei"),
        ];
        for (bytes, want) in mem {
            assert_eq!(format_memory(*bytes), *want, "bytes {bytes}");
        }
        let cpu: &[(u64, &str)] = &[(0, "0"), (500, "500m"), (1000, "1"), (1500, "1500m")];
        for (millis, want) in cpu {
            assert_eq!(format_cpu(*millis), *want, "millis {millis}");
        }
    }

    #[test]
    fn format_then_parse_round_trips_exact_values() {
        for bytes in [1u64 << 10, 7 << 20, 3 << 29, 5 << 40, 123] {
            assert_eq!(parse_memory_bytes(&format_memory(bytes)), Ok(bytes));
        }
        for millis in [1u32, 250, 1000, 1500, 64_000] {
            assert_eq!(parse_cpu_millis(&format_cpu(u64::from(millis))), Ok(millis));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = parse_cpu_millis(&s);
            let _ = parse_memory_bytes(&s);
        }

        #[test]
        fn plain_integers_are_bytes(n in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(parse_memory_bytes(&n.to_string()), Ok(n));
        }

        #[test]
        fn exact_multiples_round_trip(n in 1u64..1024, shift in proptest::sample::select(vec![0u32, 10, 20, 30, 40, 50])) {
            let bytes = n << shift;
            proptest::prop_assert_eq!(parse_memory_bytes(&format_memory(bytes)), Ok(bytes));
        }

        /// One decimal of a unit of at least one is within 5% of the truth.
        #[test]
        fn display_is_close(bytes in 1u64..u64::MAX / 2) {
            let shown = parse_memory_bytes(&format_memory(bytes)).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let diff = shown.abs_diff(bytes);
            proptest::prop_assert!(diff <= bytes / 20, "{} shown as {}", bytes, format_memory(bytes));
        }
    }
}

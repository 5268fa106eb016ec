//! Kubernetes quantities (`512Mi`, `2G`, `1.5Gi`, `1e9`) as a number of bytes. Written here because
//! k8s-openapi keeps a `Quantity` as its string and kube parses quantities only inside CEL, privately.

/// The value of a quantity, or `None` when it is not one.
pub fn parse_bytes(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    (number >= 0.0).then_some(number * multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn parses_binary_decimal_and_exponent_suffixes() {
        assert_eq!(parse_bytes("512Mi"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_bytes("1.5Gi"), Some(1.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_bytes("2G"), Some(2e9));
        assert_eq!(parse_bytes("1e9"), Some(1e9));
        assert_eq!(parse_bytes("1024"), Some(1024.0));
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5Gb"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("-1Gi"), None);
    }
}

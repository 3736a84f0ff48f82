//! Fixed-size hex decoding (trace ids, SHA-256 digests in the config).

/// `N` bytes from exactly `2 * N` hex digits (either case).
pub fn decode<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi << 4 | lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_exact_lengths_only() {
        assert_eq!(super::decode::<2>(b"0aFF"), Some([0x0a, 0xff]));
        assert_eq!(super::decode::<2>(b"0ag0"), None);
        assert_eq!(super::decode::<2>(b"0a"), None);
    }
}

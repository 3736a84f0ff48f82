//! Hex: fixed-size decoding (trace ids, SHA-256 digests in the config) and
//! lowercase encoding (body digests of signed requests).

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

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    encode_into(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Lowercase hex of `bytes` into `out`, two digits a byte (as many bytes
/// as `out` has room for).
pub fn encode_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

/// The two digits of every byte: one load a byte instead of two (request
/// ids and trace ids are 56 bytes of hex a request).
static PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0xf]];
        b += 1;
    }
    pairs
};

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_exact_lengths_only() {
        assert_eq!(super::decode::<2>(b"0aFF"), Some([0x0a, 0xff]));
        assert_eq!(super::decode::<2>(b"0ag0"), None);
        assert_eq!(super::decode::<2>(b"0a"), None);
    }

    #[test]
    fn encodes_lowercase() {
        assert_eq!(super::encode(&[0x0a, 0xff, 0x10]), "0aff10");
        let every: Vec<u8> = (0..=255).collect();
        let expected: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&every), expected);
    }
}

//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only.
//!
//! The code is canonical (codes of one length are consecutive, in symbol order, and each
//! length continues from the previous one), so the 257 code lengths are the whole table;
//! the decoder tables are derived from them at compile time, and the RFC's test vectors
//! (Appendix C.4, C.6) check the derivation.

/// Code length in bits of each symbol (0..=255, and 256 = EOS), RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const MAX_LEN: usize = 30;

/// Per code length: the first code of that length, how many codes have it, and where its
/// symbols start in [`SYMBOLS`].
struct Tables {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u32; MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn build() -> Tables {
    let mut t =
        Tables { first: [0; MAX_LEN + 1], count: [0; MAX_LEN + 1], offset: [0; MAX_LEN + 1], symbols: [0; 257] };
    let mut s = 0;
    while s < 257 {
        t.count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let (mut code, mut at, mut len) = (0u32, 0u32, 1);
    while len <= MAX_LEN {
        code <<= 1;
        t.first[len] = code;
        t.offset[len] = at;
        code += t.count[len];
        at += t.count[len];
        len += 1;
    }
    // Symbols in (length, symbol) order: the canonical assignment order.
    let mut filled = [0u32; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        let l = LENGTHS[s] as usize;
        t.symbols[(t.offset[l] + filled[l]) as usize] = s as u16;
        filled[l] += 1;
        s += 1;
    }
    t
}

static TABLES: Tables = build();

/// Why a Huffman string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol inside the string (RFC 7541 §5.2: a decoding error).
    Eos,
    /// Padding longer than 7 bits, or not the most significant bits of EOS (all ones).
    Padding,
    /// The decoded string would pass the caller's bound.
    TooLong,
}

/// Appends the decoding of `input` to `out`; at most `max_out` bytes are appended. Linear
/// in the input: each bit is looked at once.
pub fn decode(input: &[u8], out: &mut Vec<u8>, max_out: usize) -> Result<(), HuffmanError> {
    let t = &TABLES;
    let (mut code, mut len, mut written) = (0u32, 0usize, 0usize);
    // Bits since the last symbol, all ones so far (a valid padding prefix).
    let mut ones = true;
    for &byte in input {
        for shift in (0..8).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code = (code << 1) | bit;
            len += 1;
            ones &= bit == 1;
            if len > MAX_LEN {
                // Only EOS is 30 bits long and it was refused below; nothing is longer.
                return Err(HuffmanError::Eos);
            }
            let rel = code.wrapping_sub(t.first[len]);
            if code >= t.first[len] && rel < t.count[len] {
                let sym = t.symbols[(t.offset[len] + rel) as usize];
                if sym == 256 {
                    return Err(HuffmanError::Eos);
                }
                if written == max_out {
                    return Err(HuffmanError::TooLong);
                }
                out.push(sym as u8);
                written += 1;
                (code, len, ones) = (0, 0, true);
            }
        }
    }
    if len > 7 || !ones {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn dec(s: &str) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(&hex(s), &mut out, 1 << 16).map(|()| out)
    }

    #[test]
    fn rfc7541_appendix_c_strings() {
        // C.4.1 – C.4.3 and C.6.1 – C.6.3.
        assert_eq!(dec("f1e3 c2e5 f23a 6ba0 ab90 f4ff").unwrap(), b"www.example.com");
        assert_eq!(dec("a8eb 1064 9cbf").unwrap(), b"no-cache");
        assert_eq!(dec("25a8 49e9 5ba9 7d7f").unwrap(), b"custom-key");
        assert_eq!(dec("25a8 49e9 5bb8 e8b4 bf").unwrap(), b"custom-value");
        assert_eq!(dec("6402").unwrap(), b"302");
        assert_eq!(dec("aec3 771a 4b").unwrap(), b"private");
        assert_eq!(
            dec("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff").unwrap(),
            b"Mon, 21 Oct 2013 20:13:21 GMT"
        );
        assert_eq!(dec("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3").unwrap(), b"https://www.example.com");
        assert_eq!(
            dec("94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07").unwrap(),
            b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1".as_slice()
        );
    }

    #[test]
    fn every_symbol_round_trips_and_bad_padding_is_refused() {
        // Encode each byte with the canonical codes, then decode.
        let mut codes = [0u32; 257];
        for len in 1..=MAX_LEN {
            for i in 0..TABLES.count[len] {
                codes[TABLES.symbols[(TABLES.offset[len] + i) as usize] as usize] = TABLES.first[len] + i;
            }
        }
        let mut bits: Vec<u8> = Vec::new();
        for s in 0..256usize {
            for b in (0..LENGTHS[s]).rev() {
                bits.push(((codes[s] >> b) & 1) as u8);
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(1);
        }
        let bytes: Vec<u8> = bits.chunks(8).map(|c| c.iter().fold(0, |a, &b| (a << 1) | b)).collect();
        let mut out = Vec::new();
        decode(&bytes, &mut out, 1 << 16).unwrap();
        assert_eq!(out, (0..=255u8).collect::<Vec<_>>());
        // EOS itself (30 ones), padding of 8+ bits, padding with a zero bit, a bound.
        assert_eq!(dec("ffff fffc"), Err(HuffmanError::Eos));
        assert_eq!(dec("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff"), Err(HuffmanError::Padding));
        assert_eq!(dec("f1e3 c2e5 f23a 6ba0 ab90 f4fe"), Err(HuffmanError::Padding));
        assert_eq!(decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), &mut Vec::new(), 3), Err(HuffmanError::TooLong));
    }
}

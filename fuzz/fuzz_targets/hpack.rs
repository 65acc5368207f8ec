//! The HPACK decoder alone, over a sequence of header blocks sharing one dynamic table:
//! byte 0 picks a decoder that saw the connection start or one that joined mid-flight;
//! then each block is a length byte and that many bytes. Invariants: no panic, decoded
//! fields are bounded by the string cap, and a decoder that joined never reports a
//! field for an index it could not know (it counts it as skipped instead).
#![no_main]

use hoptrace::protocols::http2::hpack::{Decoder, MAX_STRING};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let mut d = if mode & 1 == 0 { Decoder::new() } else { Decoder::joined() };
    while let Some((&len, after)) = rest.split_first() {
        let n = (len as usize).min(after.len());
        let (block, next) = after.split_at(n);
        rest = next;
        let mut fields = 0usize;
        let result = d.decode(block, |name, value| {
            assert!(name.len() <= MAX_STRING && value.len() <= MAX_STRING);
            fields += 1;
        });
        if let Ok(skipped) = result {
            assert!(fields + skipped as usize <= block.len(), "more fields than bytes");
        } else {
            // After an error the table is not trusted, as the parser does.
            d.forget();
        }
    }
});

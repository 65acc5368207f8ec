//! Check digits of the Brazilian documents (CPF, CNPJ) and of card numbers (Luhn): what
//! tells a document number from any other run of digits.

/// CPF check digits (mod 11) for the first nine digits (each 0–9).
pub fn cpf_check_digits(d: &[u8; 9]) -> [u8; 2] {
    let dv = |ds: &[u8]| {
        let w = ds.len() as u32 + 1;
        let s: u32 = ds.iter().enumerate().map(|(i, &x)| x as u32 * (w - i as u32)).sum();
        ((s * 10) % 11 % 10) as u8
    };
    let d1 = dv(d);
    let mut ten = [0u8; 10];
    ten[..9].copy_from_slice(d);
    ten[9] = d1;
    [d1, dv(&ten)]
}

/// 11 digits (each 0–9) with valid CPF check digits, not all the same digit.
pub fn cpf_valid(d: &[u8]) -> bool {
    d.len() == 11 && d.iter().any(|&x| x != d[0]) && cpf_check_digits(d[..9].try_into().unwrap()) == [d[9], d[10]]
}

/// CNPJ check digits (mod 11, weights 2–9 cycling) for the first twelve digits.
pub fn cnpj_check_digits(d: &[u8; 12]) -> [u8; 2] {
    let dv = |ds: &[u8]| {
        let s: u32 = ds.iter().rev().enumerate().map(|(i, &x)| x as u32 * (2 + (i as u32 % 8))).sum();
        let r = s % 11;
        if r < 2 {
            0
        } else {
            (11 - r) as u8
        }
    };
    let d1 = dv(d);
    let mut thirteen = [0u8; 13];
    thirteen[..12].copy_from_slice(d);
    thirteen[12] = d1;
    [d1, dv(&thirteen)]
}

/// 14 digits (each 0–9) with valid CNPJ check digits, not all the same digit.
pub fn cnpj_valid(d: &[u8]) -> bool {
    d.len() == 14 && d.iter().any(|&x| x != d[0]) && cnpj_check_digits(d[..12].try_into().unwrap()) == [d[12], d[13]]
}

/// Luhn checksum over digits (each 0–9).
pub fn luhn_valid(d: &[u8]) -> bool {
    let s: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = x as u32;
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    !d.is_empty() && s.is_multiple_of(10)
}

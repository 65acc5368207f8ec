use super::*;

// ---- independent check-digit implementations, to generate valid documents ----

fn cpf_dv(d: &[u32]) -> u32 {
    // Classic: sum of digit * weight (weights n+1 down to 2), remainder of 11,
    // < 2 → 0 else 11 - remainder.
    let n = d.len() as u32;
    let s: u32 = d.iter().enumerate().map(|(i, x)| x * (n + 1 - i as u32)).sum();
    let r = s % 11;
    if r < 2 {
        0
    } else {
        11 - r
    }
}

fn make_cpf(seed: u64) -> String {
    let mut d: Vec<u32> = (0..9).map(|i| ((seed >> (i * 4)) % 10) as u32).collect();
    if d.iter().all(|&x| x == d[0]) {
        d[0] = (d[0] + 1) % 10;
    }
    let a = cpf_dv(&d);
    d.push(a);
    let b = cpf_dv(&d);
    d.push(b);
    d.iter().map(|x| char::from(b'0' + *x as u8)).collect()
}

fn cnpj_dv(d: &[u32]) -> u32 {
    let w: &[u32] =
        if d.len() == 12 { &[5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2] } else { &[6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2] };
    let s: u32 = d.iter().zip(w).map(|(x, w)| x * w).sum();
    let r = s % 11;
    if r < 2 {
        0
    } else {
        11 - r
    }
}

fn make_cnpj(seed: u64) -> String {
    let mut d: Vec<u32> = (0..8).map(|i| ((seed >> (i * 5)) % 10) as u32).collect();
    d.extend([0, 0, 0, 1 + (seed % 9) as u32]);
    let a = cnpj_dv(&d);
    d.push(a);
    let b = cnpj_dv(&d);
    d.push(b);
    d.iter().map(|x| char::from(b'0' + *x as u8)).collect()
}

fn fmt_cpf(p: &str) -> String {
    format!("{}.{}.{}-{}", &p[0..3], &p[3..6], &p[6..9], &p[9..11])
}

fn fmt_cnpj(p: &str) -> String {
    format!("{}.{}.{}/{}-{}", &p[0..2], &p[2..5], &p[5..8], &p[8..12], &p[12..14])
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|c| c - b'0').collect()
}

/// Flip the last check digit to make the document invalid.
fn break_last(p: &str) -> String {
    let mut v: Vec<u8> = p.bytes().collect();
    let n = v.len() - 1;
    v[n] = b'0' + (v[n] - b'0' + 1) % 10;
    String::from_utf8(v).unwrap()
}

fn matched<'a>(s: &'a str, rs: &[Range<usize>]) -> Vec<&'a str> {
    rs.iter().map(|r| &s[r.clone()]).collect()
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

// ---- check digits ----

#[test]
fn check_digit_functions_agree_with_independent_ones() {
    for seed in 0..500u64 {
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let cpf = make_cpf(s);
        assert!(cpf_valid(&digits(&cpf)), "{cpf}");
        assert!(!cpf_valid(&digits(&break_last(&cpf))), "{cpf}");
        let cnpj = make_cnpj(s);
        assert!(cnpj_valid(&digits(&cnpj)), "{cnpj}");
        assert!(!cnpj_valid(&digits(&break_last(&cnpj))), "{cnpj}");
    }
    assert!(cpf_valid(&digits("123.456.789-09")));
    assert!(cnpj_valid(&digits("12.345.678/0001-95")));
    assert!(!cpf_valid(&digits("111.111.111-11")));
    assert!(!cnpj_valid(&digits("11.111.111/1111-11")));
    assert!(luhn_valid(&digits("4111111111111111")));
    assert!(!luhn_valid(&digits("4111111111111112")));
}

// ---- detectors, valid and invalid ----

#[test]
fn cpf_detector() {
    let s = "a 123.456.789-09 b 12345678909 c";
    assert_eq!(matched(s, &find_cpfs(s)), ["123.456.789-09", "12345678909"]);
    for bad in ["123.456.789-08", "12345678908", "111.111.111-11", "11111111111", "00000000000", "123456789091"] {
        assert!(find_cpfs(bad).is_empty(), "{bad}");
    }
    // Mixed formatting is not a CPF layout.
    assert!(find_cpfs("123.456789-09").is_empty());
}

#[test]
fn cnpj_detector() {
    let s = "x=12.345.678/0001-95&y=12345678000195";
    assert_eq!(matched(s, &find_cnpjs(s)), ["12.345.678/0001-95", "12345678000195"]);
    for bad in ["12.345.678/0001-96", "12345678000194", "11.111.111/1111-11", "00000000000000"] {
        assert!(find_cnpjs(bad).is_empty(), "{bad}");
    }
}

#[test]
fn card_detector() {
    let s = "4111 1111 1111 1111; 5500-0000-0000-0004; 378282246310005; 3782 822463 10005; 4111111111111111";
    assert_eq!(
        matched(s, &find_card_numbers(s)),
        ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "3782 822463 10005", "4111111111111111"]
    );
    for bad in ["4111 1111 1111 1112", "4111111111111112", "1234567812345678", "411 1111 1111 1111 1", "411111111111"] {
        assert!(find_card_numbers(bad).is_empty(), "{bad}");
    }
    // A card followed by more digits in another group is still found.
    let s = "4111 1111 1111 1111 2024";
    assert_eq!(matched(s, &find_card_numbers(s)), ["4111 1111 1111 1111"]);
}

#[test]
fn phone_detector() {
    for p in [
        "+55 11 91234-5678",
        "+5511912345678",
        "(11) 91234-5678",
        "(11)91234-5678",
        "11912345678",
        "11 91234-5678",
        "11 3234-5678",
        "+55 (21) 3234.5678",
        "+14155552671",
        "+44 20 7946 0958",
    ] {
        let s = format!("tel: {p}.");
        assert_eq!(matched(&s, &find_phones(&s)), [p], "{p}");
    }
    for bad in ["(01) 91234-5678", "11 1234-5678", "+123", "+1234567890123456", "1234-5678", "x11912345678"] {
        assert!(find_phones(bad).is_empty(), "{bad}");
    }
}

#[test]
fn email_detector() {
    let s = "from john.doe+tag@example.com.br, to a_b@sub.mail.org; path /u/maria%40empresa.com.br/x";
    assert_eq!(
        matched(s, &find_emails(s)),
        ["john.doe+tag@example.com.br", "a_b@sub.mail.org", "maria%40empresa.com.br"]
    );
    for bad in ["user@localhost", "@example.com", "a@b", "a@.com", "a@b.c", "x @ y.com", "foo@bar.c0m"] {
        assert!(find_emails(bad).is_empty(), "{bad}");
    }
}

#[test]
fn uuid_hex_base64_detectors() {
    let s = "id=550e8400-e29b-41d4-a716-446655440000,X";
    assert_eq!(matched(s, &find_uuids(s)), ["550e8400-e29b-41d4-a716-446655440000"]);
    for bad in [
        "550e8400-e29b-41d4-a716-44665544000",
        "550e8400e29b41d4a716446655440000",
        "550e8400-e29b-41d4-a716-44665544000g",
    ] {
        assert!(find_uuids(bad).is_empty(), "{bad}");
    }
    let s = "sha=da39a3ee5e6b4b0d3255bfef95601890afd80709 short=deadbeef1234";
    assert_eq!(matched(s, &find_hex_tokens(s)), ["da39a3ee5e6b4b0d3255bfef95601890afd80709"]);
    assert!(find_hex_tokens("12345678901234567890").is_empty(), "digits only is a number");
    let s = "k=dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEy== next";
    assert_eq!(matched(s, &find_base64_tokens(s)), ["dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEy=="]);
    for bad in [
        "internationalization",
        "customer-orders-history",
        "12345678901234567890123",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "abc123",
    ] {
        assert!(find_base64_tokens(bad).is_empty(), "{bad}");
    }
}

#[test]
fn jwt_and_bearer_detectors() {
    let s = format!("token={JWT}&x=1");
    assert_eq!(matched(&s, &find_jwts(&s)), [JWT]);
    assert!(find_jwts("eyJhbGciOiJIUzI1NiJ9").is_empty(), "one part only");
    assert!(find_jwts("abc.def.ghi").is_empty());
    assert!(find_jwts("xeyJa.b.c").is_empty());
    let s = "Authorization: Bearer abc.def-123 next";
    assert_eq!(matched(s, &find_bearer_tokens(s)), ["Bearer abc.def-123"]);
    let s = "bEaReR\tXYZ";
    assert_eq!(matched(s, &find_bearer_tokens(s)), ["bEaReR\tXYZ"]);
    for bad in ["Bearer", "Bearer ", "Bearerabc", "forbearer x"] {
        assert!(find_bearer_tokens(bad).is_empty(), "{bad}");
    }
}

#[test]
fn number_detector() {
    let s = "a 123 b 1234 c 98765432";
    assert_eq!(matched(s, &find_numbers(s)), ["1234", "98765432"]);
}

#[test]
fn detector_names_are_stable() {
    let names: Vec<&str> = Detector::ALL.iter().map(Detector::name).collect();
    assert_eq!(
        names,
        [
            "email",
            "cpf",
            "cnpj",
            "card_number",
            "phone",
            "uuid",
            "hex_token",
            "base64_token",
            "jwt",
            "bearer_token",
            "number"
        ]
    );
    assert_eq!(Detector::Custom(3).name(), "custom");
}

// ---- the redactor ----

fn corpus() -> Vec<(String, Detector)> {
    let mut c = Vec::new();
    for seed in [1u64, 7, 42, 1234567, 987654321, 0xDEAD_BEEF] {
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let cpf = make_cpf(s);
        c.push((fmt_cpf(&cpf), Detector::Cpf));
        c.push((cpf, Detector::Cpf));
        let cnpj = make_cnpj(s);
        c.push((fmt_cnpj(&cnpj), Detector::Cnpj));
        c.push((cnpj, Detector::Cnpj));
    }
    for (v, d) in [
        ("123.456.789-09", Detector::Cpf),
        ("12.345.678/0001-95", Detector::Cnpj),
        ("4111 1111 1111 1111", Detector::CardNumber),
        ("5500-0000-0000-0004", Detector::CardNumber),
        ("378282246310005", Detector::CardNumber),
        ("6011111111111117", Detector::CardNumber),
        ("maria.silva@empresa.com.br", Detector::Email),
        ("joao+teste@gmail.com", Detector::Email),
        ("+55 11 91234-5678", Detector::Phone),
        ("(11) 91234-5678", Detector::Phone),
        ("11912345678", Detector::Phone),
        ("+14155552671", Detector::Phone),
        (JWT, Detector::Jwt),
        ("Bearer s3cr3t-T0ken_value", Detector::BearerToken),
        ("550e8400-e29b-41d4-a716-446655440000", Detector::Uuid),
        ("6F9619FF-8B86-D011-B42D-00C04FC964FF", Detector::Uuid),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", Detector::HexToken),
        ("dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEy", Detector::Base64Token),
        ("8675309123", Detector::Phone),
        ("98765", Detector::Number),
    ] {
        c.push((v.to_string(), d));
    }
    c
}

#[test]
fn pii_corpus_is_redacted_with_the_right_kind() {
    let r = Redactor::default();
    for (v, d) in corpus() {
        let out = r.redact_value(&format!("before {v} after"));
        assert_eq!(out.text, format!("before {{{}}} after", d.name()), "{v}");
        assert_eq!(out.hits, vec![(d, 1)], "{v}");
    }
}

#[test]
fn whole_corpus_in_one_value_leaves_nothing_behind() {
    let r = Redactor::default();
    let corpus = corpus();
    let joined = corpus.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(" | ");
    let out = r.redact_value(&joined);
    for (v, d) in &corpus {
        assert!(!out.text.contains(v.as_str()), "{v} survived in {}", out.text);
        assert!(out.count(*d) >= 1, "{d:?}");
    }
    let total: usize = out.hits.iter().map(|(_, n)| n).sum();
    assert_eq!(total, corpus.len(), "{:?}", out);
}

#[test]
fn invalid_documents_are_not_reported_as_documents() {
    let r = Redactor::default();
    for bad in [
        break_last("12345678909"),
        break_last("123.456.789-09"),
        "111.111.111-11".to_string(),
        "11111111111".to_string(),
        break_last(&make_cnpj(99)),
        break_last(&fmt_cnpj(&make_cnpj(99))),
        "4111 1111 1111 1112".to_string(),
        "4111111111111112".to_string(),
        "5500-0000-0000-0005".to_string(),
    ] {
        let out = r.redact_value(&bad);
        for d in [Detector::Cpf, Detector::Cnpj, Detector::CardNumber] {
            assert_eq!(out.count(d), 0, "{bad} reported as {d:?}: {out:?}");
        }
    }
    // Plain digits still go as numbers.
    let out = r.redact_value("4111111111111112");
    assert_eq!(out.hits, vec![(Detector::Number, 1)]);
    assert_eq!(out.text, "{number}");
}

#[test]
fn plain_words_are_untouched() {
    let r = Redactor::default();
    for w in [
        "orders",
        "v2",
        "api",
        "customer-orders",
        "/api/v2/orders",
        "GET",
        "application/json",
        "curl/8.5.0",
        "2.0",
        "Mozilla/5.0 (X11; Linux x86_64)",
    ] {
        let out = r.redact_value(w);
        assert_eq!(out.text, w);
        assert!(out.hits.is_empty(), "{w}: {out:?}");
    }
}

#[test]
fn overlaps_most_specific_wins() {
    let r = Redactor::default();
    // The JWT inside a bearer header is one bearer token.
    let out = r.redact_value(&format!("Bearer {JWT}"));
    assert_eq!(out.text, "{bearer_token}");
    // A JWT alone is a JWT, not three base64 tokens.
    let out = r.redact_value(JWT);
    assert_eq!(out.hits, vec![(Detector::Jwt, 1)]);
    // A CPF is not a phone nor a number; a card is not a number.
    assert_eq!(r.redact_value("12345678909").hits, vec![(Detector::Cpf, 1)]);
    assert_eq!(r.redact_value("4111111111111111").hits, vec![(Detector::CardNumber, 1)]);
    // An email with digits is an email.
    assert_eq!(r.redact_value("user12345678@x.com").text, "{email}");
    // Counts per detector.
    let out = r.redact_value("a@b.com c@d.org 1234 5678");
    assert_eq!(out.hits, vec![(Detector::Email, 2), (Detector::Number, 2)]);
}

#[test]
fn disabled_detectors_are_skipped() {
    let r = Redactor::default().without(Detector::Number);
    assert_eq!(r.redact_value("order 12345").text, "order 12345");
    let r = Redactor::new(&[Detector::Email]);
    assert!(r.is_enabled(Detector::Email) && !r.is_enabled(Detector::Cpf));
    assert_eq!(r.redact_value("a@b.com 123.456.789-09").text, "{email} 123.456.789-09");
    assert_eq!(r.redact_value("a@b.com").hits, vec![(Detector::Email, 1)]);
    let r = Redactor::new(&[]).with(Detector::Cpf);
    assert_eq!(r.redact_value("12345678909").text, "{cpf}");
}

#[test]
fn path_segments() {
    let r = Redactor::default();
    for (seg, want) in [
        ("orders", None),
        ("v2", None),
        ("api", None),
        ("customer-orders", None),
        ("12345", Some("id")),
        ("550e8400-e29b-41d4-a716-446655440000", Some("id")),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", Some("id")),
        ("dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEy", Some("id")),
        ("maria%40empresa.com.br", Some("email")),
        ("maria@empresa.com.br", Some("email")),
        ("12345678909", Some("cpf")),
        ("123.456.789-09", Some("cpf")),
        ("12.345.678000195", Some("id")),
        ("12345678000195", Some("cnpj")),
        ("4111111111111111", Some("card_number")),
        ("+5511912345678", Some("phone")),
        ("user-12345678909", Some("cpf")),
        ("order-1234", Some("id")),
    ] {
        assert_eq!(r.redact_path_segment(seg), want, "{seg}");
    }
}

// ---- property-style: random strings with planted PII ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_strings_never_panic_and_never_leak_planted_pii() {
    let r = Redactor::default();
    let corpus = corpus();
    let alphabet: Vec<char> = "abcXYZ0123456789 .-_/@+=%()?&:,;\t{}eyJBearer\u{e9}\u{1F600}".chars().collect();
    let delims = [" ", "/", "=", ",", ";", "?", "&", ": ", "\t", "(", ")", "\"", "'", "<", ">", "|"];
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..3000 {
        let mut s = String::new();
        let mut planted = Vec::new();
        for _ in 0..rng.below(6) + 1 {
            // Random noise...
            for _ in 0..rng.below(12) {
                s.push(alphabet[rng.below(alphabet.len())]);
            }
            // ...then maybe a delimited piece of PII.
            if rng.below(3) > 0 {
                let (v, _) = &corpus[rng.below(corpus.len())];
                s.push_str(delims[rng.below(delims.len())]);
                s.push_str(v);
                s.push_str(delims[rng.below(delims.len())]);
                planted.push(v.clone());
            }
        }
        let out = r.redact_value(&s);
        for v in &planted {
            assert!(!out.text.contains(v.as_str()), "{v:?} survived in {:?} (from {s:?})", out.text);
        }
        let _ = r.redact_path_segment(&s);
    }
    // Pure noise, including non-ASCII, never panics.
    for _ in 0..3000 {
        let s: String = (0..rng.below(64)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        let out = r.redact_value(&s);
        let _ = out.text.len();
        let _ = r.redact_path_segment(&s);
    }
}

#[test]
fn configured_patterns_are_redacted_first() {
    let r = Redactor::default().with_patterns(&["ACME-[0-9]{6}".to_string()]).unwrap();
    let out = r.redact_value("order ACME-123456 for joao@example.com");
    assert_eq!(out.text, "order {custom} for {email}");
    assert_eq!(out.count(Detector::Custom(0)), 1);
    assert_eq!(r.redact_path_segment("ACME-654321"), Some("custom"));
    assert!(Redactor::default().with_patterns(&["(".to_string()]).is_err());
}

// ---- linear in the input, bounded per value (issue 15) ----

/// Shapes that made a detector superlinear, or could: digit groups (card numbers),
/// `%40` chains (emails), `bearer/` chains (bearer tokens), and mixtures that start
/// every detector's look ahead at every position.
fn hostile(unit: &str, size: usize) -> String {
    unit.repeat(size / unit.len() + 1)[..size].to_string()
}

const HOSTILE_UNITS: [&str; 12] =
    ["1-", "1 ", "4111 ", "4111-", "a%40", "%40", "bearer/", "eyJ-", "eyJa.", "+1 ", "ab1+55(11)9.12@x-", ".a@b."];

#[test]
fn every_detector_is_linear_on_hostile_inputs() {
    let r = Redactor::default();
    for unit in HOSTILE_UNITS {
        let _ = detect::steps();
        r.redact_value_uncapped(&hostile(unit, 16 * 1024));
        let small = detect::steps();
        r.redact_value_uncapped(&hostile(unit, 64 * 1024));
        let large = detect::steps();
        // Linear: four times the input, about four times the work (quadratic would be 16).
        assert!(large <= 5 * small, "{unit:?}: 16 KiB took {small} steps, 64 KiB {large}");
        // And a small constant per byte: every detector looks at a byte a bounded number of times.
        assert!(large <= 200 * 64 * 1024, "{unit:?}: {large} steps for 64 KiB");
    }
}

#[test]
fn card_numbers_in_long_digit_group_runs_are_found() {
    // The window of five groups still finds a card anywhere in a long run.
    let s = format!("{}4111 1111 1111 1111", "1-".repeat(5000));
    let found = matched(&s, &find_card_numbers(&s));
    assert_eq!(found, ["4111 1111 1111 1111"]);
    let s = format!("{} 4111-1111-1111-1111 {}", "1-".repeat(5000), "1-".repeat(5000));
    assert!(matched(&s, &find_card_numbers(&s)).contains(&"4111-1111-1111-1111"));
}

#[test]
fn emails_after_percent_encoded_chains_are_found() {
    let s = format!("{}maria@example.com", "a%40".repeat(5000));
    let found = find_emails(&s);
    assert_eq!(found.len(), 1);
    assert!(s[found[0].clone()].ends_with("maria@example.com"));
    assert_eq!(
        matched("x ..joao.silva@example.com.", &find_emails("x ..joao.silva@example.com.")),
        ["joao.silva@example.com"]
    );
}

#[test]
fn values_past_their_cap_are_replaced_whole_and_counted() {
    let r = Redactor::default();
    let long = "maria@example.com ".repeat(1000);
    let out = r.redact_field(Field::HeaderValue, &long);
    assert_eq!(out.text, CAPPED);
    assert!(out.capped && out.changed() && out.hits.is_empty());
    assert_eq!(r.capped.get(Field::HeaderValue), 1);
    // At the cap it is still scanned.
    let at_cap = format!("{:<1$}", "maria@example.com", Field::HeaderValue.cap());
    let out = r.redact_field(Field::HeaderValue, &at_cap);
    assert!(!out.capped && out.text.starts_with("{email}"));
    // Clones count into the same counters.
    let clone = r.clone();
    assert_eq!(clone.redact_path_segment(&"1-".repeat(200)), Some("capped"));
    assert_eq!(r.capped.get(Field::PathSegment), 1);
    assert!(r.capped.snapshot().iter().any(|(f, n)| *f == "path_segment" && *n == 1));
    // Nothing is scanned past the cap.
    let _ = detect::steps();
    r.redact_field(Field::Value, &"1-".repeat(64 * 1024));
    assert_eq!(detect::steps(), 0);
}

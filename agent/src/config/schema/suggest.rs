//! Suggestions for what was probably meant.

/// ", did you mean `x`?" for the closest candidate when it is close enough, else "".
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates).map(|c| format!(", did you mean `{c}`?")).unwrap_or_default()
}

/// Close enough: a few edits for the word's length, or a prefix of it (`idle_timeout` for
/// `idle_timeout_s`).
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Long garbage is not a typo, and edit distance is quadratic.
    if word.is_empty() || word.chars().count() > 64 {
        return None;
    }
    let lower = word.to_lowercase();
    let budget = (lower.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|cand| (edit_distance(&lower, &cand.to_lowercase()), cand))
        .filter(|(d, cand)| *d <= budget || (lower.len() >= 4 && cand.to_lowercase().starts_with(&lower)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over characters, a swap of two neighbours counting as one edit (optimal
/// string alignment): `grcp` is one typo away from `grpc`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i-2, i-1 and i (transpositions look two rows back); the last is the result.
    let mut rows = [vec![0; b.len() + 1], vec![0; b.len() + 1], (0..=b.len()).collect::<Vec<_>>()];
    for i in 1..=a.len() {
        rows.rotate_left(1);
        let [prev2, prev, cur] = &mut rows;
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
    }
    rows[2][b.len()]
}

//! One Unicode form (NFC) for the text we store and compare. `é` can be one character or `e`
//! followed by a combining accent (text copied on a Mac, from a PDF or some web exports): the
//! same letter to a person, different bytes to a comparison. Without one form a role `Élève`
//! failed as `unknown role "Élève"; did you mean "Élève"?`, one ExternalId was two, and a name
//! read again from such a file was "updated" to what it already was.
//!
//! Rows are compared and stored in NFC; the result file echoes the cells as they came (it is
//! read again from the file), so nothing a person typed is changed in their file.

use std::borrow::Cow;

use icu_normalizer::ComposingNormalizerBorrowed;

const NFC: ComposingNormalizerBorrowed<'static> = ComposingNormalizerBorrowed::new_nfc();

/// `s` in NFC: borrowed when it already is (all ASCII text is), a copy otherwise. NFC can be
/// longer than its input, at most three times (a character whose composition is excluded);
/// callers bound what they keep after this, as for any cell.
pub fn nfc(s: &str) -> Cow<'_, str> {
    if s.is_ascii() { Cow::Borrowed(s) } else { NFC.normalize(s) }
}

/// Whether `s` is already in NFC (no copy needed).
pub fn is_nfc(s: &str) -> bool {
    s.is_ascii() || NFC.is_normalized(s)
}

/// `s` in NFC, reusing it when it already is.
pub fn nfc_string(s: String) -> String {
    if is_nfc(&s) { s } else { NFC.normalize(&s).into_owned() }
}

/// A row's cells in NFC, or `None` when every cell already is (most rows: no copy).
pub fn cells<S: AsRef<str>>(cells: &[S]) -> Option<Vec<Cow<'_, str>>> {
    if cells.iter().all(|c| is_nfc(c.as_ref())) {
        return None;
    }
    Some(cells.iter().map(|c| nfc(c.as_ref())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECOMPOSED: &str = "E\u{301}le\u{300}ve"; // É and è as letter + combining accent
    const COMPOSED: &str = "\u{c9}l\u{e8}ve";

    #[test]
    fn decomposed_accents_become_the_composed_letters_and_nfc_text_is_borrowed() {
        assert_eq!(nfc(DECOMPOSED), COMPOSED);
        assert!(matches!(nfc(COMPOSED), Cow::Borrowed(_)));
        assert!(matches!(nfc("ann@x.com"), Cow::Borrowed(_)));
        assert_eq!(nfc_string(DECOMPOSED.to_string()), COMPOSED);
        assert!(!is_nfc(DECOMPOSED) && is_nfc(COMPOSED));
        // Hangul jamo compose into syllables; a lone combining mark stays (nothing to compose with).
        assert_eq!(nfc("\u{1100}\u{1161}"), "\u{ac00}");
        assert_eq!(nfc("\u{301}x"), "\u{301}x");
    }

    #[test]
    fn a_row_is_copied_only_when_one_of_its_cells_is_not_nfc() {
        assert!(cells(&["ann@x.com", COMPOSED]).is_none());
        let row = cells(&["ann@x.com", DECOMPOSED]).unwrap();
        assert_eq!(row, vec![Cow::Borrowed("ann@x.com"), Cow::Owned(COMPOSED.to_string())]);
    }

    /// The bound callers rely on: NFC is at most three times its input (U+FB2C, composition
    /// excluded, is three characters in NFC), however a hostile cell repeats it.
    #[test]
    fn nfc_grows_a_cell_at_most_three_times() {
        for s in ["\u{fb2c}".repeat(1000), "\u{1d160}".repeat(1000), "\u{344}".repeat(1000), "a\u{301}\u{301}".repeat(500)] {
            assert!(nfc(&s).len() <= 3 * s.len(), "{} -> {}", s.len(), nfc(&s).len());
        }
    }
}

//! Text that came from outside (a token endpoint, a plugin, a secret name) on its way to a
//! terminal, a log or an API body.
//!
//! Such text may carry terminal escapes (which clear a screen or forge a line), bidi
//! controls (which reorder what a listing shows), zero-width characters, or simply be huge.
//! [`clean`] makes it inert and bounded; [`is_hidden_char`] is the rule for names the store
//! accepts. [`hex`] is how the host writes digests (key ids, fingerprints, cache names).

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `c` is a control character, a bidi or other formatting character (Unicode `Cf`,
/// e.g. U+202E, U+200B, U+FEFF), a line or paragraph separator, or a private-use or
/// unassigned surrogate: anything that does not show as itself.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e000}'..='\u{f8ff}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e007f}')
}

/// `text` with every hidden character written as `\u{..}` and cut to `max` bytes (on a
/// character boundary, with `…` marking the cut): safe to print, log or serve.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let escaped;
        let piece = if is_hidden_char(c) {
            escaped = format!("\\u{{{:x}}}", c as u32);
            escaped.as_str()
        } else {
            c.encode_utf8(&mut buf)
        };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(piece);
    }
    out
}

/// `` `text` `` with hidden characters escaped, for error messages about a name.
pub fn quoted(text: &str) -> String {
    format!("`{}`", clean(text, 300))
}

/// The longest text from a token endpoint or plugin kept in an error, a log line or an API
/// body; an error description longer than this is not information, it is an attack.
pub const MAX_FOREIGN_TEXT: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_bounds() {
        assert_eq!(clean("Bearer", 100), "Bearer");
        assert_eq!(
            clean("x\u{1b}[2J\ny\u{202e}z", 100),
            "x\\u{1b}[2J\\u{a}y\\u{202e}z"
        );
        let long = "é".repeat(100);
        let cut = clean(&long, 11);
        assert!(cut.len() <= 11 + 3 && cut.ends_with('…'), "{cut}");
        assert_eq!(clean("abc", 3), "abc");
        assert_eq!(quoted("a\u{200b}b"), "`a\\u{200b}b`");
    }

    proptest::proptest! {
        #[test]
        fn cleaned_text_has_no_hidden_characters(s in "\\PC*|[\\x00-\\x1f\\u{80}-\\u{9f}\\u{200b}-\\u{206f}a]{0,50}") {
            let c = clean(&s, 64);
            proptest::prop_assert!(!c.chars().any(is_hidden_char));
            proptest::prop_assert!(c.len() <= 64 + '…'.len_utf8());
        }
    }
}

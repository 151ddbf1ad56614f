//! Secret values in every form a reply could echo them back in.
//!
//! A token endpoint, or a proxy or WAF in front of it, may quote the request in an error:
//! the form body (`client_secret=...%7E...`), the `Authorization: Basic` header (base64 of
//! `id:secret`), JSON or HTML escapes. Exact matching would let all of those through, so a
//! [`Redactor`] learns each secret value the run touched in the encodings such an echo
//! uses, and replaces every one of them. Base64 is matched at each of its three alignments,
//! so the secret is found inside a longer encoded string (such as `id:secret`) too.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use std::sync::OnceLock;

/// What replaces a secret.
pub const MASK: &str = "[redacted]";

/// The shortest value worth redacting: shorter ones would mask ordinary text.
const MIN_RAW: usize = 4;
/// The shortest encoded form matched: a few base64 characters occur by chance.
const MIN_ENCODED: usize = 8;

/// Secret values, and their encodings once a text needs redacting.
#[derive(Default)]
pub struct Redactor {
    /// The raw values, in the order learned.
    values: Vec<String>,
    /// Every value's encodings, longest first. Computed on the first [`Redactor::redact`]
    /// after a change, not when a value is learned: most runs never redact anything, and a
    /// value's twenty-odd encodings cost more than the secret read that taught it.
    patterns: OnceLock<Vec<String>>,
}

fn zeroize_all(strings: &mut [String]) {
    use zeroize::Zeroize;
    for s in strings {
        s.zeroize();
    }
}

impl Drop for Redactor {
    fn drop(&mut self) {
        zeroize_all(&mut self.values);
        if let Some(p) = self.patterns.get_mut() {
            zeroize_all(p);
        }
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Pushes the two hex digits of `b` (a table, not `format!`: this runs per byte of every
/// secret a redacting run read).
fn push_hex(out: &mut String, b: u8, upper: bool) {
    let digits = if upper { HEX_UPPER } else { HEX_LOWER };
    out.push(digits[usize::from(b >> 4)] as char);
    out.push(digits[usize::from(b & 0xf)] as char);
}

/// Lowercase hex of every byte.
fn hex(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for b in value.bytes() {
        push_hex(&mut out, b, false);
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent(value: &str, upper: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            push_hex(&mut out, b, upper);
        }
    }
    out
}

/// The base64 characters that depend only on `bytes`, wherever they start in a longer
/// encoded string: one run per alignment.
fn base64_cores(bytes: &[u8], engine: &impl base64::Engine) -> Vec<String> {
    (0..3usize)
        .map(|k| {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(bytes);
            let encoded = engine.encode(&padded);
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + bytes.len())) / 6;
            encoded.get(start..end).unwrap_or_default().to_string()
        })
        .collect()
}

impl Redactor {
    /// Learns `value` (its encodings are derived when first needed).
    pub fn add(&mut self, value: &str) {
        if value.len() < MIN_RAW || self.values.iter().any(|v| v == value) {
            return;
        }
        self.values.push(value.to_string());
        if let Some(mut stale) = self.patterns.take() {
            zeroize_all(&mut stale);
        }
    }

    /// `text` with every learned value, in any of its encodings, replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        // No pattern is shorter than its value or than MIN_ENCODED, so a shorter text (a
        // token type, most often) needs none of them derived.
        let shortest = self.values.iter().map(|v| v.len().min(MIN_ENCODED)).min();
        if shortest.is_none_or(|n| text.len() < n) {
            return text.to_string();
        }
        let mut out = text.to_string();
        for p in self.patterns.get_or_init(|| patterns(&self.values)) {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), MASK);
            }
        }
        out
    }
}

/// Each value and its encodings, longest first, without duplicates.
fn patterns(values: &[String]) -> Vec<String> {
    let mut patterns = Vec::new();
    for value in values {
        let form: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let json = serde_json::to_string(value).unwrap_or_default();
        let json = json.trim_matches('"').to_string();
        let html = value
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;");
        let hex = hex(value);
        let mut encoded = vec![
            form.clone(),
            form.to_ascii_lowercase(),
            percent(value, true),
            percent(value, false),
            json,
            html,
            hex.clone(),
            hex.to_ascii_uppercase(),
        ];
        for source in [value.as_str(), form.as_str()] {
            encoded.extend(base64_cores(source.as_bytes(), &STANDARD_NO_PAD));
            encoded.extend(base64_cores(source.as_bytes(), &URL_SAFE_NO_PAD));
        }
        patterns.push(value.clone());
        for e in encoded {
            if e.len() >= MIN_ENCODED && e != *value {
                patterns.push(e);
            }
        }
    }
    patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    patterns.dedup();
    patterns
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    const SECRET: &str = "Xq8~demo.Secret_not-for+production/0123=";

    #[test]
    fn every_echo_of_a_secret_is_masked() {
        let mut r = Redactor::default();
        r.add(SECRET);
        let form: String = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        let basic = STANDARD.encode(format!("5a6b7c8d-client:{form}"));
        let basic_raw = STANDARD.encode(format!("app:{SECRET}"));
        let echoes = [
            SECRET.to_string(),
            format!("grant_type=client_credentials&client_secret={form}&scope=x"),
            format!("client_secret={}", form.to_ascii_lowercase()),
            format!("{{\"body\":{}}}", serde_json::to_string(SECRET).unwrap()),
            format!("Authorization: Basic {basic}"),
            format!("Basic {basic_raw}"),
            format!("Basic {}", URL_SAFE_NO_PAD.encode(format!("x:{SECRET}"))),
            percent(SECRET, true),
            percent(SECRET, false),
            format!("<p>{}</p>", SECRET.replace('&', "&amp;")),
            SECRET.bytes().map(|b| format!("{b:02x}")).collect(),
            SECRET.bytes().map(|b| format!("{b:02X}")).collect(),
        ];
        for echo in echoes {
            let out = r.redact(&echo);
            assert!(out.contains(MASK), "{echo} -> {out}");
            assert!(!out.contains(SECRET) && !out.contains(&form), "{out}");
        }
        assert_eq!(r.redact("nothing to see"), "nothing to see");
        // Texts shorter than any pattern are returned without deriving the patterns.
        assert_eq!(r.redact("Bearer"), "Bearer");
        assert!(r.patterns.get().is_some());
        let mut fresh = Redactor::default();
        fresh.add(SECRET);
        assert_eq!(fresh.redact("Bearer"), "Bearer");
        assert!(fresh.patterns.get().is_none());
        // A short secret is still found in a text as short as itself.
        let mut short = Redactor::default();
        short.add("abcd");
        assert_eq!(short.redact("abcd"), MASK);
    }

    proptest::proptest! {
        /// A secret base64-encoded after any prefix is found.
        #[test]
        fn base64_at_any_alignment(secret in "[ -~]{8,40}", prefix in "[ -~]{0,5}") {
            let mut r = Redactor::default();
            r.add(&secret);
            let encoded = STANDARD.encode(format!("{prefix}{secret}"));
            proptest::prop_assert!(r.redact(&encoded).contains(MASK), "{}", encoded);
        }
    }
}

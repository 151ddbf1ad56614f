//! RFC 7523 client assertions: the JWS header and claims the component builds for
//! `private_key_jwt`. The host signs them (`signing` in `wit/refresh.wit`): the component
//! never holds the key. Written by hand rather than with a JWT crate: only encoding is
//! needed, and the component has a 150 KB budget.

use crate::oauth::{Endpoint, Error, base64url};
use tokenwarden_contract::{SigningAlg, assertion};

/// A certificate's thumbprints, base64url: SHA-256 for `x5t#S256`, SHA-1 for `x5t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbprints {
    /// base64url(SHA-256(DER)).
    pub sha256: String,
    /// base64url(SHA-1(DER)).
    pub sha1: String,
}

/// What an assertion says and how its key is named.
pub struct Claims<'a> {
    /// `iss` and `sub`: the client id.
    pub client_id: &'a str,
    /// `aud`: the token endpoint.
    pub endpoint: &'a Endpoint,
    /// The algorithm the host signs with.
    pub alg: SigningAlg,
    /// The bound certificate's thumbprints, when one is bound.
    pub thumbprints: Option<&'a Thumbprints>,
    /// `kid`, when configured.
    pub key_id: Option<&'a str>,
    /// Unix seconds now: `iat` and `nbf`; `exp` is [`assertion::LIFETIME_SECS`] later.
    pub now: u64,
    /// 16 random bytes for `jti`.
    pub nonce: [u8; 16],
}

/// The JWS signing input `base64url(header) "." base64url(claims)` (RFC 7515 §5.1).
///
/// With a certificate, PS256 and ES256 name it by `x5t#S256` and RS256 by the SHA-1 `x5t`
/// older Entra setups expect. Entra identifies the key only by its certificate, so an
/// Entra endpoint without one is refused here rather than by Entra.
pub fn signing_input(c: &Claims<'_>) -> Result<String, Error> {
    if c.endpoint.is_entra() && c.thumbprints.is_none() {
        return Err(Error::BadRequest(
            "Microsoft Entra ID identifies a signing key by its certificate: bind the `certificate` role".into(),
        ));
    }
    let mut header = format!("{{\"alg\":\"{}\",\"typ\":\"JWT\"", c.alg.as_str());
    if let Some(t) = c.thumbprints {
        let (name, value) = match c.alg {
            SigningAlg::RS256 => ("x5t", &t.sha1),
            SigningAlg::PS256 | SigningAlg::ES256 => ("x5t#S256", &t.sha256),
        };
        header.push_str(&format!(",\"{name}\":{}", json_string(value)));
    }
    if let Some(kid) = c.key_id {
        header.push_str(&format!(",\"kid\":{}", json_string(kid)));
    }
    header.push('}');
    let aud = format!("{}{}", c.endpoint.origin(), c.endpoint.path_and_query);
    let id = json_string(c.client_id);
    let claims = format!(
        "{{\"aud\":{},\"iss\":{id},\"sub\":{id},\"jti\":\"{}\",\"iat\":{now},\"nbf\":{now},\"exp\":{}}}",
        json_string(&aud),
        uuid(&c.nonce),
        c.now.saturating_add(assertion::LIFETIME_SECS),
        now = c.now,
    );
    Ok(format!(
        "{}.{}",
        base64url(header.as_bytes()),
        base64url(claims.as_bytes())
    ))
}

/// The compact JWS: the signing input and the signature (RFC 7515 §7.1).
pub fn compact(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", base64url(signature))
}

/// `s` as a JSON string literal (RFC 8259 §7).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                hex(&mut out, c as u8);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 16 random bytes as a version-4 UUID (RFC 9562 §5.4), the form Entra's own clients use
/// for `jti`.
fn uuid(b: &[u8; 16]) -> String {
    let mut b = *b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        hex(&mut out, *byte);
    }
    out
}

/// Appends `byte` as two lower-case hex digits. By hand: `{:02x}` brings in the integer
/// formatting machinery, a kilobyte of the component's budget.
fn hex(out: &mut String, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(DIGITS[usize::from(byte >> 4)] as char);
    out.push(DIGITS[usize::from(byte & 15)] as char);
}

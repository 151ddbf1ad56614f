//! Client assertions (RFC 7523 §3) checked as Microsoft Entra ID checks them: a
//! certificate credential's assertion (`iss` = `sub` = the client id) against the app's
//! registered certificates, found by `x5t#S256` or `x5t`; a federated credential's
//! assertion (any other `iss`) against the app's federated identity records (issuer,
//! subject, audience) and the issuer's key. Refusals carry the AADSTS codes Entra uses
//! where its error table has one, so a client's error handling is exercised offline.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::Value;
use std::collections::HashMap;

/// Clock skew allowed on `nbf` and `exp`, as Entra allows.
pub const SKEW_SECS: u64 = 300;
/// The longest lifetime (`exp` - `nbf`, or - `iat`) accepted for a certificate
/// credential's assertion: MSAL makes ten minutes.
pub const MAX_LIFETIME_SECS: u64 = 600;
/// The audience a federated token must carry for Entra, unless a record says otherwise.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// A federated identity record of an app: whose tokens it accepts.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    /// The app (client id).
    pub client_id: String,
    /// The external issuer (`iss`), e.g. a cluster's OIDC issuer URL.
    pub issuer: String,
    /// The external subject (`sub`), e.g. `system:serviceaccount:ns:name`.
    pub subject: String,
    /// The audience the token must carry, usually [`FEDERATED_AUDIENCE`].
    pub audience: String,
    /// A certificate (DER) holding the issuer's signing key: what Entra would fetch from
    /// the issuer's JWKS.
    pub issuer_certificate: Vec<u8>,
}

/// `jti`s seen, with the Unix second after which each may be forgotten (its assertion
/// can no longer pass the time check).
#[derive(Default)]
pub(super) struct Replay(HashMap<String, u64>);

impl Replay {
    /// Records `jti`; `false` when it was seen and is still remembered.
    fn first_use(&mut self, jti: &str, forget_after: u64, now: u64) -> bool {
        if self.0.len() >= 4096 {
            self.0.retain(|_, until| *until >= now);
        }
        match self.0.get(jti) {
            Some(until) if *until >= now => false,
            _ => {
                self.0.insert(jti.to_string(), forget_after);
                true
            }
        }
    }
}

/// What the check needs to know about the request and the app registrations.
pub(super) struct Presented<'a> {
    pub(super) assertion: &'a str,
    pub(super) client_id: &'a str,
    pub(super) tenant: &'a str,
    /// The `Host` the request was sent to: the token endpoint's authority.
    pub(super) host: &'a str,
    pub(super) now: u64,
}

/// Why an assertion was refused, as Entra would say it.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) error: &'static str,
    /// The AADSTS number.
    pub(super) code: u32,
    pub(super) message: String,
}

fn invalid_jwt(why: &str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        code: 50027,
        message: format!("JWT token is invalid or malformed: {why}."),
    }
}

fn invalid_client(code: u32, message: &str) -> Refusal {
    Refusal {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        code,
        message: message.to_string(),
    }
}

/// A decoded compact JWS.
struct Jws<'a> {
    header: Value,
    claims: Value,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn decode(assertion: &str) -> Result<Jws<'_>, Refusal> {
    let mut parts = assertion.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_jwt("not three base64url parts"));
    };
    let json = |part: &str| -> Result<Value, Refusal> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| invalid_jwt("a part is not base64url"))?;
        match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(invalid_jwt("a part is not a JSON object")),
        }
    };
    Ok(Jws {
        header: json(h)?,
        claims: json(c)?,
        signing_input: &assertion[..h.len() + 1 + c.len()],
        signature: URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| invalid_jwt("the signature is not base64url"))?,
    })
}

/// Verifies the signature with the public key of certificate `der`.
fn verified(jws: &Jws<'_>, der: &[u8]) -> bool {
    let alg: &dyn signature::VerificationAlgorithm = match jws.header["alg"].as_str() {
        Some("PS256") => &signature::RSA_PSS_2048_8192_SHA256,
        Some("RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
        Some("ES256") => &signature::ECDSA_P256_SHA256_FIXED,
        _ => return false,
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    UnparsedPublicKey::new(alg, cert.public_key().subject_public_key.data.as_ref())
        .verify(jws.signing_input.as_bytes(), &jws.signature)
        .is_ok()
}

fn text<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.get(name).and_then(Value::as_str)
}

/// The time check: `nbf` (else `iat`) and `exp` within the skew of `now`.
fn in_time(claims: &Value, now: u64, max_lifetime: Option<u64>) -> Result<u64, Refusal> {
    let secs = |name| claims.get(name).and_then(Value::as_u64);
    let Some(exp) = secs("exp") else {
        return Err(invalid_jwt("no numeric `exp` claim"));
    };
    let from = secs("nbf").or(secs("iat")).unwrap_or(0);
    let too_long = max_lifetime.is_some_and(|max| exp.saturating_sub(from) > max);
    if now.saturating_add(SKEW_SECS) < from || exp.saturating_add(SKEW_SECS) < now || too_long {
        return Err(invalid_client(
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {from}, expiry time of assertion {exp}{}.",
                if too_long {
                    " (a lifetime over ten minutes)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(exp)
}

/// Checks a certificate credential's assertion for `client_id` against its registered
/// certificates (DER).
pub(super) fn check_signed(
    p: &Presented<'_>,
    certificates: &[&[u8]],
    replay: &mut Replay,
) -> Result<(), Refusal> {
    let jws = decode(p.assertion)?;
    if !matches!(
        jws.header["alg"].as_str(),
        Some("PS256" | "RS256" | "ES256")
    ) {
        return Err(invalid_jwt("the `alg` is not PS256, RS256 or ES256"));
    }
    let by_sha256 = text(&jws.header, "x5t#S256");
    let by_sha1 = text(&jws.header, "x5t");
    if by_sha256.is_none() && by_sha1.is_none() {
        return Err(invalid_jwt(
            "no `x5t#S256` or `x5t` header names the certificate",
        ));
    }
    let found = certificates.iter().find(|der| {
        let thumb = |alg| URL_SAFE_NO_PAD.encode(ring::digest::digest(alg, der));
        by_sha256 == Some(thumb(&ring::digest::SHA256).as_str())
            || by_sha1 == Some(thumb(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY).as_str())
    });
    let Some(der) = found else {
        return Err(invalid_client(
            700027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                by_sha256.or(by_sha1).unwrap_or_default(),
                p.client_id
            ),
        ));
    };
    if !verified(&jws, der) {
        return Err(invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]",
        ));
    }
    if text(&jws.claims, "iss") != Some(p.client_id)
        || text(&jws.claims, "sub") != Some(p.client_id)
    {
        return Err(invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let expected_path = format!("/{}{}", p.tenant, tokenwarden_contract::entra::TOKEN_PATH);
    let aud_ok = text(&jws.claims, "aud")
        .and_then(|a| url::Url::parse(a).ok())
        .is_some_and(|u| {
            let authority = match u.port() {
                Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_string(),
            };
            authority.eq_ignore_ascii_case(p.host)
                && u.path() == expected_path
                && u.query().is_none()
        });
    if !aud_ok {
        return Err(invalid_jwt(&format!(
            "the audience is not this token endpoint (`{}{expected_path}`)",
            p.host
        )));
    }
    let exp = in_time(&jws.claims, p.now, Some(MAX_LIFETIME_SECS))?;
    let Some(jti) = text(&jws.claims, "jti").filter(|j| !j.is_empty()) else {
        return Err(invalid_jwt("no `jti` claim"));
    };
    // Remembered until the assertion could no longer pass the time check, skew included.
    if !replay.first_use(jti, exp.saturating_add(SKEW_SECS), p.now) {
        return Err(invalid_jwt(
            "the `jti` was used before: an assertion is good for one request",
        ));
    }
    Ok(())
}

/// Checks a federated credential's assertion for `client_id` against its records.
pub(super) fn check_federated(
    p: &Presented<'_>,
    records: &[&FederatedCredential],
) -> Result<(), Refusal> {
    let jws = decode(p.assertion)?;
    let issuer = text(&jws.claims, "iss").unwrap_or_default();
    let by_issuer: Vec<_> = records.iter().filter(|r| r.issuer == issuer).collect();
    if by_issuer.is_empty() {
        return Err(invalid_client(
            700211,
            &format!(
                "No matching federated identity record found for presented assertion issuer '{issuer}'."
            ),
        ));
    }
    let subject = text(&jws.claims, "sub").unwrap_or_default();
    let Some(record) = by_issuer.iter().find(|r| r.subject == subject) else {
        return Err(invalid_client(
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'."
            ),
        ));
    };
    let audiences: Vec<&str> = match jws.claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&record.audience.as_str()) {
        return Err(invalid_client(
            700212,
            &format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                audiences.join(",")
            ),
        ));
    }
    if !verified(&jws, &record.issuer_certificate) {
        return Err(invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]",
        ));
    }
    in_time(&jws.claims, p.now, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keys::{Certificate, SigningKey};
    use tokenwarden_contract::SigningAlg;

    const CLIENT: &str = "client-1";
    const TENANT: &str = "tenant-1";
    const HOST: &str = "127.0.0.1:8421";
    const NOW: u64 = 1_800_000_000;

    struct Signer {
        key: SigningKey,
        cert: Certificate,
    }

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["t".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Signer {
            key: SigningKey::from_pem(&key.serialize_pem()).unwrap(),
            cert: Certificate::from_pem(&cert.pem()).unwrap(),
        }
    }

    fn jwt(s: &Signer, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = s.key.sign(SigningAlg::ES256, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn header(s: &Signer) -> serde_json::Value {
        serde_json::json!({"alg": "ES256", "typ": "JWT", "x5t#S256": s.cert.thumbprints().sha256})
    }

    fn claims(jti: &str) -> serde_json::Value {
        serde_json::json!({
            "aud": format!("http://{HOST}/{TENANT}/oauth2/v2.0/token"),
            "iss": CLIENT, "sub": CLIENT, "jti": jti,
            "iat": NOW, "nbf": NOW, "exp": NOW + 300,
        })
    }

    async fn code(r: Result<(), Refusal>) -> Option<u64> {
        r.err().map(|e| u64::from(e.code))
    }

    fn presented(assertion: &str, now: u64) -> Presented<'_> {
        Presented {
            assertion,
            client_id: CLIENT,
            tenant: TENANT,
            host: HOST,
            now,
        }
    }

    #[tokio::test]
    async fn a_certificate_assertion_is_checked_as_entra_checks_it() {
        let s = signer();
        let der = s.cert.der();
        let certs = [der];
        let mut replay = Replay::default();
        let check =
            |a: &str, now, replay: &mut Replay| check_signed(&presented(a, now), &certs, replay);
        let good = jwt(&s, header(&s), claims("j-1"));
        assert!(check(&good, NOW, &mut replay).is_ok());
        assert_eq!(
            code(check(&good, NOW + 1, &mut replay)).await,
            Some(50027),
            "replay"
        );
        // The SHA-1 `x5t` of older setups names the certificate too.
        let sha1 = jwt(
            &s,
            serde_json::json!({"alg": "ES256", "x5t": s.cert.thumbprints().sha1}),
            claims("j-2"),
        );
        assert!(check(&sha1, NOW, &mut replay).is_ok());

        let with = |f: &dyn Fn(&mut serde_json::Value), jti: &str| {
            let mut c = claims(jti);
            f(&mut c);
            jwt(&s, header(&s), c)
        };
        let cases: Vec<(String, u64, u64)> = vec![
            // Time: the edges of the five-minute skew, a lifetime over ten minutes.
            (with(&|c| c["exp"] = (NOW - 301).into(), "t1"), NOW, 700024),
            (with(&|c| c["nbf"] = (NOW + 301).into(), "t2"), NOW, 700024),
            (with(&|c| c["exp"] = (NOW + 601).into(), "t3"), NOW, 700024),
            (with(&|c| c["exp"] = u64::MAX.into(), "t4"), NOW, 700024),
            (with(&|c| c["exp"] = "soon".into(), "t5"), NOW, 50027),
            (
                with(&|c| c["sub"] = "someone-else".into(), "t6"),
                NOW,
                700021,
            ),
            (
                with(
                    &|c| c["aud"] = "http://other:1/tenant-1/oauth2/v2.0/token".into(),
                    "t7",
                ),
                NOW,
                50027,
            ),
            (
                with(
                    &|c| c["aud"] = format!("http://{HOST}/other/oauth2/v2.0/token").into(),
                    "t8",
                ),
                NOW,
                50027,
            ),
            (with(&|c| c["jti"] = "".into(), "t9"), NOW, 50027),
        ];
        for (i, (a, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                code(check(&a, now, &mut replay)).await,
                Some(want),
                "case {i}"
            );
        }
        // Inside the skew on both sides, and exactly ten minutes, pass.
        for (i, f) in [
            &(|c: &mut serde_json::Value| c["exp"] = (NOW - 300).into())
                as &dyn Fn(&mut serde_json::Value),
            &|c| c["nbf"] = (NOW + 300).into(),
            &|c| c["exp"] = (NOW + 600).into(),
        ]
        .into_iter()
        .enumerate()
        {
            let a = with(f, &format!("ok-{i}"));
            assert!(check(&a, NOW, &mut replay).is_ok(), "edge {i}");
        }
        // Unknown key, forged signature, no thumbprint, `none`, garbage.
        let other = signer();
        let stranger = jwt(&other, header(&other), claims("s1"));
        assert_eq!(code(check(&stranger, NOW, &mut replay)).await, Some(700027));
        let forged = jwt(&other, header(&s), claims("s2"));
        assert_eq!(code(check(&forged, NOW, &mut replay)).await, Some(700027));
        let bare = jwt(&s, serde_json::json!({"alg": "ES256"}), claims("s3"));
        assert_eq!(code(check(&bare, NOW, &mut replay)).await, Some(50027));
        let none = jwt(
            &s,
            serde_json::json!({"alg": "none", "x5t#S256": "x"}),
            claims("s4"),
        );
        assert_eq!(code(check(&none, NOW, &mut replay)).await, Some(50027));
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert_eq!(
                code(check(garbage, NOW, &mut replay)).await,
                Some(50027),
                "{garbage}"
            );
        }
    }

    #[test]
    fn a_jti_is_remembered_until_its_assertion_could_pass_no_more() {
        let mut r = Replay::default();
        assert!(r.first_use("a", 100, 50));
        assert!(!r.first_use("a", 100, 100));
        assert!(r.first_use("a", 200, 101), "forgotten after its time");
        // Thousands of entries: old ones are swept, recent ones kept.
        for i in 0..5000 {
            assert!(r.first_use(&format!("j{i}"), 1000 + i, 500));
        }
        assert!(!r.first_use("j4999", 9999, 600));
        assert!(r.0.len() <= 5001);
    }
}

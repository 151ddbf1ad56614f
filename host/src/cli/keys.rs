//! `tokenwarden secrets import-key`: a private key (and its certificate) into the store,
//! from stdin, never from argv. The key is checked (kind, size, that the certificate is its
//! own) before anything is stored, and nothing of it is printed: only its kind, the
//! certificate's subject, expiry and thumbprints, which an Entra app registration shows too.

use super::{Usage, exit, load};
use crate::signing::keys::{Imported, KeyError};
use crate::store::{Access, StoreError};
use anyhow::Context;
use secrecy::SecretString;
use std::io::{IsTerminal, Read};
use std::path::Path;
use zeroize::Zeroizing;

/// Where a PKCS#12 password comes from when no file is given.
pub const PKCS12_PASSWORD_ENV: &str = "TOKENWARDEN_PKCS12_PASSWORD";

/// The largest input read: a PKCS#12 with a long chain is tens of KiB.
const MAX_INPUT: u64 = 1024 * 1024;

pub(super) async fn import(
    config_path: &Path,
    name: &str,
    certificate: Option<&str>,
    password_file: Option<&Path>,
) -> anyhow::Result<u8> {
    for n in std::iter::once(name).chain(certificate) {
        crate::store::check_name(n).map_err(|e| Usage(e.to_string()))?;
    }
    if certificate == Some(name) {
        return Err(Usage("the key and its certificate need different names".into()).into());
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Paste the PEM key (and certificate), then press Ctrl-D; or pipe a file in:");
    }
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut input)
        .context("cannot read the key from stdin")?;
    if input.len() as u64 > MAX_INPUT {
        return Err(Usage(format!(
            "the input is over {MAX_INPUT} bytes; not a key; nothing stored"
        ))
        .into());
    }
    let parsed = match std::str::from_utf8(&input) {
        Ok(text) if text.contains("-----BEGIN") => Imported::from_pem(text),
        _ => {
            let password = password(password_file)?;
            Imported::from_pkcs12(&input, &password)
        }
    }
    .map_err(|e: KeyError| Usage(format!("{e}; nothing stored")))?;
    let (_, store) = load(config_path, Access::ReadWrite).await?;
    let cert = match (certificate, &parsed.certificate) {
        (Some(_), None) => {
            return Err(Usage(
                "--certificate was given but the input holds no certificate of this key; nothing stored".into(),
            )
            .into());
        }
        (Some(n), Some(c)) => Some((n, c)),
        (None, _) => None,
    };
    let stored = |e: StoreError| -> anyhow::Error {
        match e {
            StoreError::Invalid(m) => Usage(m).into(),
            e => e.into(),
        }
    };
    let key_value = SecretString::from(parsed.key_pem.to_string());
    let cert_value = SecretString::from(parsed.certificate_pem().unwrap_or_default());
    // Both values are checked before either is written: a certificate the store refuses
    // must not leave a new key beside the old certificate.
    crate::store::check_entry(name, &key_value).map_err(&stored)?;
    if let Some((cert_name, _)) = cert {
        crate::store::check_entry(cert_name, &cert_value)
            .map_err(|e| Usage(format!("{e}; nothing stored")))?;
    }
    store.set(name, &key_value, None).await.map_err(stored)?;
    eprintln!(
        "stored key `{name}` ({}; signing_alg {} fits it)",
        parsed.key.describe(),
        parsed.key.default_alg().as_str()
    );
    match (cert, &parsed.certificate) {
        (Some((cert_name, c)), _) => {
            store
                .set(cert_name, &cert_value, None)
                .await
                .map_err(stored)?;
            let t = c.thumbprints();
            let more = match parsed.chain.len() {
                0 => String::new(),
                1 => " and the 1 certificate of its chain".into(),
                n => format!(" and the {n} certificates of its chain"),
            };
            // The subject is the certificate's text: control characters are escaped.
            let summary = crate::text::clean(&c.summary(), 1024);
            eprintln!("stored certificate `{cert_name}` ({summary}){more}");
            eprintln!("  x5t#S256 {}\n  x5t      {}", t.sha256, t.sha1);
            if c.expired() {
                eprintln!(
                    "warning: the certificate has expired; Entra refuses assertions made with it"
                );
            }
        }
        (None, Some(_)) => eprintln!(
            "the input also holds the key's certificate: pass --certificate NAME to store it (Microsoft Entra ID needs it)"
        ),
        (None, None) => {}
    }
    Ok(exit::OK)
}

/// The PKCS#12 password: from `file`, else [`PKCS12_PASSWORD_ENV`], else empty (a file
/// exported without one).
fn password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the password file {}", f.display()))?,
        );
        let one = text.strip_suffix('\n').unwrap_or(&text);
        return Ok(Zeroizing::new(
            one.strip_suffix('\r').unwrap_or(one).to_string(),
        ));
    }
    Ok(Zeroizing::new(
        std::env::var(PKCS12_PASSWORD_ENV).unwrap_or_default(),
    ))
}

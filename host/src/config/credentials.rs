//! How a job proves its identity: `client_auth` and the keys that go with it
//! (`signing_alg`, `key_id`, `assertion_file`, the credential roles of `[jobs.secrets]`).
//! Each method is granted exactly the credential it uses: a role or key of another method
//! is refused, so a job never holds a secret it does not need. A `client_assertion` job
//! takes Azure workload identity's variables as defaults: `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST`, read when the config
//! loads.

use super::parse::{ConfigError, Ctx};
use super::raw::RawJob;
use crate::job::{
    ClientAuth, IDENTITY_ENDPOINT_ENV, IDENTITY_HEADER_ENV, IdentitySource, SigningAlg,
};
use crate::secrets::SecretRoles;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tokenwarden_contract::{managed_identity, role};
use toml::Spanned;

/// Azure workload identity's token file (AKS, and what `azure-identity` reads).
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// Azure workload identity's authority host.
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Azure workload identity's client id.
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Azure workload identity's tenant id.
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";

/// The longest `key_id` accepted.
pub const MAX_KEY_ID: usize = 256;

/// A job's credential settings, checked.
pub(super) struct Credential {
    pub(super) signing_alg: SigningAlg,
    pub(super) key_id: Option<String>,
    pub(super) assertion_file: Option<PathBuf>,
    pub(super) given_ids: Vec<(&'static str, String)>,
}

/// A non-empty environment variable, trimmed.
fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// For a `client_assertion` job with no `cloud`, `authority` or `token_url`: the authority
/// from `AZURE_AUTHORITY_HOST`, as workload identity sets it.
pub(super) fn workload_authority(j: &mut RawJob, span: &Range<usize>) {
    if j.client_auth == ClientAuth::ClientAssertion
        && j.cloud.is_none()
        && j.authority.is_none()
        && j.token_url.is_none()
        && let Some(host) = env(AZURE_AUTHORITY_HOST)
    {
        j.authority = Some(Spanned::new(span.clone(), host));
    }
}

/// For a `managed_identity` job: which endpoint (`managed_identity = "imds" |
/// "app_service"`, by default App Service when `IDENTITY_ENDPOINT` is set), written into
/// `token_url` with its `api-version` (`token_url`, when given, replaces the endpoint's
/// address: a proxy, or the emulator). `None` for any other job, which may not say
/// `managed_identity`.
pub(super) fn managed_identity_endpoint(
    cx: &Ctx<'_>,
    j: &mut RawJob,
    name: &str,
    span: &Range<usize>,
) -> Result<Option<IdentitySource>, ConfigError> {
    let ctx = |key: &str, why: &str| format!("job `{name}`: `{key}` {why}");
    if j.client_auth != ClientAuth::ManagedIdentity {
        if let Some(m) = &j.managed_identity {
            return Err(cx.invalid(
                m.span(),
                ctx(
                    "managed_identity",
                    "needs `client_auth = \"managed_identity\"`",
                ),
            ));
        }
        return Ok(None);
    }
    for (key, value) in [("cloud", &j.cloud), ("authority", &j.authority)] {
        if let Some(v) = value {
            return Err(cx.invalid(
                v.span(),
                ctx(key, "has no meaning for a managed identity, which asks the identity endpoint (`token_url` replaces its address)"),
            ));
        }
    }
    if j.scope.trim().is_empty() {
        return Err(cx.invalid(
            span.clone(),
            ctx(
                "scope",
                "names the resource a managed identity's token is for; it is empty",
            ),
        ));
    }
    let source = match j
        .managed_identity
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None if env(IDENTITY_ENDPOINT_ENV).is_some() => IdentitySource::AppService,
        None | Some(("imds", _)) => IdentitySource::Imds,
        Some(("app_service", _)) => IdentitySource::AppService,
        Some((other, s)) => {
            return Err(cx.invalid(
                s,
                ctx(
                    "managed_identity",
                    &format!(
                        "= {} is not one of imds, app_service",
                        crate::text::quoted(other)
                    ),
                ),
            ));
        }
    };
    let at = j.token_url.as_ref().map_or(span.clone(), |t| t.span());
    let base = match (&j.token_url, source) {
        (Some(url), _) => url.get_ref().clone(),
        (None, IdentitySource::Imds) => managed_identity::IMDS_ENDPOINT.to_string(),
        (None, IdentitySource::AppService) => env(IDENTITY_ENDPOINT_ENV).ok_or_else(|| {
            cx.invalid(
                span.clone(),
                ctx(
                    "managed_identity",
                    &format!("= \"app_service\" needs {IDENTITY_ENDPOINT_ENV} in the environment"),
                ),
            )
        })?,
    };
    if source == IdentitySource::AppService && env(IDENTITY_HEADER_ENV).is_none() {
        return Err(cx.invalid(
            span.clone(),
            ctx(
                "managed_identity",
                &format!("= \"app_service\" needs {IDENTITY_HEADER_ENV} in the environment"),
            ),
        ));
    }
    if base.contains(['?', '#']) {
        return Err(cx.invalid(
            at,
            ctx(
                "token_url",
                "of a managed identity takes no query: the host adds the `api-version`",
            ),
        ));
    }
    let version = match source {
        IdentitySource::Imds => managed_identity::IMDS_API_VERSION,
        IdentitySource::AppService => managed_identity::APP_SERVICE_API_VERSION,
    };
    j.token_url = Some(Spanned::new(at, format!("{base}?api-version={version}")));
    Ok(Some(source))
}

/// Checks `client_auth` against the credential keys and roles of job `name`.
pub(super) fn credential(
    cx: &Ctx<'_>,
    j: &RawJob,
    name: &str,
    is_entra: bool,
    base: &Path,
) -> Result<Credential, ConfigError> {
    let method = j.client_auth;
    let roles: &SecretRoles = j.secrets.get_ref();
    let roles_span = j.secrets.span();
    let ctx = |key: &str, why: String| format!("job `{name}`: `{key}` {why}");
    let method_name = match method {
        ClientAuth::ClientSecretPost => "client_secret_post",
        ClientAuth::ClientSecretBasic => "client_secret_basic",
        ClientAuth::PrivateKeyJwt => "private_key_jwt",
        ClientAuth::ClientAssertion => "client_assertion",
        ClientAuth::ManagedIdentity => "managed_identity",
        ClientAuth::TlsClientAuth => "tls_client_auth",
    };
    let unused = |key: &str, span: Range<usize>| {
        cx.invalid(
            span,
            ctx(
                key,
                format!("is not used by `client_auth = \"{method_name}\"`; remove it (a job holds only the credential it uses)"),
            ),
        )
    };
    let needed = |key: &str, why: &str| {
        cx.invalid(
            roles_span.clone(),
            ctx(
                key,
                format!("is required by `client_auth = \"{method_name}\"`{why}"),
            ),
        )
    };
    let secret_method = matches!(
        method,
        ClientAuth::ClientSecretPost | ClientAuth::ClientSecretBasic
    );
    if secret_method && roles.client_secret.is_none() {
        return Err(needed("secrets.client_secret", ""));
    }
    if !secret_method && roles.client_secret.is_some() {
        return Err(unused("secrets.client_secret", roles_span.clone()));
    }
    let jwt = method == ClientAuth::PrivateKeyJwt;
    let mtls = method == ClientAuth::TlsClientAuth;
    if (jwt || mtls) && roles.private_key.is_none() {
        return Err(needed(
            "secrets.private_key",
            "; import one with `tokenwarden secrets import-key`",
        ));
    }
    if mtls {
        mtls_endpoint(cx, j, name)?;
        if roles.certificate.is_none() {
            return Err(needed(
                "secrets.certificate",
                ", which the host presents with the key in the TLS handshake",
            ));
        }
    }
    if !jwt && !mtls {
        if roles.private_key.is_some() {
            return Err(unused("secrets.private_key", roles_span.clone()));
        }
        if roles.certificate.is_some() {
            return Err(unused("secrets.certificate", roles_span.clone()));
        }
    }
    if !jwt {
        if let Some(a) = &j.signing_alg {
            return Err(unused("signing_alg", a.span()));
        }
        if let Some(k) = &j.key_id {
            return Err(unused("key_id", k.span()));
        }
    }
    if jwt && is_entra && roles.certificate.is_none() {
        return Err(needed(
            "secrets.certificate",
            " at Microsoft Entra ID, which identifies the key by its certificate's thumbprint",
        ));
    }
    let signing_alg = match &j.signing_alg {
        None => SigningAlg::default(),
        Some(a) => match a.get_ref().as_str() {
            "PS256" => SigningAlg::PS256,
            "RS256" => SigningAlg::RS256,
            "ES256" => SigningAlg::ES256,
            other => {
                return Err(cx.invalid(
                    a.span(),
                    ctx(
                        "signing_alg",
                        format!(
                            "= {} is not one of PS256, RS256, ES256",
                            crate::text::quoted(other)
                        ),
                    ),
                ));
            }
        },
    };
    let key_id = match &j.key_id {
        None => None,
        Some(k) => {
            let v = k.get_ref();
            if v.is_empty() || v.len() > MAX_KEY_ID || v.chars().any(char::is_control) {
                return Err(cx.invalid(
                    k.span(),
                    ctx(
                        "key_id",
                        format!("must be 1 to {MAX_KEY_ID} characters without control characters"),
                    ),
                ));
            }
            Some(v.clone())
        }
    };
    let assertion_file = if method == ClientAuth::ClientAssertion {
        Some(assertion_file(cx, j, name, base)?)
    } else {
        if let Some(f) = &j.assertion_file {
            return Err(unused("assertion_file", f.span()));
        }
        None
    };
    let federated = method == ClientAuth::ClientAssertion;
    let mut given_ids = Vec::new();
    for (key, bound, needed, var, role) in [
        (
            "client_id",
            roles.client_id.is_some(),
            // A managed identity without one is the system-assigned identity.
            method != ClientAuth::ManagedIdentity,
            AZURE_CLIENT_ID,
            role::CLIENT_ID,
        ),
        (
            "tenant_id",
            roles.tenant_id.is_some(),
            j.token_url.is_none(),
            AZURE_TENANT_ID,
            role::TENANT_ID,
        ),
    ] {
        if bound || !needed {
            continue;
        }
        match env(var).filter(|_| federated) {
            Some(value) => given_ids.push((role, value)),
            None => {
                let unless = if key == "tenant_id" {
                    " unless `token_url` is set"
                } else {
                    ""
                };
                return Err(cx.invalid(
                    roles_span.clone(),
                    ctx(
                        &format!("secrets.{key}"),
                        format!(
                            "is required{unless} (a `client_assertion` job may take it from {var})"
                        ),
                    ),
                ));
            }
        }
    }
    Ok(Credential {
        signing_alg,
        key_id,
        assertion_file,
        given_ids,
    })
}

/// A `tls_client_auth` job's endpoint: its own `https` `token_url`. Microsoft Entra ID
/// takes no client certificate in the handshake for client credentials: it is refused
/// there, with the method that uses the same key and certificate.
fn mtls_endpoint(cx: &Ctx<'_>, j: &RawJob, name: &str) -> Result<(), ConfigError> {
    const ENTRA: &str = "Microsoft Entra ID takes no client certificate in the handshake: use `client_auth = \"private_key_jwt\"` with the same key and certificate";
    let entra_host = |url: &str| {
        crate::egress::Origin::of_url(url)
            .is_ok_and(|o| tokenwarden_contract::entra::is_login_host(&o.host))
    };
    let why = match j.token_url.as_ref().map(|u| u.get_ref().as_str()) {
        None => format!(
            "needs `token_url`, the endpoint of a server that accepts RFC 8705 client certificates ({ENTRA})"
        ),
        Some(url) if entra_host(url) => format!("cannot use Entra's `token_url`: {ENTRA}"),
        Some(url) if !crate::egress::Origin::of_url(url).is_ok_and(|o| o.scheme == "https") => {
            "needs an `https` `token_url`: the certificate is presented in the TLS handshake".into()
        }
        Some(_) => return Ok(()),
    };
    Err(cx.invalid(
        j.token_url.as_ref().map_or(j.name.span(), |t| t.span()),
        format!("job `{name}`: `client_auth = \"tls_client_auth\"` {why}"),
    ))
}

/// `assertion_file`, relative to the config file; else `AZURE_FEDERATED_TOKEN_FILE`.
/// Only the path is checked here: the file is read at every run, and a projected token
/// may appear after the daemon starts.
fn assertion_file(
    cx: &Ctx<'_>,
    j: &RawJob,
    name: &str,
    base: &Path,
) -> Result<PathBuf, ConfigError> {
    if let Some(f) = &j.assertion_file {
        if f.get_ref().trim().is_empty() {
            return Err(cx.invalid(f.span(), format!("job `{name}`: `assertion_file` is empty")));
        }
        return Ok(base.join(f.get_ref()));
    }
    match std::env::var_os(AZURE_FEDERATED_TOKEN_FILE) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(cx.invalid(
            j.name.span(),
            format!(
                "job `{name}`: `client_auth = \"client_assertion\"` needs `assertion_file`, or {AZURE_FEDERATED_TOKEN_FILE} in the environment"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::job::{ClientAuth, SigningAlg};
    use std::path::Path;

    fn parse(text: &str) -> Result<crate::Config, super::ConfigError> {
        super::super::parse::parse(text, Path::new("/etc/tw/tokenwarden.toml"))
    }

    fn job(auth: &str, extra: &str, secrets: &str) -> String {
        format!(
            "[[jobs]]\nname = \"j\"\nscope = \"https://graph.microsoft.com/.default\"\nclient_auth = \"{auth}\"\n{extra}\n[jobs.secrets]\nclient_id = \"id\"\ntenant_id = \"t\"\naccess_token = \"token\"\n{secrets}"
        )
    }

    #[test]
    fn each_method_gets_its_own_credential_and_nothing_else() {
        let c = parse(&job(
            "private_key_jwt",
            "signing_alg = \"RS256\"\nkey_id = \"k1\"",
            "private_key = \"Key\"\ncertificate = \"Cert\"",
        ))
        .unwrap();
        let j = &c.jobs[0];
        assert_eq!(j.client_auth, ClientAuth::PrivateKeyJwt);
        assert_eq!(j.signing_alg, SigningAlg::RS256);
        assert_eq!(j.key_id.as_deref(), Some("k1"));
        assert!(j.secrets.client_secret.is_none());
        let c = parse(&job(
            "private_key_jwt",
            "",
            "private_key = \"Key\"\ncertificate = \"Cert\"",
        ))
        .unwrap();
        assert_eq!(c.jobs[0].signing_alg, SigningAlg::PS256, "Entra's default");

        let c = parse(&job("client_assertion", "assertion_file = \"token\"", "")).unwrap();
        assert_eq!(
            c.jobs[0].assertion_file.as_deref(),
            Some(Path::new("/etc/tw/token"))
        );

        let cases = [
            // A secret method without its secret, and a key method with one.
            ("client_secret_post", "", "", "client_secret` is required"),
            (
                "private_key_jwt",
                "",
                "client_secret = \"S\"\nprivate_key = \"K\"\ncertificate = \"C\"",
                "client_secret` is not used",
            ),
            ("private_key_jwt", "", "", "private_key` is required"),
            // Entra names the key by its certificate.
            (
                "private_key_jwt",
                "",
                "private_key = \"K\"",
                "certificate` is required",
            ),
            (
                "private_key_jwt",
                "signing_alg = \"HS256\"",
                "private_key = \"K\"\ncertificate = \"C\"",
                "not one of PS256, RS256, ES256",
            ),
            (
                "private_key_jwt",
                "signing_alg = \"ps256\"",
                "private_key = \"K\"\ncertificate = \"C\"",
                "not one of",
            ),
            (
                "private_key_jwt",
                "key_id = \"\"",
                "private_key = \"K\"\ncertificate = \"C\"",
                "key_id",
            ),
            (
                "private_key_jwt",
                &format!("key_id = \"{}\"", "k".repeat(257)),
                "private_key = \"K\"\ncertificate = \"C\"",
                "key_id",
            ),
            (
                "private_key_jwt",
                "key_id = \"a\\u0000b\"",
                "private_key = \"K\"\ncertificate = \"C\"",
                "control",
            ),
            (
                "private_key_jwt",
                "assertion_file = \"f\"",
                "private_key = \"K\"\ncertificate = \"C\"",
                "assertion_file` is not used",
            ),
            (
                "client_secret_post",
                "signing_alg = \"PS256\"",
                "client_secret = \"S\"",
                "signing_alg` is not used",
            ),
            (
                "client_secret_post",
                "key_id = \"k\"",
                "client_secret = \"S\"",
                "key_id` is not used",
            ),
            (
                "client_secret_post",
                "",
                "client_secret = \"S\"\ncertificate = \"C\"",
                "certificate` is not used",
            ),
            (
                "client_assertion",
                "assertion_file = \"f\"",
                "private_key = \"K\"",
                "private_key` is not used",
            ),
            ("client_assertion", "assertion_file = \" \"", "", "is empty"),
            (
                "private_key_jwt",
                "",
                "private_key = \"token\"\ncertificate = \"C\"",
                "access_token",
            ),
        ];
        for (auth, extra, secrets, needle) in cases {
            let e = parse(&job(auth, extra, secrets)).unwrap_err().to_string();
            assert!(e.contains(needle), "{auth} {extra} {secrets}: {e}");
        }
    }

    #[test]
    fn ids_come_from_the_store_or_only_for_workload_identity_from_the_environment() {
        let no_id = "[[jobs]]\nname = \"j\"\nscope = \"https://graph.microsoft.com/.default\"\n[jobs.secrets]\nclient_secret = \"S\"\ntenant_id = \"t\"\naccess_token = \"token\"\n";
        let e = parse(no_id).unwrap_err().to_string();
        assert!(
            e.contains("client_id` is required") && e.contains("AZURE_CLIENT_ID"),
            "{e}"
        );
        let no_tenant = "[[jobs]]\nname = \"j\"\nscope = \"https://graph.microsoft.com/.default\"\n[jobs.secrets]\nclient_id = \"id\"\nclient_secret = \"S\"\naccess_token = \"token\"\n";
        let e = parse(no_tenant).unwrap_err().to_string();
        assert!(
            e.contains("tenant_id` is required unless `token_url`"),
            "{e}"
        );
    }

    #[test]
    fn a_managed_identity_has_an_endpoint_and_no_credential() {
        let mi = |extra: &str, secrets: &str| {
            format!(
                "[[jobs]]\nname = \"j\"\nscope = \"https://graph.microsoft.com/.default\"\nclient_auth = \"managed_identity\"\n{extra}\n[jobs.secrets]\naccess_token = \"token\"\n{secrets}"
            )
        };
        let c = parse(&mi("managed_identity = \"imds\"", "client_id = \"UAMI\"")).unwrap();
        let j = &c.jobs[0];
        assert_eq!(j.identity_source, Some(crate::job::IdentitySource::Imds));
        assert_eq!(
            j.token_url.as_deref(),
            Some("http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01")
        );
        assert_eq!(j.secrets.client_id.as_deref(), Some("UAMI"));
        let c = parse(&mi(
            "token_url = \"http://127.0.0.1:8421/metadata/identity/oauth2/token\"",
            "",
        ))
        .unwrap();
        assert!(
            c.jobs[0]
                .token_url
                .as_deref()
                .unwrap()
                .ends_with("/token?api-version=2018-02-01")
        );
        let cases = [
            (
                "managed_identity = \"vm\"",
                "",
                "not one of imds, app_service",
            ),
            ("cloud = \"usgov\"", "", "no meaning for a managed identity"),
            (
                "authority = \"https://login.microsoftonline.com\"",
                "",
                "no meaning",
            ),
            (
                "token_url = \"http://127.0.0.1:1/t?api-version=1\"",
                "",
                "takes no query",
            ),
            ("", "client_secret = \"S\"", "client_secret` is not used"),
            ("", "private_key = \"K\"", "private_key` is not used"),
            ("token_url = \"http://10.0.0.1/t\"", "", "plain http"),
        ];
        for (extra, secrets, needle) in cases {
            let e = parse(&mi(extra, secrets)).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra} {secrets}: {e}");
        }
        let empty = mi("", "").replace("https://graph.microsoft.com/.default", "");
        assert!(
            parse(&empty)
                .unwrap_err()
                .to_string()
                .contains("names the resource")
        );
    }

    #[test]
    fn mutual_tls_needs_a_key_a_certificate_and_its_own_https_endpoint() {
        let mtls = |extra: &str, secrets: &str| {
            format!(
                "[[jobs]]\nname = \"j\"\nscope = \"api\"\nclient_auth = \"tls_client_auth\"\n{extra}\n[jobs.secrets]\nclient_id = \"id\"\naccess_token = \"token\"\n{secrets}"
            )
        };
        let url = "token_url = \"https://mtls.idp.example/token\"";
        let both = "private_key = \"K\"\ncertificate = \"C\"";
        let c = parse(&mtls(url, both)).unwrap();
        assert_eq!(c.jobs[0].client_auth, ClientAuth::TlsClientAuth);
        let upper = "token_url = \"HTTPS://mtls.idp.example/token\"";
        assert!(
            parse(&mtls(upper, both)).is_ok(),
            "the scheme is case-insensitive"
        );
        assert_eq!(c.jobs[0].secrets.private_key.as_deref(), Some("K"));
        let cases = [
            ("", both, "needs `token_url`"),
            (
                "token_url = \"https://login.microsoftonline.com/t/oauth2/v2.0/token\"",
                both,
                "private_key_jwt",
            ),
            (
                "token_url = \"http://mtls.idp.example/token\"",
                both,
                "needs an `https` `token_url`",
            ),
            (url, "private_key = \"K\"", "certificate` is required"),
            (url, "certificate = \"C\"", "private_key` is required"),
            (
                url,
                "private_key = \"K\"\ncertificate = \"C\"\nclient_secret = \"S\"",
                "client_secret` is not used",
            ),
            (
                &format!("{url}\nsigning_alg = \"PS256\""),
                both,
                "signing_alg` is not used",
            ),
            (
                &format!("{url}\nkey_id = \"k\""),
                both,
                "key_id` is not used",
            ),
        ];
        for (extra, secrets, needle) in cases {
            let e = parse(&mtls(extra, secrets)).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra} {secrets}: {e}");
        }
    }

    #[test]
    fn another_server_needs_no_certificate() {
        let text = "[[jobs]]\nname = \"j\"\nscope = \"api\"\ntoken_url = \"https://idp.example/token\"\nclient_auth = \"private_key_jwt\"\nsigning_alg = \"ES256\"\nkey_id = \"k\"\n[jobs.secrets]\nclient_id = \"id\"\nprivate_key = \"K\"\naccess_token = \"token\"\n";
        assert_eq!(parse(text).unwrap().jobs[0].signing_alg, SigningAlg::ES256);
    }
}

//! OAuth 2.0 client-credentials encoding and reply parsing (RFC 6749 §4.4, §5), with the
//! Microsoft identity platform's extras. Transport-agnostic: it builds a request description
//! and parses status, headers and body, so it is tested natively.

use miniserde::json::{Number, Object, Value};

pub use tokenwarden_contract::entra::DEFAULT_AUTHORITY;
pub use tokenwarden_contract::{ClientAuth, Error, OAuthError, Outcome, SigningAlg};
use tokenwarden_contract::{RESERVED_PARAMS, assertion, entra};

/// The largest reply body accepted. Token replies are a few KiB; anything far larger is
/// not a token endpoint speaking.
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// What the host asked for.
#[derive(Clone, Debug)]
pub struct Request {
    /// Scope to request; may be empty for servers that do not need one (not Entra).
    pub scope: String,
    /// Identity-provider base URL (Entra-style endpoint layout).
    pub authority: Option<String>,
    /// Full token endpoint; overrides `authority`.
    pub token_url: Option<String>,
    /// Client authentication method.
    pub client_auth: ClientAuth,
    /// Extra form parameters.
    pub extra_params: Vec<(String, String)>,
    /// The algorithm of a `private_key_jwt` assertion.
    pub signing_alg: SigningAlg,
    /// Its `kid` header, when set.
    pub key_id: Option<String>,
}

/// A token endpoint URL split the way wasi:http wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `true` for https.
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl Endpoint {
    /// Parses an absolute http(s) URL. Userinfo and fragments are refused: credentials in a
    /// URL would end up in logs, and a fragment means the URL is not what the user meant.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadRequest(format!("token URL `{url}`: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("not an absolute URL"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("scheme must be http or https")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not allowed"));
        }
        if !authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
        {
            return Err(bad("invalid host"));
        }
        if tail.contains('#') {
            return Err(bad("fragments are not allowed"));
        }
        if tail
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(bad("whitespace in the path"));
        }
        let path_and_query = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        Ok(Self {
            https,
            authority: authority.to_ascii_lowercase(),
            path_and_query,
        })
    }

    /// The host name without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        let a = &self.authority;
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h)
    }

    /// `scheme://authority`, for messages.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }

    /// Whether this is one of Microsoft Entra ID's login hosts.
    pub fn is_entra(&self) -> bool {
        entra::is_login_host(self.host())
    }
}

/// An HTTP method the component uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    /// A token request (RFC 6749 §4.4.2).
    Post,
    /// A managed identity's token endpoint.
    Get,
}

/// An HTTP request ready to send.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// POST, or GET for a managed identity.
    pub method: HttpMethod,
    /// Where to.
    pub endpoint: Endpoint,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The form body.
    pub body: Vec<u8>,
}

// The body and the Authorization header hold the client secret.
impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("endpoint", &self.endpoint)
            .field(
                "body",
                &format_args!("[redacted; {} bytes]", self.body.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A reply: status, the headers we read, and the body (already capped by the transport).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, when present.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// Client credentials read from the bound secrets (or signed by the host).
pub struct Credentials {
    /// `client_id`.
    pub client_id: String,
    /// What proves the client is who it says.
    pub proof: Proof,
}

/// The client's proof of identity: a shared secret or an assertion (RFC 7521 §4.2).
pub enum Proof {
    /// `client_secret`, sent as the job's `client_auth` says.
    Secret(String),
    /// A JWT sent as `client_assertion` (signed by the host, or issued by a federated
    /// identity provider).
    Assertion(String),
    /// The host's TLS client certificate (RFC 8705): nothing in the form but `client_id`.
    Tls,
}

impl Proof {
    /// The credential's text, to scrub from anything a run returns.
    pub fn value(&self) -> &str {
        match self {
            Proof::Secret(v) | Proof::Assertion(v) => v,
            Proof::Tls => "",
        }
    }
}

/// Checks that a tenant is a GUID or a domain-like name, so that it cannot change the
/// endpoint's path. The value comes from a secret, so it never appears in the message.
pub fn check_tenant(tenant: &str) -> Result<(), Error> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 253
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        && !tenant.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "the tenant-id secret is not a tenant GUID or domain name".into(),
        ))
    }
}

/// The token endpoint: `token_url`, else `{authority}/{tenant}/oauth2/v2.0/token`.
/// `tenant` is needed only in the second case.
pub fn endpoint(req: &Request, tenant: Option<&str>) -> Result<Endpoint, Error> {
    if let Some(url) = &req.token_url {
        return Endpoint::parse(url);
    }
    let authority = req.authority.as_deref().unwrap_or(DEFAULT_AUTHORITY);
    let tenant = tenant.ok_or_else(|| Error::missing(tokenwarden_contract::role::TENANT_ID))?;
    check_tenant(tenant)?;
    let base = Endpoint::parse(authority)?;
    let path = base.path_and_query.trim_end_matches('/');
    if path.contains('?') {
        return Err(Error::BadRequest(format!(
            "authority `{authority}` must not have a query"
        )));
    }
    Ok(Endpoint {
        path_and_query: format!("{path}/{tenant}{}", entra::TOKEN_PATH),
        ..base
    })
}

/// Builds the token request (RFC 6749 §4.4.2), with `Content-Length` set: some servers read
/// an empty form from a chunked body.
pub fn build_request(
    req: &Request,
    endpoint: Endpoint,
    creds: &Credentials,
) -> Result<HttpRequest, Error> {
    if endpoint.is_entra() && !entra::accepts_scope(&req.scope) {
        return Err(Error::BadRequest(format!(
            "scope `{}`: {}",
            req.scope,
            entra::SCOPE_RULE
        )));
    }
    if let Some((name, _)) = req
        .extra_params
        .iter()
        .find(|(n, _)| RESERVED_PARAMS.contains(&n.as_str()))
    {
        return Err(Error::BadRequest(format!(
            "extra parameter `{name}` would override a parameter the plugin sets"
        )));
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    let mut headers = vec![
        (
            "content-type".to_string(),
            b"application/x-www-form-urlencoded".to_vec(),
        ),
        ("accept".to_string(), b"application/json".to_vec()),
    ];
    match (&creds.proof, req.client_auth) {
        (Proof::Secret(_), ClientAuth::ClientSecretBasic) => {
            headers.push(("authorization".to_string(), basic_auth(creds).into_bytes()));
        }
        (Proof::Secret(secret), _) => {
            form.append_pair("client_id", &creds.client_id);
            form.append_pair("client_secret", secret);
        }
        (Proof::Assertion(jwt), _) => {
            // `client_id` is optional beside an assertion (RFC 7523 §3) but Entra wants it.
            form.append_pair("client_id", &creds.client_id);
            form.append_pair("client_assertion_type", assertion::JWT_BEARER);
            form.append_pair("client_assertion", jwt);
        }
        (Proof::Tls, _) => {
            // RFC 8705 §2: `client_id` is required; the handshake proves it.
            form.append_pair("client_id", &creds.client_id);
        }
    }
    if !req.scope.is_empty() {
        form.append_pair("scope", &req.scope);
    }
    for (name, value) in &req.extra_params {
        form.append_pair(name, value);
    }
    let body = form.finish().into_bytes();
    headers.push((
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    ));
    Ok(HttpRequest {
        method: HttpMethod::Post,
        endpoint,
        headers,
        body,
    })
}

/// A managed identity's token request: `GET {endpoint}&resource=...[&client_id=...]` with
/// `Metadata: true` (IMDS's check that the caller is not a redirected browser) and, for
/// App Service, `X-IDENTITY-HEADER`. The endpoint carries its `api-version` already.
pub fn identity_request(
    req: &Request,
    mut endpoint: Endpoint,
    client_id: Option<&str>,
    identity_header: Option<&str>,
) -> HttpRequest {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair(
        "resource",
        tokenwarden_contract::managed_identity::resource(&req.scope),
    );
    if let Some(id) = client_id {
        query.append_pair("client_id", id);
    }
    let sep = if endpoint.path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    endpoint.path_and_query = format!("{}{sep}{}", endpoint.path_and_query, query.finish());
    let mut headers = vec![
        ("metadata".to_string(), b"true".to_vec()),
        ("accept".to_string(), b"application/json".to_vec()),
    ];
    if let Some(h) = identity_header {
        headers.push(("x-identity-header".to_string(), h.as_bytes().to_vec()));
    }
    HttpRequest {
        method: HttpMethod::Get,
        endpoint,
        headers,
        body: Vec::new(),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, RFC 6749 §2.3.1; empty for an
/// assertion, which never goes in a header.
pub fn basic_auth(creds: &Credentials) -> String {
    let Proof::Secret(secret) = &creds.proof else {
        return String::new();
    };
    let user: String = form_urlencoded::byte_serialize(creds.client_id.as_bytes()).collect();
    let pass: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
}

#[cfg(test)]
pub(crate) fn base64_for_tests(bytes: &[u8]) -> String {
    base64(bytes)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    encode(
        bytes,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true,
    )
}

/// base64url without padding (RFC 4648 §5), as JWS writes it (RFC 7515 §2).
pub fn base64url(bytes: &[u8]) -> String {
    encode(
        bytes,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        false,
    )
}

/// Base64 with `alphabet`, padded or not. Fifteen lines here instead of a crate: the
/// component has a size budget, and only encoding is needed.
fn encode(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            let sextet = (n >> (18 - 6 * i)) & 63;
            if i <= chunk.len() {
                out.push(alphabet[sextet as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// A parsed success reply. The token is kept apart so it cannot slip into the outcome.
pub struct Token {
    /// The access token.
    pub access_token: String,
    /// Everything else.
    pub outcome: Outcome,
}

// Replies are read through miniserde's `Value` rather than serde_json or derived structs:
// one small, non-recursive generic parser keeps the component within its size budget.

/// `body` as a JSON value; `None` when it is not UTF-8 JSON.
fn json(body: &[u8]) -> Option<Value> {
    miniserde::json::from_str(std::str::from_utf8(body).ok()?).ok()
}

/// `field` as whole seconds: a number, or a numeric string as some servers send (`"3599"`).
fn seconds(obj: &Object, field: &str) -> Result<Option<u64>, Error> {
    let bad = || Error::InvalidResponse(format!("`{field}` is not a number of seconds"));
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(Number::U64(n))) => Ok(Some(*n)),
        // Saturating: a float beyond u64 is as far away as it can be.
        Some(Value::Number(Number::F64(f))) if f.is_finite() && *f >= 0.0 => Ok(Some(*f as u64)),
        Some(Value::Number(_)) => Err(bad()),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// `field` as text; absent or null is `None`, another type an error.
fn text(obj: &Object, field: &str) -> Result<Option<String>, Error> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::InvalidResponse(format!("`{field}` is not a string"))),
    }
}

/// An OAuth error body (RFC 6749 §5.2, with Entra's extra fields), when the reply is one.
fn oauth_error(status: u16, body: &[u8]) -> Option<OAuthError> {
    let Some(Value::Object(obj)) = json(body) else {
        return None;
    };
    let error = text(&obj, "error").ok()??;
    if error.is_empty() {
        return None;
    }
    // Diagnostics of the wrong type are dropped rather than failing the classification.
    let optional = |field: &str| text(&obj, field).ok().flatten();
    let error_codes = match obj.get("error_codes") {
        Some(Value::Array(codes)) => codes
            .iter()
            .filter_map(|c| match c {
                Value::Number(Number::U64(n)) => u32::try_from(*n).ok(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(OAuthError {
        status,
        error,
        description: optional("error_description"),
        error_codes,
        trace_id: optional("trace_id"),
        correlation_id: optional("correlation_id"),
    })
}

/// `Retry-After` (RFC 9110 §10.2.3) as seconds from `now`: delay-seconds (saturating at
/// `u32::MAX`; the host clamps it to its own maximum) or an HTTP-date (0 when past).
/// Anything else gives `None`, the caller's default.
pub fn parse_retry_after(value: Option<&str>, now: u64) -> Option<u32> {
    let v = value?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    let at = http_date(v)?;
    Some(u32::try_from(at.saturating_sub(now)).unwrap_or(u32::MAX))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, the form RFC 9110 §5.6.7 has senders
/// use) as Unix seconds. Written here rather than taken from a crate: the component's size
/// budget (150 KB) leaves no room for a date library.
pub fn http_date(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = s.split_ascii_whitespace();
    parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1970..=9999).contains(&year) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm, for years from 1970 on).
    let (y, mp) = if month > 2 {
        (year, month - 3)
    } else {
        (year - 1, month + 9)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Classifies a reply (RFC 6749 §5.1, §5.2). `now` is Unix seconds, for `expires_at`.
pub fn parse_reply(reply: &HttpReply, now: u64) -> Result<Token, Error> {
    let status = reply.status;
    if reply.body.len() > MAX_REPLY_BYTES {
        return Err(Error::InvalidResponse(format!(
            "reply body larger than {MAX_REPLY_BYTES} bytes"
        )));
    }
    match status {
        200..=299 => parse_success(&reply.body, status, now),
        429 => Err(Error::Throttled(parse_retry_after(
            reply.retry_after.as_deref(),
            now,
        ))),
        300..=399 => Err(Error::InvalidResponse(format!(
            "HTTP {status}: the token endpoint redirected, and redirects are not followed"
        ))),
        _ => match oauth_error(status, &reply.body) {
            Some(e) if status >= 400 => Err(Error::Rejected(Box::new(e))),
            _ if status >= 500 => Err(Error::ServerError(status)),
            _ => Err(Error::InvalidResponse(format!(
                "HTTP {status} without an OAuth error body"
            ))),
        },
    }
}

fn parse_success(body: &[u8], status: u16, now: u64) -> Result<Token, Error> {
    // Never quote the body: it may hold the token.
    let parsed = json(body).ok_or_else(|| {
        Error::InvalidResponse(format!(
            "HTTP {status} reply is not a JSON token response ({} bytes that do not parse as UTF-8 JSON)",
            body.len()
        ))
    })?;
    let Value::Object(obj) = parsed else {
        return Err(Error::InvalidResponse(format!(
            "HTTP {status} reply is not a JSON object"
        )));
    };
    let access_token = match text(&obj, "access_token")? {
        Some(t) if !t.trim().is_empty() => t,
        Some(_) => {
            return Err(Error::InvalidResponse(
                "`access_token` is empty; the stored token is kept".into(),
            ));
        }
        None => {
            return Err(Error::InvalidResponse(
                "no `access_token` in the reply; the stored token is kept".into(),
            ));
        }
    };
    // Managed identities' App Service endpoint sends only `expires_on` (Unix seconds).
    let expires_in = match seconds(&obj, "expires_in")? {
        Some(s) => Some(s),
        None => seconds(&obj, "expires_on")?.map(|at| at.saturating_sub(now)),
    };
    let outcome = Outcome {
        // RFC 6749 requires token_type, but servers that omit it mean Bearer.
        token_type: text(&obj, "token_type")?
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "Bearer".into()),
        expires_in,
        expires_at: expires_in.map(|s| now.saturating_add(s)),
        ext_expires_in: seconds(&obj, "ext_expires_in")?,
        refresh_in: seconds(&obj, "refresh_in")?,
        scope: text(&obj, "scope")?,
    };
    Ok(Token {
        access_token,
        outcome,
    })
}

/// Replaces each of `secrets` in `text` by `[redacted]`: a hostile server could echo the
/// client secret back in its error description.
pub fn redact(mut text: String, secrets: &[&str]) -> String {
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(*s) {
            text = text.replace(*s, "[redacted]");
        }
    }
    text
}

/// Redacts the given secret values from every text `e` carries.
pub fn redacted(e: Error, secrets: &[&str]) -> Error {
    e.map_text(|t| redact(t, secrets))
}

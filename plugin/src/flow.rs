//! One refresh, written against a small capability trait so that it runs natively in tests
//! and inside the component over wasi:http and the host's secrets.

use crate::jwt::{self, Thumbprints};
use crate::oauth::{
    self, ClientAuth, Credentials, Endpoint, Error, HttpReply, HttpRequest, Outcome, Proof,
    Request, SigningAlg,
};

pub use tokenwarden_contract::role;

/// What a refresh needs from its environment.
pub trait Env {
    /// Reads a bound secret.
    fn secret(&self, role: &str) -> Result<Option<String>, Error>;
    /// Writes a bound secret.
    fn store(&self, role: &str, value: &str, expires_at: Option<u64>) -> Result<(), Error>;
    /// Sends a request and returns the reply with its body capped at
    /// [`oauth::MAX_REPLY_BYTES`] (+1 byte, so that oversize is detectable).
    fn send(&self, request: &HttpRequest) -> Result<HttpReply, Error>;
    /// Unix seconds now.
    fn now(&self) -> u64;
    /// The thumbprints of the certificate bound to `role`; `None` when it is not bound or
    /// has no value.
    fn thumbprints(&self, role: &str) -> Result<Option<Thumbprints>, Error>;
    /// The host's signature of `data` with the key bound to `role`.
    fn sign(&self, role: &str, alg: SigningAlg, data: &[u8]) -> Result<Vec<u8>, Error>;
    /// 16 random bytes.
    fn random(&self) -> [u8; 16];
}

fn required(env: &impl Env, role: &str) -> Result<String, Error> {
    match env.secret(role)? {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(Error::missing(role)),
    }
}

/// Fetches a token and stores it only when the reply holds a non-empty one. Every error is
/// scrubbed of the credentials and the token before it leaves.
pub fn refresh(env: &impl Env, req: &Request) -> Result<Outcome, Error> {
    if req.client_auth == ClientAuth::ManagedIdentity {
        return managed_identity(env, req);
    }
    let client_id = required(env, role::CLIENT_ID)?;
    let tenant = if req.token_url.is_none() {
        Some(required(env, role::TENANT_ID)?)
    } else {
        None
    };
    let endpoint = oauth::endpoint(req, tenant.as_deref())?;
    let proof = match req.client_auth {
        ClientAuth::ClientSecretPost | ClientAuth::ClientSecretBasic => {
            Proof::Secret(required(env, role::CLIENT_SECRET)?)
        }
        ClientAuth::PrivateKeyJwt => {
            Proof::Assertion(signed_assertion(env, req, &client_id, &endpoint)?)
        }
        // Answered above, before a client id is required; here for the match.
        ClientAuth::ManagedIdentity => return managed_identity(env, req),
        ClientAuth::TlsClientAuth => Proof::Tls,
        // A token file ends with a newline more often than not.
        ClientAuth::ClientAssertion => {
            Proof::Assertion(required(env, role::CLIENT_ASSERTION)?.trim().to_string())
        }
    };
    let creds = Credentials { client_id, proof };
    let basic = oauth::basic_auth(&creds);
    let secrets = [creds.proof.value(), basic.as_str()];
    oauth::build_request(req, endpoint, &creds)
        .and_then(|http| exchange(env, &http, false))
        .map_err(|e| oauth::redacted(e, &secrets))
}

/// Sends `http`, and stores the token only when the reply holds one. With
/// `not_ready_retries`, a 404 or 410 is a retryable server error: a managed identity's
/// endpoint answers so while it is starting or being updated (IMDS documents retrying a
/// 410 for 70 seconds), which the daemon's backoff does.
fn exchange(env: &impl Env, http: &HttpRequest, not_ready_retries: bool) -> Result<Outcome, Error> {
    let reply = env.send(http)?;
    if not_ready_retries && matches!(reply.status, 404 | 410) {
        return Err(Error::ServerError(reply.status));
    }
    let token = oauth::parse_reply(&reply, env.now())?;
    env.store(
        role::ACCESS_TOKEN,
        &token.access_token,
        token.outcome.expires_at,
    )
    .map_err(|e| oauth::redacted(e, &[&token.access_token]))?;
    Ok(token.outcome)
}

/// A managed identity's token: no client credential, a user-assigned identity's client id
/// when `client-id` is bound, App Service's header when `identity-header` is.
fn managed_identity(env: &impl Env, req: &Request) -> Result<Outcome, Error> {
    let optional = |role| match env.secret(role) {
        Err(Error::AccessDenied(_)) => Ok(None),
        other => other.map(|v| v.filter(|v| !v.trim().is_empty())),
    };
    let client_id = optional(role::CLIENT_ID)?;
    let header = optional(role::IDENTITY_HEADER)?;
    let Some(url) = &req.token_url else {
        return Err(Error::BadRequest(
            "a managed identity needs the identity endpoint as `token-url`".into(),
        ));
    };
    let http = oauth::identity_request(
        req,
        oauth::Endpoint::parse(url)?,
        client_id.as_deref(),
        header.as_deref(),
    );
    let secrets = [header.as_deref().unwrap_or_default()];
    exchange(env, &http, true).map_err(|e| oauth::redacted(e, &secrets))
}

/// An RFC 7523 assertion for `endpoint`, signed by the host with the `private-key` role's
/// key and naming the `certificate` role's certificate when one is bound.
fn signed_assertion(
    env: &impl Env,
    req: &Request,
    client_id: &str,
    endpoint: &Endpoint,
) -> Result<String, Error> {
    let thumbprints = match env.thumbprints(role::CERTIFICATE) {
        // Not bound: the key is named by `kid`, or not at all.
        Err(Error::AccessDenied(_)) => None,
        other => other?,
    };
    let input = jwt::signing_input(&jwt::Claims {
        client_id,
        endpoint,
        alg: req.signing_alg,
        thumbprints: thumbprints.as_ref(),
        key_id: req.key_id.as_deref(),
        now: env.now(),
        nonce: env.random(),
    })?;
    let signature = env.sign(role::PRIVATE_KEY, req.signing_alg, input.as_bytes())?;
    Ok(jwt::compact(&input, &signature))
}

//! One refresh, written against a small capability trait so that it runs natively in tests
//! and inside the component over wasi:http and the host's secrets.

use crate::oauth::{self, Credentials, Error, HttpReply, HttpRequest, Outcome, Request};

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
    let client_id = required(env, role::CLIENT_ID)?;
    let client_secret = required(env, role::CLIENT_SECRET)?;
    let tenant = if req.token_url.is_none() {
        Some(required(env, role::TENANT_ID)?)
    } else {
        None
    };
    let creds = Credentials {
        client_id,
        client_secret,
    };
    let basic = oauth::basic_auth(&creds);
    let secrets = [creds.client_secret.as_str(), basic.as_str()];
    let result = (|| -> Result<Outcome, Error> {
        let endpoint = oauth::endpoint(req, tenant.as_deref())?;
        let http = oauth::build_request(req, endpoint, &creds)?;
        let reply = env.send(&http)?;
        let token = oauth::parse_reply(&reply, env.now())?;
        env.store(
            role::ACCESS_TOKEN,
            &token.access_token,
            token.outcome.expires_at,
        )
        .map_err(|e| oauth::redacted(e, &[&token.access_token]))?;
        Ok(token.outcome)
    })();
    result.map_err(|e| oauth::redacted(e, &secrets))
}

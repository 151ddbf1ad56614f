//! Managed-identity endpoints as Azure serves them: the Instance Metadata Service (`GET
//! /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`, which wants
//! `Metadata: true` and answers with every number as a string) and App Service's identity
//! endpoint (`GET /msi/token?api-version=2019-08-01&resource=...`, which wants the app's
//! `X-IDENTITY-HEADER` and answers with `expires_on` only). Queued faults apply to both,
//! so a client's handling of 404, 410, 429 and 5xx is testable offline.

use super::{EmulatorState, mint, next_fault};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use tokenwarden_contract::managed_identity::{APP_SERVICE_API_VERSION, IMDS_API_VERSION};

/// IMDS's token path.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// The path the emulator serves App Service's identity endpoint at.
pub const APP_SERVICE_PATH: &str = "/msi/token";

/// The client id a system-assigned identity's tokens carry here.
const SYSTEM_ASSIGNED: &str = "00000000-0000-4000-8000-000000000001";

fn refuse(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// What both endpoints check: the API version and a resource. The error is the
/// description of a 400 `invalid_request`.
fn resource<'q>(query: &'q HashMap<String, String>, version: &str) -> Result<&'q str, String> {
    if query.get("api-version").map(String::as_str) != Some(version) {
        return Err(format!(
            "Required query variable 'api-version' is missing or not {version}"
        ));
    }
    query
        .get("resource")
        .map(String::as_str)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| "Required query variable 'resource' is missing".to_string())
}

/// Mints a token for the emulator's first tenant: the identity's client id (or the
/// system-assigned one), the token, its lifetime, and Unix seconds now.
fn issue_for(
    state: &EmulatorState,
    query: &HashMap<String, String>,
    res: &str,
) -> (String, String, u64, u64) {
    let mut guard = state.lock();
    let inner = &mut *guard;
    let tenant = inner.config.tenants.first().cloned().unwrap_or_default();
    let client_id = query
        .get("client_id")
        .cloned()
        .unwrap_or_else(|| SYSTEM_ASSIGNED.to_string());
    let (token, lifetime) = mint(inner, client_id.clone(), &tenant, res);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (client_id, token, lifetime.as_secs(), now)
}

pub(super) async fn imds(
    State(state): State<EmulatorState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = next_fault(&state).await {
        return fault;
    }
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let res = match resource(&query, IMDS_API_VERSION) {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, "invalid_request", &why),
    };
    let (client_id, token, lifetime, now) = issue_for(&state, &query, res);
    Json(json!({
        "access_token": token,
        "client_id": client_id,
        "expires_in": lifetime.to_string(),
        "expires_on": (now + lifetime).to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": now.to_string(),
        "resource": res,
        "token_type": "Bearer",
    }))
    .into_response()
}

pub(super) async fn app_service(
    State(state): State<EmulatorState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = next_fault(&state).await {
        return fault;
    }
    let expected = state.lock().config.identity_header.clone();
    let presented = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if presented.is_none_or(|p| p != expected) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "The X-IDENTITY-HEADER is missing or wrong",
        );
    }
    let res = match resource(&query, APP_SERVICE_API_VERSION) {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, "invalid_request", &why),
    };
    let (client_id, token, lifetime, now) = issue_for(&state, &query, res);
    Json(json!({
        "access_token": token,
        "client_id": client_id,
        "expires_on": (now + lifetime).to_string(),
        "resource": res,
        "token_type": "Bearer",
    }))
    .into_response()
}

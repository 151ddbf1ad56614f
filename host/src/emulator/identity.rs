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

/// Which endpoint a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Imds,
    AppService,
}

pub(super) async fn imds(
    State(state): State<EmulatorState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&state, &query, &headers, Endpoint::Imds).await
}

pub(super) async fn app_service(
    State(state): State<EmulatorState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&state, &query, &headers, Endpoint::AppService).await
}

/// A queued fault, else the endpoint's own check (IMDS: `Metadata: true`; App Service:
/// its `X-IDENTITY-HEADER`), the API version and a resource, then a token in the
/// endpoint's reply shape.
async fn serve(
    state: &EmulatorState,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Response {
    if let Some(fault) = next_fault(state).await {
        return fault;
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let version = match endpoint {
        Endpoint::Imds if header("metadata") != Some("true") => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Required metadata header not specified",
            );
        }
        Endpoint::Imds => IMDS_API_VERSION,
        Endpoint::AppService => {
            let expected = state.lock().config.identity_header.clone();
            if header("x-identity-header").is_none_or(|p| p != expected) {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized_client",
                    "The X-IDENTITY-HEADER is missing or wrong",
                );
            }
            APP_SERVICE_API_VERSION
        }
    };
    if query.get("api-version").map(String::as_str) != Some(version) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("Required query variable 'api-version' is missing or not {version}"),
        );
    }
    let Some(res) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let client_id = query
        .get("client_id")
        .cloned()
        .unwrap_or_else(|| SYSTEM_ASSIGNED.to_string());
    let (token, lifetime) = {
        let mut guard = state.lock();
        let tenant = guard.config.tenants.first().cloned().unwrap_or_default();
        mint(&mut guard, client_id.clone(), &tenant, res)
    };
    let lifetime = lifetime.as_secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Every number a string, as both services send them; App Service sends no
    // `expires_in`.
    let mut reply = json!({
        "access_token": token,
        "client_id": client_id,
        "expires_on": (now + lifetime).to_string(),
        "resource": res,
        "token_type": "Bearer",
    });
    if endpoint == Endpoint::Imds {
        reply["expires_in"] = lifetime.to_string().into();
        reply["ext_expires_in"] = lifetime.to_string().into();
        reply["not_before"] = now.to_string().into();
    }
    Json(reply).into_response()
}

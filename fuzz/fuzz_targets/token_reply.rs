//! The plugin's token-reply parser against arbitrary status, `Retry-After` and body.
//! Invariants: no panic; a success always carries a non-blank token; an error never quotes
//! the body's `access_token`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwarden_plugin::oauth::{HttpReply, parse_reply};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let split = (data[2] as usize).min(data.len() - 3);
    let retry_after = (split > 0).then(|| String::from_utf8_lossy(&data[3..3 + split]).into_owned());
    let body = data[3 + split..].to_vec();
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned))
        .filter(|t| t.len() >= 4);
    match parse_reply(&HttpReply { status, retry_after, body }, 1_700_000_000) {
        Ok(t) => assert!(!t.access_token.trim().is_empty()),
        Err(e) => {
            if let Some(token) = token {
                assert!(!format!("{e:?}").contains(&token), "an error quoted the token");
            }
        }
    }
});

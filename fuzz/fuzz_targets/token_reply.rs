//! The plugin's token-reply parser against arbitrary status, `Retry-After` and body, at
//! three clocks (the epoch, today, the end of `u64`). Invariants: no panic; a success always
//! carries a non-blank token and an expiry that saturates rather than wraps; an error never
//! quotes the body's `access_token`; a `Retry-After` is never read as further away than it
//! says (delay-seconds saturate at `u32::MAX`, an HTTP date counts from the clock, a past
//! one is 0).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwarden_plugin::oauth::{Error, HttpReply, http_date, parse_reply};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let split = (data[2] as usize).min(data.len() - 3);
    let retry_after = (split > 0).then(|| String::from_utf8_lossy(&data[3..3 + split]).into_owned());
    let body = data[3 + split..].to_vec();
    let parse = |body: Vec<u8>| {
        parse_reply(
            &HttpReply {
                status,
                retry_after: retry_after.clone(),
                body,
            },
            1_700_000_000,
        )
    };
    for now in [0, u64::MAX] {
        let reply = HttpReply {
            status,
            retry_after: retry_after.clone(),
            body: body.clone(),
        };
        match parse_reply(&reply, now) {
            Ok(t) => {
                if let (Some(at), Some(secs)) = (t.outcome.expires_at, t.outcome.expires_in) {
                    assert_eq!(at, now.saturating_add(secs));
                }
            }
            Err(Error::Throttled(Some(secs))) => {
                let v = retry_after.as_deref().unwrap_or_default().trim();
                match v.parse::<u64>() {
                    Ok(n) => assert_eq!(u64::from(secs), n.min(u64::from(u32::MAX))),
                    Err(_) => {
                        let at = http_date(v).expect("a date was read");
                        assert!(at <= 253_402_300_800, "a date past 9999: {v}");
                        assert_eq!(u64::from(secs), at.saturating_sub(now).min(u64::from(u32::MAX)));
                    }
                }
            }
            Err(_) => {}
        }
    }
    match parse(body.clone()) {
        Ok(t) => assert!(!t.access_token.trim().is_empty()),
        Err(e) => {
            // A leak is error text that follows the token: the same reply with another token
            // of the same length must give an error without it. (A token that merely equals
            // part of the error's own words, such as "rverError(53", is no leak.)
            let Some((token, quoted)) = plain_token(&body) else {
                return;
            };
            let text = format!("{e:?}");
            if text.contains(&token) {
                let other = format!("\"{}\"", "Q".repeat(token.len()));
                let body2 = String::from_utf8_lossy(&body).replacen(&quoted, &other, 1);
                let text2 = format!("{:?}", parse(body2.into_bytes()).err());
                assert!(text2.contains(&token), "an error quoted the token: {text}");
            }
        }
    }
});

/// The `access_token` string when it appears verbatim (unescaped) in the body.
fn plain_token(body: &[u8]) -> Option<(String, String)> {
    let token = serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("access_token")?
        .as_str()?
        .to_owned();
    let quoted = serde_json::to_string(&token).ok()?;
    let text = std::str::from_utf8(body).ok()?;
    (token.len() >= 4 && text.contains(&quoted) && !token.contains('Q')).then_some((token, quoted))
}

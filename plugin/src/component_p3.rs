//! The component shell for WASI 0.3 (`refresher-p3`): the same flow as the 0.2 shell, over
//! `wasi:http/client@0.3.0`. The export is lifted synchronously (its WIT type is `async`,
//! so it may block) and each request runs under `block_on`, so `flow.rs` stays the same for
//! both worlds.

use crate::flow::{self, Env};
use crate::oauth::{self, HttpReply, HttpRequest};
use exports::tokenwarden::refresh::async_action::{self as action, Guest};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use tokenwarden::refresh::{secrets, signing};
use wasi::http0_3_0::client;
use wasi::http0_3_0::types::{ErrorCode, Fields, Method, Request, Response, Scheme, Trailers};
use wit_bindgen::StreamResult;

wit_bindgen::generate!({
    path: "../wit",
    world: "tokenwarden:refresh/refresher-p3",
    async: ["-export:tokenwarden:refresh/async-action@0.2.0#refresh"],
    generate_all,
});

shell!(Request);

fn now() -> u64 {
    u64::try_from(wasi::clocks0_3_0::system_clock::now().seconds).unwrap_or(0)
}

fn random_bytes() -> Vec<u8> {
    wasi::random0_3_0::random::get_random_bytes(16)
}

fn send(request: &HttpRequest) -> Result<HttpReply, oauth::Error> {
    wit_bindgen::block_on(send_async(request))
}

/// Both futures to completion, polled in turn: the host reads the request body only while
/// `send` runs, so writing it first would wait forever.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                (ra, rb) = (x, y);
                Poll::Pending
            }
        }
    })
    .await
}

async fn send_async(request: &HttpRequest) -> Result<HttpReply, oauth::Error> {
    let origin = request.endpoint.origin();
    let bad = |what: &str| oauth::Error::BadRequest(format!("{origin}: {what}"));
    let headers = Fields::from_list(&request.headers).map_err(|_| bad("a header was refused"))?;
    let (mut body_tx, body_rx) = wit_stream::new::<u8>();
    let (trailers_tx, trailers_rx) =
        wit_future::new::<Result<Option<Trailers>, ErrorCode>>(|| Ok(None));
    let (out, _transmitted) = Request::new(headers, Some(body_rx), trailers_rx, None);
    address(&out, request)?;
    let body = request.body.clone();
    let write = async move {
        let unsent = body_tx.write_all(body).await;
        drop(body_tx);
        let _ = trailers_tx.write(Ok(None)).await;
        unsent.is_empty()
    };
    let (written, sent) = join(write, client::send(out)).await;
    let response = sent.map_err(|c| transport(&c, &origin))?;
    if !written {
        return Err(oauth::Error::Transport(format!(
            "{origin}: the request body could not be sent"
        )));
    }
    let status = response.get_status_code();
    let (retry_after, declared) = reply_headers(&response.get_headers())?;
    let (_done_tx, done_rx) = wit_future::new::<Result<(), ErrorCode>>(|| Ok(()));
    let (mut rx, trailers) = Response::consume_body(response, done_rx);
    let cap = oauth::MAX_REPLY_BYTES + 1;
    let mut buf = Vec::new();
    let mut ended = false;
    while buf.len() < cap && declared.is_none_or(|n| (buf.len() as u64) < n) {
        buf.reserve_exact((cap - buf.len()).min(16 * 1024));
        let (status, b) = rx.read(buf).await;
        buf = b;
        if !matches!(status, StreamResult::Complete(_)) {
            ended = true;
            break;
        }
    }
    drop(rx);
    if ended && let Err(code) = trailers.await {
        return Err(transport(&code, &origin));
    }
    Ok(HttpReply {
        status,
        retry_after,
        body: buf,
    })
}

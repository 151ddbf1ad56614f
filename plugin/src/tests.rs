//! Native unit tests of the OAuth core and the refresh flow.

use crate::flow::{self, Env, role};
use crate::oauth::*;
use std::cell::RefCell;
use std::collections::HashMap;

fn entra_request() -> Request {
    Request {
        scope: "https://graph.microsoft.com/.default".into(),
        authority: None,
        token_url: None,
        client_auth: ClientAuth::ClientSecretPost,
        extra_params: vec![],
        signing_alg: SigningAlg::PS256,
        key_id: None,
    }
}

fn creds() -> Credentials {
    Credentials {
        client_id: "id 1".into(),
        proof: Proof::Secret("s3cr~t+/=&x".into()),
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[test]
fn entra_endpoint_from_authority_and_tenant() {
    let e = endpoint(&entra_request(), Some("contoso.onmicrosoft.com")).unwrap();
    assert!(e.https);
    assert_eq!(e.authority, "login.microsoftonline.com");
    assert_eq!(
        e.path_and_query,
        "/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert!(e.is_entra());

    let mut req = entra_request();
    req.authority = Some("http://127.0.0.1:8421/".into());
    let e = endpoint(&req, Some("t1")).unwrap();
    assert_eq!(
        (e.https, e.authority.as_str(), e.path_and_query.as_str()),
        (false, "127.0.0.1:8421", "/t1/oauth2/v2.0/token")
    );
    assert!(!e.is_entra());
}

#[test]
fn token_url_overrides_authority_and_needs_no_tenant() {
    let mut req = entra_request();
    req.token_url = Some("https://idp.example.com:8443/oauth2/token?x=1".into());
    req.authority = Some("https://ignored".into());
    let e = endpoint(&req, None).unwrap();
    assert_eq!(e.authority, "idp.example.com:8443");
    assert_eq!(e.path_and_query, "/oauth2/token?x=1");
    assert_eq!(e.host(), "idp.example.com");
}

#[test]
fn hostile_tenants_and_urls_are_refused() {
    for tenant in ["", "../admin", "a/b", "t?x=1", "t#f", "a b", ".hidden"] {
        let err = endpoint(&entra_request(), Some(tenant)).unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{tenant}: {err:?}");
        // The tenant comes from a secret: it must not be quoted back.
        if tenant.len() > 3 {
            assert!(!format!("{err:?}").contains(tenant));
        }
    }
    for url in [
        "ftp://x/token",
        "https://user:pw@x/token",
        "https:///token",
        "https://x/t#frag",
        "x/token",
        "https://x y/t",
    ] {
        assert!(Endpoint::parse(url).is_err(), "{url}");
    }
}

#[test]
fn post_body_is_form_encoded_with_content_length() {
    let e = endpoint(&entra_request(), Some("t")).unwrap();
    let r = build_request(&entra_request(), e, &creds()).unwrap();
    let f = form(&r.body);
    assert_eq!(f["grant_type"], "client_credentials");
    assert_eq!(f["client_id"], "id 1");
    assert_eq!(f["client_secret"], "s3cr~t+/=&x");
    assert_eq!(f["scope"], "https://graph.microsoft.com/.default");
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        body.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"),
        "{body}"
    );
    let header = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    };
    assert_eq!(header("content-length"), Some(r.body.len().to_string()));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert!(header("authorization").is_none());
    // Debug output must not show the form (it holds the secret).
    assert!(!format!("{r:?}").contains("s3cr"));
}

#[test]
fn basic_auth_encodes_per_rfc6749_2_3_1() {
    let mut req = entra_request();
    req.client_auth = ClientAuth::ClientSecretBasic;
    let e = endpoint(&req, Some("t")).unwrap();
    let r = build_request(&req, e, &creds()).unwrap();
    let f = form(&r.body);
    assert!(!f.contains_key("client_secret") && !f.contains_key("client_id"));
    let auth = r
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .unwrap();
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ").unwrap())
        .unwrap();
    // Space becomes '+', reserved characters are percent-encoded before base64.
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "id+1:s3cr%7Et%2B%2F%3D%26x"
    );
}

#[test]
fn entra_scope_rule_applies_to_entra_only() {
    let mut req = entra_request();
    req.scope = "User.Read".into();
    let e = endpoint(&req, Some("t")).unwrap();
    assert!(matches!(
        build_request(&req, e, &creds()),
        Err(Error::BadRequest(_))
    ));
    req.token_url = Some("https://idp.example.com/token".into());
    let e = endpoint(&req, None).unwrap();
    assert!(build_request(&req, e, &creds()).is_ok());
    // Empty scope is left out for generic servers.
    req.scope.clear();
    let e = endpoint(&req, None).unwrap();
    assert!(!form(&build_request(&req, e, &creds()).unwrap().body).contains_key("scope"));
}

#[test]
fn extra_params_cannot_override_owned_ones() {
    let mut req = entra_request();
    req.token_url = Some("https://idp.example.com/token".into());
    req.extra_params = vec![("audience".into(), "https://api".into())];
    let e = endpoint(&req, None).unwrap();
    assert_eq!(
        form(&build_request(&req, e.clone(), &creds()).unwrap().body)["audience"],
        "https://api"
    );
    req.extra_params = vec![("grant_type".into(), "password".into())];
    assert!(matches!(
        build_request(&req, e, &creds()),
        Err(Error::BadRequest(_))
    ));
}

fn reply(status: u16, body: &str) -> HttpReply {
    HttpReply {
        status,
        retry_after: None,
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn success_with_numbers_or_strings() {
    let t = parse_reply(
        &reply(200, r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":"3599","refresh_in":1800,"access_token":"eyJ.x.y"}"#),
        1000,
    )
    .ok()
    .unwrap();
    assert_eq!(t.access_token, "eyJ.x.y");
    assert_eq!(t.outcome.expires_in, Some(3599));
    assert_eq!(t.outcome.expires_at, Some(4599));
    assert_eq!(t.outcome.ext_expires_in, Some(3599));
    assert_eq!(t.outcome.refresh_in, Some(1800));

    let t = parse_reply(
        &reply(200, r#"{"access_token":"a","expires_in":"60","scope":"s"}"#),
        0,
    )
    .ok()
    .unwrap();
    assert_eq!(
        (t.outcome.expires_in, t.outcome.token_type.as_str()),
        (Some(60), "Bearer")
    );
    assert_eq!(t.outcome.scope.as_deref(), Some("s"));

    let t = parse_reply(
        &reply(200, r#"{"access_token":"a","token_type":"bearer"}"#),
        0,
    )
    .ok()
    .unwrap();
    assert_eq!((t.outcome.expires_in, t.outcome.expires_at), (None, None));
}

#[test]
fn unusable_success_replies_are_invalid_and_never_quote_the_body() {
    for body in [
        r#"{"token_type":"Bearer","access_token":""}"#,
        r#"{"token_type":"Bearer","access_token":"   "}"#,
        r#"{"token_type":"Bearer"}"#,
        r#"{"access_token":"tok-canary","expires_in":"soon"}"#,
        r#"{"access_token":"tok-canary","expires_in":-5}"#,
        r#"{"access_token":"tok-canary""#,
        "<html>tok-canary</html>",
        "",
    ] {
        match parse_reply(&reply(200, body), 0) {
            Err(e @ Error::InvalidResponse(_)) => {
                assert!(!format!("{e:?}").contains("tok-canary"), "{e:?}")
            }
            Err(other) => panic!("{body}: {other:?}"),
            Ok(_) => panic!("{body}: accepted"),
        }
    }
}

#[test]
fn oversized_replies_are_refused() {
    let big = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(MAX_REPLY_BYTES));
    assert!(matches!(
        parse_reply(&reply(200, &big), 0),
        Err(Error::InvalidResponse(m)) if m.contains("larger")
    ));
}

#[test]
fn oauth_errors_keep_entra_diagnostics() {
    let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"timestamp":"2026-01-01 00:00:00Z","trace_id":"tr","correlation_id":"co","error_uri":"https://login.microsoftonline.com/error?code=7000215"}"#;
    let Err(Error::Rejected(e)) = parse_reply(&reply(401, body), 0) else {
        panic!("not rejected")
    };
    assert_eq!(e.status, 401);
    assert_eq!(e.error, "invalid_client");
    assert_eq!(e.error_codes, vec![7000215]);
    assert_eq!(e.trace_id.as_deref(), Some("tr"));
    assert_eq!(e.correlation_id.as_deref(), Some("co"));
    // Generic RFC 6749 §5.2 body.
    let Err(Error::Rejected(e)) = parse_reply(&reply(400, r#"{"error":"invalid_scope"}"#), 0)
    else {
        panic!("not rejected")
    };
    assert_eq!(
        (e.error.as_str(), e.error_codes.len()),
        ("invalid_scope", 0)
    );
}

#[test]
fn status_classes() {
    let mut r = reply(429, "");
    assert_eq!(parse_reply(&r, 0).err(), Some(Error::Throttled(None)));
    r.retry_after = Some(" 7 ".into());
    assert_eq!(parse_reply(&r, 0).err(), Some(Error::Throttled(Some(7))));
    // An HTTP-date: the seconds until then, 0 once it has passed.
    r.retry_after = Some("Wed, 21 Oct 2015 07:28:00 GMT".into());
    assert_eq!(
        parse_reply(&r, 1_445_412_470).err(),
        Some(Error::Throttled(Some(10)))
    );
    assert_eq!(
        parse_reply(&r, 1_445_412_490).err(),
        Some(Error::Throttled(Some(0)))
    );
    // Larger than 32 bits saturates (the host clamps it to its own maximum).
    r.retry_after = Some("99999999999999".into());
    assert_eq!(
        parse_reply(&r, 0).err(),
        Some(Error::Throttled(Some(u32::MAX)))
    );
    for garbage in [
        "-5",
        "1.5",
        "soon",
        "Wed, 21 Oct 2015 07:28:00 PST",
        "Wed, 32 Oct 2015 07:28:00 GMT",
    ] {
        r.retry_after = Some(garbage.into());
        assert_eq!(
            parse_reply(&r, 0).err(),
            Some(Error::Throttled(None)),
            "{garbage}"
        );
    }
    assert_eq!(
        parse_reply(&reply(503, "busy"), 0).err(),
        Some(Error::ServerError(503))
    );
    assert_eq!(
        parse_reply(&reply(500, ""), 0).err(),
        Some(Error::ServerError(500))
    );
    assert!(matches!(
        parse_reply(&reply(503, r#"{"error":"temporarily_unavailable"}"#), 0),
        Err(Error::Rejected(e)) if e.status == 503
    ));
    assert!(matches!(
        parse_reply(&reply(404, "nope"), 0),
        Err(Error::InvalidResponse(_))
    ));
    assert!(
        matches!(parse_reply(&reply(302, ""), 0), Err(Error::InvalidResponse(m)) if m.contains("redirect"))
    );
}

/// An in-memory environment that records what the flow did.
struct Fake {
    secrets: RefCell<HashMap<String, String>>,
    reply: Result<HttpReply, Error>,
    sent: RefCell<Vec<HttpRequest>>,
    writes: RefCell<Vec<(String, Option<u64>)>>,
    signed: RefCell<Vec<(SigningAlg, Vec<u8>)>>,
}

impl Fake {
    fn new(reply: Result<HttpReply, Error>) -> Self {
        let secrets = [
            (role::CLIENT_ID, "app"),
            (role::CLIENT_SECRET, "the-client-secret"),
            (role::TENANT_ID, "tenant"),
            (role::ACCESS_TOKEN, "old-token"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self {
            secrets: RefCell::new(secrets),
            reply,
            sent: RefCell::default(),
            writes: RefCell::default(),
            signed: RefCell::default(),
        }
    }
}

impl Env for Fake {
    fn secret(&self, role: &str) -> Result<Option<String>, Error> {
        Ok(self.secrets.borrow().get(role).cloned())
    }
    fn store(&self, role: &str, value: &str, expires_at: Option<u64>) -> Result<(), Error> {
        self.secrets.borrow_mut().insert(role.into(), value.into());
        self.writes.borrow_mut().push((role.into(), expires_at));
        Ok(())
    }
    fn send(&self, request: &HttpRequest) -> Result<HttpReply, Error> {
        self.sent.borrow_mut().push(request.clone());
        self.reply.clone()
    }
    fn now(&self) -> u64 {
        100
    }
    fn thumbprints(&self, role: &str) -> Result<Option<crate::jwt::Thumbprints>, Error> {
        match self.secrets.borrow().get(role) {
            Some(v) => Ok(Some(crate::jwt::Thumbprints {
                sha256: format!("{v}-256"),
                sha1: format!("{v}-1"),
            })),
            None => Err(Error::AccessDenied(role.into())),
        }
    }
    fn sign(&self, role: &str, alg: SigningAlg, data: &[u8]) -> Result<Vec<u8>, Error> {
        if !self.secrets.borrow().contains_key(role) {
            return Err(Error::AccessDenied(role.into()));
        }
        self.signed.borrow_mut().push((alg, data.to_vec()));
        Ok(b"signature".to_vec())
    }
    fn random(&self) -> [u8; 16] {
        [0xff; 16]
    }
}

#[test]
fn flow_stores_only_a_real_token() {
    let env = Fake::new(Ok(reply(
        200,
        r#"{"access_token":"new-token","expires_in":60}"#,
    )));
    let o = flow::refresh(&env, &entra_request()).unwrap();
    assert_eq!(o.expires_at, Some(160));
    assert_eq!(env.secrets.borrow()[role::ACCESS_TOKEN], "new-token");
    assert_eq!(
        *env.writes.borrow(),
        vec![(role::ACCESS_TOKEN.to_string(), Some(160))]
    );

    for bad in [
        Ok(reply(200, r#"{"access_token":""}"#)),
        Ok(reply(500, "")),
        Ok(reply(401, r#"{"error":"invalid_client"}"#)),
        Err(Error::Transport("reset".into())),
    ] {
        let env = Fake::new(bad);
        assert!(flow::refresh(&env, &entra_request()).is_err());
        assert_eq!(env.secrets.borrow()[role::ACCESS_TOKEN], "old-token");
        assert!(env.writes.borrow().is_empty());
    }
}

#[test]
fn flow_reports_missing_secrets_before_any_request() {
    for missing in [role::CLIENT_ID, role::CLIENT_SECRET, role::TENANT_ID] {
        let env = Fake::new(Ok(reply(200, "{}")));
        env.secrets.borrow_mut().insert(missing.into(), " ".into());
        assert_eq!(
            flow::refresh(&env, &entra_request()).err(),
            Some(Error::missing(missing))
        );
        assert!(env.sent.borrow().is_empty());
    }
}

#[test]
fn flow_redacts_echoed_secrets() {
    let body = r#"{"error":"invalid_client","error_description":"bad secret the-client-secret"}"#;
    let env = Fake::new(Ok(reply(401, body)));
    let err = flow::refresh(&env, &entra_request()).unwrap_err();
    let text = format!("{err:?}");
    assert!(!text.contains("the-client-secret"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
}

proptest::proptest! {
    /// Any status and body: a typed result, never a panic, and never the body's token in an
    /// error (a malformed success reply must not quote what it holds).
    #[test]
    fn parse_reply_never_panics_or_quotes_a_token(
        status in 100u16..600,
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        retry_after in proptest::option::of("\\PC{0,12}"),
    ) {
        let _ = parse_reply(&HttpReply { status, retry_after, body }, 1_000);
    }

    /// A success reply whose other fields are wrong names the field, not the token.
    #[test]
    fn a_bad_success_reply_never_quotes_its_token(
        token in "[A-Za-z0-9._-]{8,64}",
        expires in "\\PC{0,10}",
    ) {
        let body = serde_json::json!({"access_token": token, "expires_in": {"nested": expires}});
        let reply = HttpReply { status: 200, retry_after: None, body: body.to_string().into_bytes() };
        match parse_reply(&reply, 0) {
            Ok(_) => proptest::prop_assert!(false, "an object is not a number of seconds"),
            Err(e) => {
                let text = format!("{e:?}");
                proptest::prop_assert!(!text.contains(&token), "the error quoted the token");
            }
        }
    }

    /// `expires_in` as a number or a numeric string gives the same expiry.
    #[test]
    fn expires_in_number_or_string(secs in 0u64..10_000_000, now in 0u64..2_000_000_000) {
        for value in [serde_json::json!(secs), serde_json::json!(secs.to_string())] {
            let body = serde_json::json!({"access_token": "t", "expires_in": value});
            let reply = HttpReply { status: 200, retry_after: None, body: body.to_string().into_bytes() };
            let token = parse_reply(&reply, now).unwrap();
            proptest::prop_assert_eq!(token.outcome.expires_at, Some(now + secs));
        }
    }

    /// Whatever the credentials hold, the form and the Basic header decode back to them.
    #[test]
    fn credentials_round_trip_through_form_and_basic(id in "\\PC{1,40}", secret in "\\PC{1,60}") {
        let creds = Credentials { client_id: id.clone(), proof: Proof::Secret(secret.clone()) };
        let mut req = Request { token_url: Some("https://idp.example/token".into()), scope: "api".into(), ..entra_request() };
        let ep = endpoint(&req, None).unwrap();
        let http = build_request(&req, ep, &creds).unwrap();
        let f = form(&http.body);
        proptest::prop_assert_eq!(&f["client_id"], &id);
        proptest::prop_assert_eq!(&f["client_secret"], &secret);
        let length = http.headers.iter().find(|(n, _)| n == "content-length").unwrap();
        proptest::prop_assert_eq!(length.1.clone(), http.body.len().to_string().into_bytes());

        req.client_auth = ClientAuth::ClientSecretBasic;
        let ep = endpoint(&req, None).unwrap();
        let http = build_request(&req, ep, &creds).unwrap();
        let auth = http.headers.iter().find(|(n, _)| n == "authorization").unwrap();
        let b64 = std::str::from_utf8(&auth.1).unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
        let decoded = String::from_utf8(decoded).unwrap();
        let (u, p) = decoded.split_once(':').unwrap();
        let unescape = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().unwrap().1.into_owned();
        proptest::prop_assert_eq!(unescape(u), id);
        proptest::prop_assert_eq!(unescape(p), secret);
        proptest::prop_assert!(!form(&http.body).contains_key("client_secret"));
    }
}

proptest::proptest! {
    /// The hand-written HTTP-date parser agrees with the httpdate crate.
    #[test]
    fn http_dates_match_the_reference(secs in 0u64..253_402_300_799) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let text = httpdate::fmt_http_date(t);
        proptest::prop_assert_eq!(crate::oauth::http_date(&text), Some(secs), "{}", text);
    }

    /// The hand-written encoder agrees with the base64 crate on any input.
    #[test]
    fn base64_matches_the_reference(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        use base64::Engine as _;
        let ours = crate::oauth::base64_for_tests(&bytes);
        proptest::prop_assert_eq!(ours, base64::engine::general_purpose::STANDARD.encode(&bytes));
    }
}

/// A JSON value of any type, nested a little, strings with escapes and any characters.
fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e300f64..1e300).prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
        "[\"\\\\/\u{1}-\u{1f}\u{7f}\u{2028}é😀]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What the reply parser must read from `v`, by serde_json (the reference): the token, its
/// type, `expires_in` and the OAuth error's code and codes.
fn reference(v: &serde_json::Value) -> (Option<String>, Option<String>, Option<Option<u64>>) {
    let text = |f: &str| v.get(f).and_then(|x| x.as_str()).map(str::to_string);
    let secs = match v.get("expires_in") {
        None | Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok().map(Some),
        Some(_) => None,
    };
    (text("access_token"), text("token_type"), secs)
}

use proptest::strategy::Strategy as _;

proptest::proptest! {
    /// The reply parser reads what serde_json reads: the same token, token type and expiry
    /// from any object, whatever else it holds, at any whitespace and key order.
    #[test]
    fn replies_read_as_serde_json_reads_them(
        extra in proptest::collection::btree_map("[a-z_]{1,14}", any_json(), 0..6),
        token in proptest::option::of(proptest::prop_oneof![
            3 => "\\PC{0,40}".prop_map(serde_json::Value::from),
            1 => any_json(),
        ]),
        token_type in proptest::option::of(proptest::prop_oneof![
            3 => "[A-Za-z]{0,8}".prop_map(serde_json::Value::from),
            1 => any_json(),
        ]),
        expires_in in proptest::option::of(proptest::prop_oneof![
            3 => proptest::prelude::any::<u64>().prop_map(serde_json::Value::from),
            1 => (0u64..100_000).prop_map(|n| serde_json::Value::from(format!(" {n}"))),
            1 => (0f64..1e25).prop_map(serde_json::Value::from),
            1 => any_json(),
        ]),
        pretty in proptest::prelude::any::<bool>(),
    ) {
        let mut obj: serde_json::Map<String, serde_json::Value> = extra.into_iter().collect();
        for (k, v) in [("access_token", token), ("token_type", token_type), ("expires_in", expires_in)] {
            if let Some(v) = v {
                obj.insert(k.into(), v);
            }
        }
        let v = serde_json::Value::Object(obj);
        let body = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        let got = parse_reply(&HttpReply { status: 200, retry_after: None, body: body.into_bytes() }, 0);
        let (token, token_type, secs) = reference(&v);
        let type_ok = !matches!(v.get("token_type"), Some(t) if !t.is_null() && !t.is_string());
        match (&token, secs, type_ok) {
            (Some(t), Some(secs), true) if !t.trim().is_empty() => {
                let got = got.expect("a usable reply");
                proptest::prop_assert_eq!(&got.access_token, t);
                proptest::prop_assert_eq!(got.outcome.expires_in, secs);
                let want = token_type.filter(|t| !t.is_empty()).unwrap_or_else(|| "Bearer".into());
                proptest::prop_assert_eq!(got.outcome.token_type, want);
            }
            _ => proptest::prop_assert!(got.is_err(), "{:?}", v),
        }
    }

    /// An error body's code and diagnostic codes are read as serde_json reads them.
    #[test]
    fn error_bodies_read_as_serde_json_reads_them(
        code in "\\PC{1,30}",
        codes in proptest::collection::vec(any_json(), 0..5),
        description in proptest::option::of(any_json()),
    ) {
        let v = serde_json::json!({"error": code, "error_codes": codes, "error_description": description});
        let body = serde_json::to_string(&v).unwrap().into_bytes();
        let Err(Error::Rejected(e)) = parse_reply(&HttpReply { status: 400, retry_after: None, body }, 0) else {
            return Err(proptest::test_runner::TestCaseError::fail("not read as an OAuth error"));
        };
        proptest::prop_assert_eq!(&e.error, &code);
        let want: Vec<u32> = codes.iter().filter_map(|c| u32::try_from(c.as_u64()?).ok()).collect();
        proptest::prop_assert_eq!(&e.error_codes, &want);
        proptest::prop_assert_eq!(e.description.clone(), description.and_then(|d| d.as_str().map(str::to_string)));
    }
}

/// `expires_in` at the edges: 0, 1, the largest u64, one past it, a float, out of any range,
/// negative, and with a unit attached. Past u64 saturates (the host clamps it to
/// `max_token_lifetime`); a number JSON cannot hold, a negative or a unit is refused.
#[test]
fn expires_in_at_the_edges() {
    let secs = |v: &str| {
        let body = format!(r#"{{"access_token":"t","expires_in":{v}}}"#);
        parse_reply(&reply(200, &body), 0).map(|t| t.outcome.expires_in)
    };
    assert_eq!(secs("0").unwrap(), Some(0));
    assert_eq!(secs("1").unwrap(), Some(1));
    assert_eq!(secs("18446744073709551615").unwrap(), Some(u64::MAX));
    assert_eq!(secs("18446744073709551616").unwrap(), Some(u64::MAX));
    assert_eq!(secs("3599.9").unwrap(), Some(3599));
    assert_eq!(secs("1e3").unwrap(), Some(1000));
    assert_eq!(secs("null").unwrap(), None);
    assert_eq!(secs("\"18446744073709551615\"").unwrap(), Some(u64::MAX));
    for bad in [
        "-1",
        "-0.5",
        "1e400",
        "\"3599s\"",
        "\"1h\"",
        "\"18446744073709551616\"",
        "true",
    ] {
        assert!(secs(bad).is_err(), "{bad}");
    }
}

fn b64url_json(part: &str) -> serde_json::Value {
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The assertion the fake sent, split into header, claims and signature.
fn sent_assertion(
    env: &Fake,
) -> (
    serde_json::Value,
    serde_json::Value,
    String,
    HashMap<String, String>,
) {
    let body = form(&env.sent.borrow()[0].body);
    let jwt = body["client_assertion"].clone();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let (header, claims) = (b64url_json(parts[0]), b64url_json(parts[1]));
    let signed = &env.signed.borrow()[0].1;
    assert_eq!(signed, format!("{}.{}", parts[0], parts[1]).as_bytes());
    (header, claims, parts[2].to_string(), body)
}

#[test]
fn a_private_key_jwt_assertion_has_rfc7523_claims_and_the_certificate_thumbprint() {
    let env = Fake::new(Ok(reply(200, r#"{"access_token":"new-token"}"#)));
    env.secrets.borrow_mut().remove(role::CLIENT_SECRET);
    for (r, v) in [(role::PRIVATE_KEY, "key"), (role::CERTIFICATE, "cert")] {
        env.secrets.borrow_mut().insert(r.into(), v.into());
    }
    let req = Request {
        client_auth: ClientAuth::PrivateKeyJwt,
        ..entra_request()
    };
    flow::refresh(&env, &req).unwrap();
    let (header, claims, signature, body) = sent_assertion(&env);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5t#S256"], "cert-256");
    assert!(header.get("x5t").is_none() && header.get("kid").is_none());
    let aud = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token";
    assert_eq!(claims["aud"], aud);
    assert_eq!(
        (claims["iss"].as_str(), claims["sub"].as_str()),
        (Some("app"), Some("app"))
    );
    assert_eq!(
        (claims["iat"].as_u64(), claims["nbf"].as_u64()),
        (Some(100), Some(100))
    );
    assert_eq!(
        claims["exp"].as_u64(),
        Some(100 + tokenwarden_contract::assertion::LIFETIME_SECS)
    );
    // Version-4 UUID from the random bytes, version and variant bits set.
    assert_eq!(claims["jti"], "ffffffff-ffff-4fff-bfff-ffffffffffff");
    assert_eq!(signature, "c2lnbmF0dXJl");
    assert_eq!(body["client_id"], "app");
    assert_eq!(
        body["client_assertion_type"],
        tokenwarden_contract::assertion::JWT_BEARER
    );
    assert!(!body.contains_key("client_secret"));
    assert_eq!(env.signed.borrow()[0].0, SigningAlg::PS256);
}

#[test]
fn rs256_names_the_certificate_by_sha1_and_a_key_id_is_escaped_json() {
    let env = Fake::new(Ok(reply(200, r#"{"access_token":"new-token"}"#)));
    for (r, v) in [(role::PRIVATE_KEY, "key"), (role::CERTIFICATE, "cert")] {
        env.secrets.borrow_mut().insert(r.into(), v.into());
    }
    env.secrets
        .borrow_mut()
        .insert(role::CLIENT_ID.into(), "a\"b\\c\u{1}".into());
    let req = Request {
        client_auth: ClientAuth::PrivateKeyJwt,
        signing_alg: SigningAlg::RS256,
        key_id: Some("k\"1".into()),
        ..entra_request()
    };
    flow::refresh(&env, &req).unwrap();
    let (header, claims, _, _) = sent_assertion(&env);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], "cert-1");
    assert!(header.get("x5t#S256").is_none());
    assert_eq!(header["kid"], "k\"1");
    assert_eq!(claims["iss"], "a\"b\\c\u{1}");
}

#[test]
fn entra_without_a_certificate_is_refused_before_signing_but_another_server_takes_a_kid() {
    let env = Fake::new(Ok(reply(200, r#"{"access_token":"new-token"}"#)));
    env.secrets
        .borrow_mut()
        .insert(role::PRIVATE_KEY.into(), "key".into());
    let req = Request {
        client_auth: ClientAuth::PrivateKeyJwt,
        ..entra_request()
    };
    match flow::refresh(&env, &req) {
        Err(Error::BadRequest(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(env.signed.borrow().is_empty() && env.sent.borrow().is_empty());

    let req = Request {
        token_url: Some("https://idp.example/token?x=1".into()),
        scope: "api".into(),
        signing_alg: SigningAlg::ES256,
        key_id: Some("key-1".into()),
        ..req
    };
    flow::refresh(&env, &req).unwrap();
    let (header, claims, _, _) = sent_assertion(&env);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "key-1");
    assert!(header.get("x5t#S256").is_none());
    assert_eq!(claims["aud"], "https://idp.example/token?x=1");
}

#[test]
fn a_federated_assertion_is_sent_trimmed_and_scrubbed_from_an_echoing_error() {
    let assertion = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2ln";
    let echo =
        format!(r#"{{"error":"invalid_client","error_description":"bad assertion {assertion}"}}"#);
    let env = Fake::new(Ok(reply(401, &echo)));
    env.secrets.borrow_mut().remove(role::CLIENT_SECRET);
    env.secrets
        .borrow_mut()
        .insert(role::CLIENT_ASSERTION.into(), format!("{assertion}\n"));
    let req = Request {
        client_auth: ClientAuth::ClientAssertion,
        ..entra_request()
    };
    let e = flow::refresh(&env, &req).unwrap_err();
    let body = form(&env.sent.borrow()[0].body);
    assert_eq!(body["client_assertion"], assertion);
    assert!(env.signed.borrow().is_empty());
    assert!(!format!("{e:?}").contains(assertion), "{e:?}");

    env.secrets
        .borrow_mut()
        .insert(role::CLIENT_ASSERTION.into(), " \n".into());
    assert_eq!(
        flow::refresh(&env, &req).unwrap_err(),
        Error::missing(role::CLIENT_ASSERTION)
    );
}

#[test]
fn a_tls_client_auth_form_names_the_client_and_carries_no_credential() {
    let env = Fake::new(Ok(reply(
        200,
        r#"{"access_token":"T","token_type":"Bearer"}"#,
    )));
    // No credential role is bound: the handshake is the proof.
    env.secrets.borrow_mut().remove(role::CLIENT_SECRET);
    let req = Request {
        client_auth: ClientAuth::TlsClientAuth,
        token_url: Some("https://mtls.idp.example/token".into()),
        ..entra_request()
    };
    flow::refresh(&env, &req).unwrap();
    let sent = &env.sent.borrow()[0];
    let body = form(&sent.body);
    assert_eq!(body["client_id"], "app");
    assert_eq!(body["grant_type"], "client_credentials");
    for absent in ["client_secret", "client_assertion", "client_assertion_type"] {
        assert!(!body.contains_key(absent), "{absent}: {body:?}");
    }
    assert!(!sent.headers.iter().any(|(n, _)| n == "authorization"));
    assert!(env.signed.borrow().is_empty());
    assert_eq!(env.secrets.borrow()[role::ACCESS_TOKEN], "T");
}

#[test]
fn assertion_parameters_cannot_be_overridden_by_extra_params() {
    for name in ["client_assertion", "client_assertion_type"] {
        let req = Request {
            extra_params: vec![(name.into(), "x".into())],
            ..entra_request()
        };
        let e = endpoint(&req, Some("t")).unwrap();
        assert!(matches!(
            build_request(&req, e, &creds()),
            Err(Error::BadRequest(_))
        ));
    }
}

fn identity_request_for(url: &str) -> Request {
    Request {
        client_auth: ClientAuth::ManagedIdentity,
        token_url: Some(url.into()),
        ..entra_request()
    }
}

#[test]
fn a_managed_identity_asks_by_get_with_the_resource_and_no_client_credential() {
    let env = Fake::new(Ok(reply(
        200,
        r#"{"access_token":"mi-token","expires_in":"86399","expires_on":"1800000000","token_type":"Bearer","resource":"https://graph.microsoft.com"}"#,
    )));
    let req = identity_request_for(
        "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01",
    );
    let o = flow::refresh(&env, &req).unwrap();
    assert_eq!(o.expires_in, Some(86399));
    let sent = env.sent.borrow()[0].clone();
    assert_eq!(sent.method, HttpMethod::Get);
    assert_eq!(
        sent.endpoint.path_and_query,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com&client_id=app"
    );
    assert!(sent.body.is_empty());
    assert!(
        sent.headers
            .contains(&("metadata".into(), b"true".to_vec()))
    );
    assert!(!sent.headers.iter().any(|(n, _)| n == "x-identity-header"));
    assert_eq!(env.secrets.borrow()[role::ACCESS_TOKEN], "mi-token");
}

#[test]
fn app_service_gets_its_header_and_expires_on_when_it_sends_no_expires_in() {
    let env = Fake::new(Ok(reply(
        200,
        r#"{"access_token":"mi-token","expires_on":"1100","resource":"r"}"#,
    )));
    env.secrets.borrow_mut().remove(role::CLIENT_ID);
    env.secrets
        .borrow_mut()
        .insert(role::IDENTITY_HEADER.into(), "the-identity-header".into());
    let o = flow::refresh(
        &env,
        &identity_request_for("http://127.0.0.1:41111/msi/token?api-version=2019-08-01"),
    )
    .unwrap();
    assert_eq!((o.expires_in, o.expires_at), (Some(1000), Some(1100)));
    let sent = env.sent.borrow()[0].clone();
    assert!(!sent.endpoint.path_and_query.contains("client_id"));
    assert!(
        sent.headers
            .contains(&("x-identity-header".into(), b"the-identity-header".to_vec()))
    );
}

#[test]
fn an_identity_endpoint_not_ready_is_retryable_and_its_header_never_echoed() {
    for (status, want) in [
        (404, Error::ServerError(404)),
        (410, Error::ServerError(410)),
    ] {
        let env = Fake::new(Ok(reply(status, "{}")));
        let e = flow::refresh(
            &env,
            &identity_request_for("http://169.254.169.254/t?api-version=1"),
        )
        .unwrap_err();
        assert_eq!(e, want);
        assert_eq!(env.secrets.borrow()[role::ACCESS_TOKEN], "old-token");
    }
    let env = Fake::new(Ok(reply(
        400,
        r#"{"error":"invalid_request","error_description":"bad header the-identity-header"}"#,
    )));
    env.secrets
        .borrow_mut()
        .insert(role::IDENTITY_HEADER.into(), "the-identity-header".into());
    let e = flow::refresh(&env, &identity_request_for("http://127.0.0.1:1/msi/token")).unwrap_err();
    assert!(!format!("{e:?}").contains("the-identity-header"), "{e:?}");
    // Without an endpoint there is nothing to ask.
    let req = Request {
        client_auth: ClientAuth::ManagedIdentity,
        ..entra_request()
    };
    assert!(matches!(
        flow::refresh(&env, &req),
        Err(Error::BadRequest(_))
    ));
}

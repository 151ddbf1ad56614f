//! What the two component shells share. The p2 `action` and the p3 `async-action` carry the
//! same WIT types, but each world's bindings are their own Rust types, so the shared code is
//! a macro expanded inside each shell (next to its `generate!`) rather than generic code.
//!
//! A shell invoking [`shell!`] provides `fn send(&HttpRequest) -> Result<HttpReply,
//! oauth::Error>`, `fn now() -> u64`, `fn random_bytes() -> Vec<u8>` and, in scope, its
//! world's `action`, `Guest`, `secrets`, `signing` and wasi:http `ErrorCode`, `Fields`,
//! `Method` and `Scheme`; it names its outgoing request type.

/// Expands the export, the error conversions and the [`crate::flow::Env`] of a shell.
macro_rules! shell {
    ($request:ty) => {
        /// Sets method, scheme, authority and path of an outgoing request (`$request`, the
        /// world's own type; the setters are the same in both).
        fn address(out: &$request, request: &HttpRequest) -> Result<(), oauth::Error> {
            let bad = |what: &str| {
                oauth::Error::BadRequest(format!("{}: {what}", request.endpoint.origin()))
            };
            let method = match request.method {
                oauth::HttpMethod::Post => Method::Post,
                oauth::HttpMethod::Get => Method::Get,
            };
            out.set_method(&method).map_err(|_| bad("method"))?;
            let scheme = if request.endpoint.https {
                Scheme::Https
            } else {
                Scheme::Http
            };
            out.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
            out.set_authority(Some(&request.endpoint.authority))
                .map_err(|_| bad("invalid authority"))?;
            out.set_path_with_query(Some(&request.endpoint.path_and_query))
                .map_err(|_| bad("invalid path"))
        }

        struct Component;
        export!(Component);

        impl Guest for Component {
            fn refresh(req: action::Request) -> Result<action::Outcome, action::Error> {
                let req = oauth::Request {
                    scope: req.scope,
                    authority: req.authority,
                    token_url: req.token_url,
                    client_auth: match req.client_auth {
                        action::ClientAuth::ClientSecretPost => oauth::ClientAuth::ClientSecretPost,
                        action::ClientAuth::ClientSecretBasic => {
                            oauth::ClientAuth::ClientSecretBasic
                        }
                        action::ClientAuth::PrivateKeyJwt => oauth::ClientAuth::PrivateKeyJwt,
                        action::ClientAuth::ClientAssertion => oauth::ClientAuth::ClientAssertion,
                        action::ClientAuth::ManagedIdentity => oauth::ClientAuth::ManagedIdentity,
                        action::ClientAuth::TlsClientAuth => oauth::ClientAuth::TlsClientAuth,
                    },
                    extra_params: req.extra_params,
                    signing_alg: match req.signing_alg {
                        action::SigningAlg::Ps256 => oauth::SigningAlg::PS256,
                        action::SigningAlg::Rs256 => oauth::SigningAlg::RS256,
                        action::SigningAlg::Es256 => oauth::SigningAlg::ES256,
                    },
                    key_id: req.key_id,
                };
                flow::refresh(&Wasi, &req)
                    .map(|o| action::Outcome {
                        token_type: o.token_type,
                        expires_in: o.expires_in,
                        expires_at: o.expires_at,
                        ext_expires_in: o.ext_expires_in,
                        refresh_in: o.refresh_in,
                        scope: o.scope,
                    })
                    .map_err(to_wit)
            }
        }

        fn to_wit(e: oauth::Error) -> action::Error {
            use action::Error as W;
            use oauth::Error as E;
            match e {
                E::MissingSecret { role, .. } => W::MissingSecret(role),
                E::AccessDenied(s) => W::AccessDenied(s),
                E::SecretStore(s) => W::SecretStore(s),
                E::EgressDenied(s) => W::EgressDenied(s),
                E::Transport(s) => W::Transport(s),
                E::Throttled(s) => W::Throttled(s),
                E::ServerError(s) => W::ServerError(s),
                E::Rejected(o) => W::Rejected(action::OauthError {
                    status: o.status,
                    error: o.error,
                    description: o.description,
                    error_codes: o.error_codes,
                    trace_id: o.trace_id,
                    correlation_id: o.correlation_id,
                }),
                E::InvalidResponse(s) => W::InvalidResponse(s),
                E::BadRequest(s) => W::BadRequest(s),
            }
        }

        fn from_secrets(e: secrets::Error) -> oauth::Error {
            match e {
                secrets::Error::AccessDenied(role) => oauth::Error::AccessDenied(role),
                secrets::Error::Unavailable(msg) => oauth::Error::SecretStore(msg),
            }
        }

        fn from_signing(e: signing::Error) -> oauth::Error {
            match e {
                signing::Error::AccessDenied(role) => oauth::Error::AccessDenied(role),
                signing::Error::Unusable(msg) => oauth::Error::BadRequest(msg),
                signing::Error::Unavailable(msg) => oauth::Error::SecretStore(msg),
            }
        }

        /// The real environment: the host's secrets and signatures, and wasi:http.
        struct Wasi;

        impl Env for Wasi {
            fn secret(&self, role: &str) -> Result<Option<String>, oauth::Error> {
                secrets::get(role).map_err(from_secrets)
            }

            fn store(
                &self,
                role: &str,
                value: &str,
                expires_at: Option<u64>,
            ) -> Result<(), oauth::Error> {
                secrets::set(role, value, expires_at).map_err(from_secrets)
            }

            fn send(&self, request: &HttpRequest) -> Result<HttpReply, oauth::Error> {
                send(request)
            }

            fn now(&self) -> u64 {
                now()
            }

            fn thumbprints(
                &self,
                role: &str,
            ) -> Result<Option<crate::jwt::Thumbprints>, oauth::Error> {
                Ok(signing::certificate(role)
                    .map_err(from_signing)?
                    .map(|t| crate::jwt::Thumbprints {
                        sha256: t.sha256,
                        sha1: t.sha1,
                    }))
            }

            fn sign(
                &self,
                role: &str,
                alg: oauth::SigningAlg,
                data: &[u8],
            ) -> Result<Vec<u8>, oauth::Error> {
                let alg = match alg {
                    oauth::SigningAlg::PS256 => signing::Algorithm::Ps256,
                    oauth::SigningAlg::RS256 => signing::Algorithm::Rs256,
                    oauth::SigningAlg::ES256 => signing::Algorithm::Es256,
                };
                signing::sign(role, alg, data).map_err(from_signing)
            }

            fn random(&self) -> [u8; 16] {
                let mut out = [0; 16];
                let bytes = random_bytes();
                let n = bytes.len().min(16);
                out[..n].copy_from_slice(&bytes[..n]);
                out
            }
        }

        /// A reply's `Retry-After` and declared `Content-Length`; a declared length over
        /// the cap is refused before any of the body is read.
        fn reply_headers(headers: &Fields) -> Result<(Option<String>, Option<u64>), oauth::Error> {
            let first = |name: &str| headers.get(name).into_iter().next();
            let retry_after = first("retry-after").and_then(|v| String::from_utf8(v).ok());
            let declared = first("content-length")
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > oauth::MAX_REPLY_BYTES as u64) {
                return Err(oauth::Error::InvalidResponse(format!(
                    "reply body larger than {} bytes",
                    oauth::MAX_REPLY_BYTES
                )));
            }
            Ok((retry_after, declared))
        }

        fn transport(code: &ErrorCode, origin: &str) -> oauth::Error {
            match code {
                // Refused by the host's policy: by origin, or by the address the name
                // resolved to.
                ErrorCode::HttpRequestDenied => oauth::Error::EgressDenied(format!(
                    "{origin}, which is not in the job's allowed_hosts"
                )),
                ErrorCode::DestinationIpProhibited => oauth::Error::EgressDenied(format!(
                    "{origin}, whose name resolves only to loopback, private or link-local addresses (list the address's own origin in allowed_hosts to reach it)"
                )),
                other => oauth::Error::Transport(format!("{origin}: {}", code_name(other))),
            }
        }

        /// The WIT name of an error code. Hand-written because the derived `Debug` of the
        /// whole enum, payloads included, costs several KB of component size.
        fn code_name(code: &ErrorCode) -> String {
            use ErrorCode as E;
            let name = match code {
                E::DnsTimeout => "DNS-timeout",
                E::DnsError(p) => {
                    return format!("DNS-error {}", p.rcode.as_deref().unwrap_or(""));
                }
                E::DestinationNotFound => "destination-not-found",
                E::DestinationUnavailable => "destination-unavailable",
                E::DestinationIpProhibited => "destination-IP-prohibited",
                E::DestinationIpUnroutable => "destination-IP-unroutable",
                E::ConnectionRefused => "connection-refused",
                E::ConnectionTerminated => "connection-terminated",
                E::ConnectionTimeout => "connection-timeout",
                E::ConnectionReadTimeout => "connection-read-timeout",
                E::ConnectionWriteTimeout => "connection-write-timeout",
                E::ConnectionLimitReached => "connection-limit-reached",
                E::TlsProtocolError => "TLS-protocol-error",
                E::TlsCertificateError => "TLS-certificate-error",
                E::TlsAlertReceived(_) => "TLS-alert-received",
                E::HttpRequestDenied => "HTTP-request-denied",
                E::HttpRequestLengthRequired => "HTTP-request-length-required",
                E::HttpRequestBodySize(_) => "HTTP-request-body-size",
                E::HttpRequestMethodInvalid => "HTTP-request-method-invalid",
                E::HttpRequestUriInvalid => "HTTP-request-URI-invalid",
                E::HttpRequestUriTooLong => "HTTP-request-URI-too-long",
                E::HttpRequestHeaderSectionSize(_) => "HTTP-request-header-section-size",
                E::HttpRequestHeaderSize(_) => "HTTP-request-header-size",
                E::HttpRequestTrailerSectionSize(_) => "HTTP-request-trailer-section-size",
                E::HttpRequestTrailerSize(_) => "HTTP-request-trailer-size",
                E::HttpResponseIncomplete => "HTTP-response-incomplete",
                E::HttpResponseHeaderSectionSize(_) => "HTTP-response-header-section-size",
                E::HttpResponseHeaderSize(_) => "HTTP-response-header-size",
                E::HttpResponseBodySize(_) => "HTTP-response-body-size",
                E::HttpResponseTrailerSectionSize(_) => "HTTP-response-trailer-section-size",
                E::HttpResponseTrailerSize(_) => "HTTP-response-trailer-size",
                E::HttpResponseTransferCoding(_) => "HTTP-response-transfer-coding",
                E::HttpResponseContentCoding(_) => "HTTP-response-content-coding",
                E::HttpResponseTimeout => "HTTP-response-timeout",
                E::HttpUpgradeFailed => "HTTP-upgrade-failed",
                E::HttpProtocolError => "HTTP-protocol-error",
                E::LoopDetected => "loop-detected",
                E::ConfigurationError => "configuration-error",
                E::InternalError(m) => {
                    return format!("internal-error {}", m.as_deref().unwrap_or(""));
                }
            };
            name.to_string()
        }
    };
}

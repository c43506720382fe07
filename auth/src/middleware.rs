//! The axum middleware that guards a group of routes with one scope.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use crate::{Auth, Scope, TENANT_HEADER};

/// The state of [`require`]: which tokens, and what the guarded routes do.
#[derive(Clone)]
pub struct RequireScope {
    pub auth: Auth,
    pub scope: Scope,
}

/// Refuses a request whose credential does not allow the routes' scope, and sets `X-Scope-OrgID` to the
/// tenant the credential acts for, so that handlers read the tenant from one place whether authentication
/// is on or not. With authentication disabled the request passes untouched.
///
/// Use as `route_layer(axum::middleware::from_fn_with_state(RequireScope { .. }, require))`.
///
/// A WebSocket handshake that offered its credential as subprotocols ([`crate::WEBSOCKET_PROTOCOL`]) is
/// answered with `Sec-WebSocket-Protocol: lumen.bearer`, which the browser requires; the handler behind
/// needs to know nothing of it.
pub async fn require(State(guard): State<RequireScope>, mut req: Request, next: Next) -> Response {
    let echo = crate::offers_websocket_credential(req.headers());
    let answer = |mut resp: Response| {
        if echo && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(crate::WEBSOCKET_PROTOCOL));
        }
        resp
    };
    match guard.auth.authorize(req.headers(), guard.scope) {
        Ok(None) => answer(next.run(req).await),
        Ok(Some(tenant)) => {
            // A validated tenant id is ASCII without control characters, so it is always a valid header.
            if let Ok(v) = HeaderValue::from_str(tenant.as_str()) {
                req.headers_mut().insert(TENANT_HEADER, v);
            }
            answer(next.run(req).await)
        }
        Err(denied) => {
            let mut resp = (denied.status(), format!("{denied}\n")).into_response();
            if denied.is_unauthenticated() {
                // The web UI asks for the token in its own form: a Basic challenge would make the browser
                // open its login box over it, so its requests (marked `X-Lumen-UI`) get a Bearer one.
                let challenge = if req.headers().contains_key("x-lumen-ui") {
                    "Bearer realm=\"lumen\""
                } else {
                    "Basic realm=\"lumen\", charset=\"UTF-8\""
                };
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            resp
        }
    }
}

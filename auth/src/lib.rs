//! Who may do what on `lumen server`.
//!
//! A client presents a token, either as `Authorization: Bearer <token>` or as HTTP basic auth with the
//! tenant as user name and the token as password (the two forms Grafana's data sources, Prometheus' remote
//! write, Promtail/Alloy, Vector, the OpenTelemetry exporters and `lumen agent` can send). Each token is
//! allowed a set of tenants (or every tenant, `*`) and a set of [`Scope`]s. [`Auth::authorize`] turns the
//! headers of a request into the tenant it acts for, or a [`Denied`] that says what was wrong.
//!
//! A browser cannot put headers on a WebSocket, so a WebSocket handshake without an `Authorization`
//! header may carry its credential as subprotocols instead, as Kubernetes' API server takes them: it
//! offers [`WEBSOCKET_PROTOCOL`] (`lumen.bearer`) and one of `base64url.bearer.authorization.lumen.<token>`
//! or `base64url.basic.authorization.lumen.<tenant:token>` (base64url without padding, since `=` may not
//! appear in a subprotocol), and the server answers with `lumen.bearer` alone, never the credential.
//!
//! Tokens are kept as their SHA-256 only ([`TokenSet`], parsed from the token file), so the file that
//! lists them is not itself a secret. A token is 32 random bytes, so a plain hash is enough: there is
//! nothing to guess that a slow hash would protect.
//!
//! **Architecture Invariant:** this crate reads no files and no environment: the binary reads the token
//! file and hands its text to [`TokenSet::parse`], and calls [`Auth::replace`] when the file changes.

mod middleware;
mod tokens;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use parking_lot::RwLock;
use store::model::Tenant;

pub use middleware::{RequireScope, require};
pub use tokens::{Grant, Tenants, TokenSet, entry_toml, hash_hex, new_token, parse_tenants};

/// The header that names the tenant, as in Loki.
pub const TENANT_HEADER: &str = "X-Scope-OrgID";

/// The WebSocket subprotocol a browser offers to say that another of its subprotocols is its credential;
/// [`require`] answers a successful handshake with this one (a browser fails a handshake whose answer
/// names none of the subprotocols it offered).
pub const WEBSOCKET_PROTOCOL: &str = "lumen.bearer";

/// The subprotocol that carries a bearer token: the prefix, then the token in base64url.
const WEBSOCKET_BEARER: &str = "base64url.bearer.authorization.lumen.";
/// The subprotocol that carries basic credentials: the prefix, then `tenant:token` in base64url.
const WEBSOCKET_BASIC: &str = "base64url.basic.authorization.lumen.";

/// What a request does, and so what its token must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Queries: LogQL, PromQL, SQL, labels, series, tail, the server's own `/metrics`.
    Read,
    /// Ingest on every protocol.
    Write,
    /// Flush, compact and the other operations under `/api/v1/admin/`.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// # Errors
    /// The unknown name, and the known ones.
    pub fn parse(name: &str) -> Result<Scope, String> {
        match name.trim() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?}: the scopes are read, write and admin")),
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }
}

/// Why a request was refused. The messages tell the client what to send instead; they never echo the
/// credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header (401).
    Missing,
    /// An `Authorization` header that is neither Bearer nor Basic, or does not decode (401).
    Malformed(&'static str),
    /// A WebSocket credential subprotocol that does not decode (401).
    MalformedProtocol(&'static str),
    /// A token this server does not know (401).
    UnknownToken,
    /// The token may not do this (403).
    Scope { scope: Scope, allowed: String },
    /// The token may not act for this tenant (403).
    Tenant { tenant: String, allowed: String },
    /// The tenant named by the request is not a valid tenant id (400).
    BadTenant(String),
}

impl Denied {
    /// The HTTP status: 401 when the credential is missing or unknown, 403 when it may not do this, 400 for
    /// a malformed tenant.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Denied::Missing | Denied::Malformed(_) | Denied::MalformedProtocol(_) | Denied::UnknownToken => {
                http::StatusCode::UNAUTHORIZED
            }
            Denied::Scope { .. } | Denied::Tenant { .. } => http::StatusCode::FORBIDDEN,
            Denied::BadTenant(_) => http::StatusCode::BAD_REQUEST,
        }
    }

    /// True when the client did not authenticate (gRPC `UNAUTHENTICATED`, MQTT "bad user name or
    /// password"); false when it did but may not do this (`PERMISSION_DENIED`, "not authorized").
    pub fn is_unauthenticated(&self) -> bool {
        self.status() == http::StatusCode::UNAUTHORIZED
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing => f.write_str(
                "this server requires a token: send `Authorization: Bearer <token>`, or basic auth with the tenant as \
                 user name and the token as password (`lumen auth token` makes one)",
            ),
            Denied::Malformed(what) => {
                write!(f, "the Authorization header {what}: send `Bearer <token>` or basic auth")
            }
            Denied::MalformedProtocol(what) => write!(
                f,
                "the WebSocket credential {what}: offer the subprotocols `{WEBSOCKET_PROTOCOL}` and \
                 `{WEBSOCKET_BEARER}<token in base64url>`"
            ),
            Denied::UnknownToken => f.write_str(
                "the token is not known to this server: check it against server.auth_file (or LUMEN_AUTH_TOKEN)",
            ),
            Denied::Scope { scope, allowed } => {
                write!(f, "the token does not have the {} scope (it has: {allowed})", scope.name())
            }
            Denied::Tenant { tenant, allowed } => {
                write!(f, "the token may not use tenant {tenant:?} (it may use: {allowed})")
            }
            Denied::BadTenant(e) => write!(f, "invalid tenant: {e}"),
        }
    }
}

impl std::error::Error for Denied {}

/// The tokens a server accepts, replaceable while it runs. Cheap to clone; every clone sees a
/// replacement. [`Auth::disabled`] accepts everything and leaves the tenant to `X-Scope-OrgID`.
#[derive(Clone, Default)]
pub struct Auth(Option<Arc<RwLock<Arc<TokenSet>>>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes only, but a count says all a log line needs.
        write!(f, "Auth {{ enabled: {}, tokens: {} }}", self.is_enabled(), self.token_count())
    }
}

impl Auth {
    /// No authentication: every request is allowed, and its tenant is what it names.
    pub fn disabled() -> Auth {
        Auth(None)
    }

    /// Authentication against `tokens`.
    pub fn new(tokens: TokenSet) -> Auth {
        Auth(Some(Arc::new(RwLock::new(Arc::new(tokens)))))
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Swaps in a new set of tokens (the token file changed); requests already authorized are not affected.
    /// Does nothing when authentication is disabled.
    pub fn replace(&self, tokens: TokenSet) {
        if let Some(cell) = &self.0 {
            *cell.write() = Arc::new(tokens);
        }
    }

    /// How many tokens are accepted now (0 when disabled).
    pub fn token_count(&self) -> usize {
        self.0.as_ref().map_or(0, |cell| cell.read().len())
    }

    /// The tenant a request with these headers acts for, when its credential allows `scope` there.
    /// `Ok(None)` when authentication is disabled: the caller reads `X-Scope-OrgID` as before.
    ///
    /// The tenant is the `X-Scope-OrgID` header when the request sends one, else the basic-auth user name,
    /// else the token's first tenant (`default` for a token of every tenant).
    ///
    /// The credential is the `Authorization` header; a WebSocket handshake without one may offer it as
    /// subprotocols instead (see the crate's documentation).
    ///
    /// # Errors
    /// [`Denied`], saying what was missing or not allowed.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Option<Tenant>, Denied> {
        let Some(cell) = &self.0 else { return Ok(None) };
        let (user, token) = match headers.get(http::header::AUTHORIZATION) {
            Some(header) => parse_authorization(header.to_str().map_err(|_| Denied::Malformed("is not ASCII"))?)?,
            None => websocket_credential(headers)?.ok_or(Denied::Missing)?,
        };
        let requested = match headers.get(TENANT_HEADER) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| Denied::BadTenant(format!("{TENANT_HEADER} is not valid ASCII")))?
                    .trim()
                    .to_string(),
            ),
            None => user.filter(|u| !u.is_empty()),
        };
        let tokens = cell.read().clone();
        tokens.check(&token, requested.as_deref(), scope).map(Some)
    }

    /// The tenant of a user name and password pair (MQTT CONNECT, or basic auth decoded elsewhere): the user
    /// name is the tenant (the token's first tenant when empty) and the password the token.
    ///
    /// # Errors
    /// [`Denied`]; when authentication is disabled, [`Denied::UnknownToken`], since there are no tokens.
    pub fn login(&self, user: &str, password: &str, scope: Scope) -> Result<Tenant, Denied> {
        let Some(cell) = &self.0 else { return Err(Denied::UnknownToken) };
        let tokens = cell.read().clone();
        tokens.check(password, (!user.is_empty()).then_some(user), scope)
    }
}

/// Splits an `Authorization` header into (basic-auth user, token).
fn parse_authorization(header: &str) -> Result<(Option<String>, String), Denied> {
    let (scheme, rest) = header.trim().split_once(' ').ok_or(Denied::Malformed("has no scheme"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(Denied::Malformed("has an empty bearer token"));
        }
        Ok((None, rest.to_string()))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| Denied::Malformed("holds basic credentials that are not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| Denied::Malformed("holds basic credentials that are not UTF-8"))?;
        let (user, password) =
            decoded.split_once(':').ok_or(Denied::Malformed("holds basic credentials without a ':'"))?;
        if password.is_empty() {
            return Err(Denied::Malformed("holds basic credentials without a password (the token)"));
        }
        Ok((Some(user.to_string()), password.to_string()))
    } else {
        Err(Denied::Malformed("uses a scheme other than Bearer and Basic"))
    }
}

/// True when the request is a WebSocket handshake that offers [`WEBSOCKET_PROTOCOL`].
pub(crate) fn offers_websocket_credential(headers: &HeaderMap) -> bool {
    let upgrade = headers.get(http::header::UPGRADE).and_then(|v| v.to_str().ok());
    upgrade.is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && offered_protocols(headers).any(|p| p == WEBSOCKET_PROTOCOL)
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The (basic-auth user, token) a WebSocket handshake offers as subprotocols, `None` when it offers none.
fn websocket_credential(headers: &HeaderMap) -> Result<Option<(Option<String>, String)>, Denied> {
    if !offers_websocket_credential(headers) {
        return Ok(None);
    }
    let decode = |b64: &str| {
        // Padding cannot be sent (`=` is not allowed in a subprotocol), but a client may add it anyway.
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(Denied::MalformedProtocol("is not base64url of UTF-8 text"))
    };
    for protocol in offered_protocols(headers) {
        if let Some(b64) = protocol.strip_prefix(WEBSOCKET_BEARER) {
            let token = decode(b64)?;
            if token.is_empty() {
                return Err(Denied::MalformedProtocol("holds an empty token"));
            }
            return Ok(Some((None, token)));
        }
        if let Some(b64) = protocol.strip_prefix(WEBSOCKET_BASIC) {
            let pair = decode(b64)?;
            let (user, token) = pair.split_once(':').ok_or(Denied::MalformedProtocol("holds no ':'"))?;
            if token.is_empty() {
                return Err(Denied::MalformedProtocol("holds no token after the ':'"));
            }
            return Ok(Some((Some(user.to_string()), token.to_string())));
        }
    }
    Ok(None)
}

use base64::Engine;
use http::{HeaderMap, HeaderValue};

use crate::{Auth, Denied, Scope, TokenSet, entry_toml, hash_hex, new_token};

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn file_with(tokens: &[(&str, &[&str], &[Scope])]) -> (String, Vec<String>) {
    let mut text = String::from("# tokens\n");
    let mut plain = Vec::new();
    for (name, tenants, scopes) in tokens {
        let t = new_token().unwrap();
        let tenants: Vec<String> = tenants.iter().map(|s| s.to_string()).collect();
        text.push_str(&entry_toml(name, &hash_hex(&t), &tenants, scopes, "2026-12-06T00:00:00Z"));
        plain.push(t);
    }
    (text, plain)
}

#[test]
fn tokens_are_random_and_only_their_hash_is_written() {
    let (text, plain) = file_with(&[("a", &["team-a"], &[Scope::Read]), ("b", &["*"], &[Scope::Write])]);
    assert_ne!(plain[0], plain[1]);
    assert!(plain[0].starts_with("lumen_") && plain[0].len() == 6 + 64, "{}", plain[0]);
    assert!(!text.contains(&plain[0]) && !text.contains(&plain[1]));
    let set = TokenSet::parse(&text).unwrap();
    assert_eq!(set.len(), 2);
}

#[test]
fn the_tenant_comes_from_the_credential_and_may_only_be_one_it_allows() {
    let (text, t) = file_with(&[
        ("grafana", &["team-a", "team-b"], &[Scope::Read]),
        ("shipper", &["team-a"], &[Scope::Write]),
        ("ops", &["*"], &[Scope::Read, Scope::Write, Scope::Admin]),
    ]);
    let auth = Auth::new(TokenSet::parse(&text).unwrap());
    let bearer = |tok: &str| ("authorization", format!("Bearer {tok}"));
    let org = |t: &str| ("X-Scope-OrgID", t.to_string());

    // No header: the token's first tenant; `*` tokens: default.
    let got = auth.authorize(&headers(&[bearer(&t[0])]), Scope::Read).unwrap().unwrap();
    assert_eq!(got.as_str(), "team-a");
    let got = auth.authorize(&headers(&[bearer(&t[2])]), Scope::Admin).unwrap().unwrap();
    assert_eq!(got.as_str(), "default");
    // A tenant it may use, named by the header or by basic auth.
    let got = auth.authorize(&headers(&[bearer(&t[0]), org("team-b")]), Scope::Read).unwrap().unwrap();
    assert_eq!(got.as_str(), "team-b");
    let got = auth.authorize(&headers(&[("authorization", basic("team-b", &t[0]))]), Scope::Read).unwrap().unwrap();
    assert_eq!(got.as_str(), "team-b");
    // The header wins over the basic-auth user name, and must be allowed too.
    let err =
        auth.authorize(&headers(&[("authorization", basic("team-a", &t[0])), org("team-c")]), Scope::Read).unwrap_err();
    assert!(matches!(&err, Denied::Tenant { tenant, .. } if tenant == "team-c"), "{err}");
    assert_eq!(err.status(), 403);
    // Scopes.
    let err = auth.authorize(&headers(&[bearer(&t[0])]), Scope::Write).unwrap_err();
    assert_eq!(err.status(), 403);
    assert!(err.to_string().contains("write scope") && err.to_string().contains("it has: read"), "{err}");
    let err = auth.authorize(&headers(&[bearer(&t[1]), org("team-b")]), Scope::Write).unwrap_err();
    assert!(err.to_string().contains("team-b") && err.to_string().contains("team-a"), "{err}");
    // Missing, unknown and malformed credentials are 401s that never echo the credential.
    for (h, want) in [
        (headers(&[]), "requires a token"),
        (headers(&[bearer("lumen_0000")]), "not known"),
        (headers(&[("authorization", "Token abc".to_string())]), "scheme"),
        (headers(&[("authorization", "Basic !!!".to_string())]), "base64"),
        (headers(&[("authorization", basic("team-a", ""))]), "without a password"),
    ] {
        let err = auth.authorize(&h, Scope::Read).unwrap_err();
        assert_eq!(err.status(), 401, "{err}");
        assert!(err.to_string().contains(want), "{err}");
        assert!(!err.to_string().contains("lumen_0000"));
    }
    let err = auth.authorize(&headers(&[bearer(&t[2]), org("../etc")]), Scope::Read).unwrap_err();
    assert_eq!(err.status(), 400);
    // MQTT-style login: user name = tenant, password = token.
    assert_eq!(auth.login("team-a", &t[1], Scope::Write).unwrap().as_str(), "team-a");
    assert!(auth.login("team-b", &t[1], Scope::Write).is_err());
    assert!(auth.login("team-a", "wrong", Scope::Write).unwrap_err().is_unauthenticated());
}

#[test]
fn disabled_auth_passes_everything_and_replace_takes_effect_at_once() {
    let open = Auth::disabled();
    assert_eq!(open.authorize(&headers(&[]), Scope::Admin), Ok(None));
    let (text, t) = file_with(&[("a", &["team-a"], &[Scope::Read])]);
    let auth = Auth::new(TokenSet::parse(&text).unwrap());
    let clone = auth.clone();
    let h = headers(&[("authorization", format!("Bearer {}", t[0]))]);
    assert!(clone.authorize(&h, Scope::Read).is_ok());
    auth.replace(TokenSet::default());
    assert_eq!(clone.authorize(&h, Scope::Read), Err(Denied::UnknownToken));
}

#[test]
fn bad_token_files_say_which_token_is_wrong() {
    let cases = [
        ("[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\ntenants = [\"a\"]\nscopes = [\"read\"]\n", "64 hexadecimal"),
        (
            &format!(
                "[[tokens]]\nname = \"x\"\nsha256 = \"{}\"\ntenants = [\"a\"]\nscopes = [\"delete\"]\n",
                "0".repeat(64)
            ),
            "unknown scope",
        ),
        (
            &format!("[[tokens]]\nname = \"x\"\nsha256 = \"{}\"\ntenants = []\nscopes = [\"read\"]\n", "0".repeat(64)),
            "no tenants",
        ),
        (
            &format!(
                "[[tokens]]\nname = \"x\"\nsha256 = \"{}\"\ntenants = [\"*\", \"a\"]\nscopes = [\"read\"]\n",
                "0".repeat(64)
            ),
            "every tenant",
        ),
        (
            &format!("[[tokens]]\nsha256 = \"{}\"\ntenants = [\"a/b\"]\nscopes = [\"read\"]\n", "0".repeat(64)),
            "token #1",
        ),
        ("[[tokens]]\nname = \"x\"\nsecret = \"1\"\n", "unknown field"),
    ];
    for (text, want) in cases {
        let err = TokenSet::parse(text).unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
    let h = "0".repeat(64);
    let twice = format!(
        "[[tokens]]\nsha256 = \"{h}\"\ntenants = [\"a\"]\nscopes = [\"read\"]\n[[tokens]]\nsha256 = \"{h}\"\ntenants = [\"b\"]\nscopes = [\"read\"]\n"
    );
    assert!(TokenSet::parse(&twice).unwrap_err().contains("twice"));
    assert!(TokenSet::parse("").unwrap().is_empty());
}

/// Issue 19: a browser's WebSocket carries its credential as subprotocols, since it cannot send headers.
#[test]
fn a_websocket_handshake_may_offer_its_credential_as_subprotocols() {
    let (text, t) =
        file_with(&[("ui", &["team-a", "team-b"], &[Scope::Read]), ("shipper", &["team-a"], &[Scope::Write])]);
    let auth = Auth::new(TokenSet::parse(&text).unwrap());
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let ws =
        |protocols: String| headers(&[("upgrade", "websocket".to_string()), ("sec-websocket-protocol", protocols)]);
    let bearer = |tok: &str| format!("lumen.bearer, base64url.bearer.authorization.lumen.{}", b64(tok));
    let basic = |tenant: &str, tok: &str| {
        format!("lumen.bearer, base64url.basic.authorization.lumen.{}", b64(&format!("{tenant}:{tok}")))
    };

    let got = auth.authorize(&ws(bearer(&t[0])), Scope::Read).unwrap().unwrap();
    assert_eq!(got.as_str(), "team-a", "a bearer token acts for its first tenant");
    let got = auth.authorize(&ws(basic("team-b", &t[0])), Scope::Read).unwrap().unwrap();
    assert_eq!(got.as_str(), "team-b", "basic credentials name the tenant");
    // A wrong token is a 401, a tenant or scope the token lacks a 403, and no message holds the credential.
    for (h, status) in [
        (ws(bearer("lumen_0000")), 401),
        (ws(basic("team-a", "lumen_0000")), 401),
        (ws(basic("team-c", &t[0])), 403),
        (ws(bearer(&t[1])), 403),
        (ws("lumen.bearer, base64url.bearer.authorization.lumen.!!!".to_string()), 401),
        (ws(format!("lumen.bearer, base64url.basic.authorization.lumen.{}", b64("no-colon"))), 401),
        (ws("lumen.bearer".to_string()), 401),
    ] {
        let err = auth.authorize(&h, Scope::Read).unwrap_err();
        assert_eq!(err.status(), status, "{err}");
        assert!(!err.to_string().contains("lumen_0000") && !err.to_string().contains(&t[0]), "{err}");
    }
    // Without `lumen.bearer`, or outside a WebSocket handshake, the subprotocols are not a credential.
    let lone = format!("base64url.bearer.authorization.lumen.{}", b64(&t[0]));
    assert_eq!(auth.authorize(&ws(lone), Scope::Read), Err(Denied::Missing));
    let plain = headers(&[("sec-websocket-protocol", bearer(&t[0]))]);
    assert_eq!(auth.authorize(&plain, Scope::Read), Err(Denied::Missing));
    // The Authorization header, when sent, is the credential, as before.
    let mut h = ws(bearer(&t[0]));
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {}", "lumen_0000")).unwrap());
    assert_eq!(auth.authorize(&h, Scope::Read), Err(Denied::UnknownToken));
    assert!(crate::offers_websocket_credential(&ws(bearer(&t[0]))));
}

//! The token file: `[[tokens]]` tables of a name, the token's SHA-256, its tenants and its scopes.
//!
//! ```toml
//! [[tokens]]
//! name = "grafana"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! tenants = ["team-a", "team-b"]   # or ["*"] for every tenant
//! scopes = ["read"]                # read, write, admin
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;

use ring::rand::SecureRandom;
use serde::Deserialize;
use store::model::Tenant;

use crate::{Denied, Scope};

/// The tenants a token may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// `*`: every tenant.
    Any,
    /// These, in the file's order; the first is used when a request names none.
    Only(Vec<Tenant>),
}

/// What one token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// A label for logs and for people editing the file; never the token.
    pub name: String,
    pub tenants: Tenants,
    scopes: u8,
}

impl Grant {
    /// # Errors
    /// An empty scope or tenant list.
    pub fn new(name: &str, tenants: Tenants, scopes: &[Scope]) -> Result<Grant, String> {
        if scopes.is_empty() {
            return Err(format!("token {name:?} has no scopes: give it some of read, write, admin"));
        }
        if matches!(&tenants, Tenants::Only(t) if t.is_empty()) {
            return Err(format!("token {name:?} has no tenants: list them, or \"*\" for every tenant"));
        }
        Ok(Grant { name: name.to_string(), tenants, scopes: scopes.iter().fold(0, |bits, s| bits | s.bit()) })
    }

    /// Every tenant, every scope: the token of `LUMEN_AUTH_TOKEN`.
    pub fn everything(name: &str) -> Grant {
        Grant { name: name.to_string(), tenants: Tenants::Any, scopes: 7 }
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    fn scope_names(&self) -> String {
        Scope::ALL.iter().filter(|s| self.allows(**s)).map(|s| s.name()).collect::<Vec<_>>().join(", ")
    }

    fn tenant_names(&self) -> String {
        match &self.tenants {
            Tenants::Any => "*".to_string(),
            Tenants::Only(t) => t.iter().map(Tenant::as_str).collect::<Vec<_>>().join(", "),
        }
    }
}

/// The accepted tokens, by the SHA-256 of the token.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    by_hash: HashMap<[u8; 32], Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    tokens: Vec<FileToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    #[serde(default)]
    name: String,
    sha256: String,
    tenants: Vec<String>,
    scopes: Vec<String>,
    /// When `lumen auth token` made it; informational.
    #[serde(default)]
    #[allow(dead_code)]
    created: Option<String>,
}

impl TokenSet {
    /// Parses a token file.
    ///
    /// # Errors
    /// A message naming the token (by its position and name) and what is wrong with it.
    pub fn parse(text: &str) -> Result<TokenSet, String> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut set = TokenSet::default();
        for (i, t) in doc.tokens.into_iter().enumerate() {
            let label = if t.name.is_empty() { format!("#{}", i + 1) } else { t.name.clone() };
            let hash = parse_hash(&t.sha256).map_err(|e| format!("token {label}: {e}"))?;
            let scopes = t
                .scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("token {label}: {e}"))?;
            let tenants = parse_tenants(&t.tenants).map_err(|e| format!("token {label}: {e}"))?;
            let grant = Grant::new(&label, tenants, &scopes)?;
            if set.by_hash.insert(hash, grant).is_some() {
                return Err(format!("token {label}: the same sha256 is listed twice"));
            }
        }
        Ok(set)
    }

    /// Adds a token given in the clear (from the environment).
    pub fn insert_plain(&mut self, token: &str, grant: Grant) {
        self.by_hash.insert(sha256(token), grant);
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub(crate) fn check(&self, token: &str, requested: Option<&str>, scope: Scope) -> Result<Tenant, Denied> {
        let grant = self.by_hash.get(&sha256(token)).ok_or(Denied::UnknownToken)?;
        if !grant.allows(scope) {
            return Err(Denied::Scope { scope, allowed: grant.scope_names() });
        }
        let tenant = match (requested, &grant.tenants) {
            (Some(name), _) => Tenant::new(name).map_err(|e| Denied::BadTenant(e.to_string()))?,
            (None, Tenants::Only(list)) => list[0].clone(),
            (None, Tenants::Any) => Tenant::default_tenant(),
        };
        let allowed = match &grant.tenants {
            Tenants::Any => true,
            Tenants::Only(list) => list.contains(&tenant),
        };
        if allowed {
            Ok(tenant)
        } else {
            Err(Denied::Tenant { tenant: tenant.as_str().to_string(), allowed: grant.tenant_names() })
        }
    }
}

/// Parses tenant names as the token file and `lumen auth token --tenant` give them.
///
/// # Errors
/// An invalid tenant id, or `*` mixed with names.
pub fn parse_tenants(names: &[String]) -> Result<Tenants, String> {
    if names.iter().any(|t| t == "*") {
        return if names.len() == 1 {
            Ok(Tenants::Any)
        } else {
            Err("\"*\" (every tenant) cannot be listed with other tenants".to_string())
        };
    }
    names.iter().map(|t| Tenant::new(t).map_err(|e| e.to_string())).collect::<Result<_, _>>().map(Tenants::Only)
}

fn parse_hash(hex_text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut out)
        .map_err(|_| format!("sha256 must be 64 hexadecimal digits, not {:?}", hex_text))?;
    Ok(out)
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of a token, as the token file stores it.
pub fn hash_hex(token: &str) -> String {
    hex::encode(sha256(token))
}

/// A new random token: `lumen_` and 64 hexadecimal digits (32 bytes from the system's generator).
///
/// # Errors
/// When the system's random generator fails.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_string())?;
    Ok(format!("lumen_{}", hex::encode(bytes)))
}

/// The `[[tokens]]` table of a new token, as `lumen auth token` appends it to the token file.
pub fn entry_toml(name: &str, hash: &str, tenants: &[String], scopes: &[Scope], created: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let list = |items: Vec<String>| items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let mut out = String::from("\n[[tokens]]\n");
    let _ = writeln!(out, "name = {}", quote(name));
    let _ = writeln!(out, "sha256 = {}", quote(hash));
    let _ = writeln!(out, "tenants = [{}]", list(tenants.to_vec()));
    let _ = writeln!(out, "scopes = [{}]", list(scopes.iter().map(|s| s.name().to_string()).collect()));
    let _ = writeln!(out, "created = {}", quote(created));
    out
}

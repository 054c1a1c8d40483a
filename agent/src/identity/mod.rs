//! Agent identities the host can prove: API tokens, and X.509 client
//! certificates issued by the host's own CA ([`ca`]).
//!
//! A token is `mcpw_<id>_<secret>`: the id (8 random bytes, hex) finds the
//! identity, the secret (32 random bytes, hex) proves it. Only SHA-256 of
//! the secret is kept (a 256-bit random secret needs no slow hash: there is
//! nothing to guess), compared in constant time. Tokens are shown once,
//! expire (90 days unless told otherwise) and can be revoked.
//!
//! A burst of registrations by one uid (more than [`Sybil::max`] within
//! [`Sybil::window`] seconds) is sybil-like: the new identities are
//! flagged, audited, and start with lowered trust.
pub mod ca;
pub mod ca_cli;
pub mod cli;
pub mod store;

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// The prefix of every token.
pub const PREFIX: &str = "mcpw_";

/// How long a token lives unless told otherwise: 90 days.
pub const DEFAULT_TTL: u64 = 90 * 86_400;

/// A registered agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    /// The token's public part.
    #[serde(with = "hex_u64")]
    pub id: u64,
    /// SHA-256 of the token's secret.
    #[serde(with = "hex_32")]
    pub secret_hash: [u8; 32],
    #[serde(default)]
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None`: never.
    pub expires: Option<u64>,
    pub revoked: Option<u64>,
    /// The uid that registered it.
    pub registered_by: Option<u32>,
    /// Why it looks sybil-like, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged: Option<String>,
    /// What it may do with the daemon's API, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Scope>,
}

/// An API scope: `read` sees, `admin` also changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("{s:?}: an API scope is read or admin")),
        }
    }
}

/// Why a token was refused. The client is told only that it was refused;
/// the log and the audit record say why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("not a mcpwarden token (they look like mcpw_<16 hex>_<64 hex>)")]
    Malformed,
    #[error("no identity has this token's id")]
    Unknown,
    #[error("the token's secret is wrong")]
    Wrong,
    #[error("identity {name:?} was revoked")]
    Revoked { name: String },
    #[error("identity {name:?} expired")]
    Expired { name: String },
    #[error("the client certificate was not issued by this host's CA (see `mcpwarden ca list`)")]
    UnknownCertificate,
    #[error("client certificate {serial} of {name:?} was revoked")]
    CertificateRevoked { name: String, serial: String },
    #[error("client certificate {serial} of {name:?} expired")]
    CertificateExpired { name: String, serial: String },
}

/// A token as issued: shown once.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The (id, secret) of a token's text.
pub fn parse_token(text: &str) -> Result<(u64, [u8; 32]), AuthError> {
    let rest = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or(AuthError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    if id.len() != 16 || secret.len() != 64 {
        return Err(AuthError::Malformed);
    }
    let id = u64::from_str_radix(id, 16).map_err(|_| AuthError::Malformed)?;
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).map_err(|_| AuthError::Malformed)?;
    }
    Ok((id, bytes))
}

fn hash_secret(secret: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret).into()
}

/// Equality that takes the same time wherever the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Identity {
    /// A new identity and its token. `ttl`: seconds, `None` for never.
    pub fn issue(
        name: &str,
        roles: Vec<String>,
        now: u64,
        ttl: Option<u64>,
        registered_by: Option<u32>,
    ) -> Result<(Self, Token), getrandom::Error> {
        let mut random = [0u8; 40];
        getrandom::fill(&mut random)?;
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(&random[..8]);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&random[8..]);
        let id = u64::from_be_bytes(id_bytes);
        let token = Token(format!("{PREFIX}{id:016x}_{}", crate::store::hex(&secret)));
        Ok((
            Self {
                name: name.to_owned(),
                id,
                secret_hash: hash_secret(&secret),
                roles,
                created: now,
                expires: ttl.map(|t| now.saturating_add(t)),
                revoked: None,
                registered_by,
                flagged: None,
                api: None,
            },
            token,
        ))
    }

    /// Checks `secret` against this identity at `now`.
    pub fn check(&self, secret: &[u8; 32], now: u64) -> Result<(), AuthError> {
        if !ct_eq(&hash_secret(secret), &self.secret_hash) {
            return Err(AuthError::Wrong);
        }
        self.live(now)
    }

    /// Whether the identity may act at `now`: neither revoked nor expired.
    pub fn live(&self, now: u64) -> Result<(), AuthError> {
        if self.revoked.is_some() {
            return Err(AuthError::Revoked {
                name: self.name.clone(),
            });
        }
        if self.expires.is_some_and(|e| now >= e) {
            return Err(AuthError::Expired {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// The sybil rule: at most `max` registrations by one uid within
/// `window` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sybil {
    pub max: usize,
    pub window: u64,
}

impl Default for Sybil {
    /// Five registrations a minute.
    fn default() -> Self {
        Self { max: 5, window: 60 }
    }
}

impl Sybil {
    /// The flag for a registration that finds `recent` registrations by
    /// `uid` (this one included) within the window.
    #[must_use]
    pub fn judge(self, uid: Option<u32>, recent: usize) -> Option<String> {
        (recent > self.max).then(|| {
            let who = uid.map_or_else(|| "an unknown uid".to_owned(), |u| format!("uid {u}"));
            format!(
                "burst: {recent} identities registered by {who} within {} s (more than {})",
                self.window, self.max
            )
        })
    }
}

/// Identities in memory: what the daemon keeps, and what the
/// registration benchmark measures. The store ([`store`]) keeps the same
/// records on disk.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: HashMap<u64, Identity>,
    by_name: HashMap<String, u64>,
    recent: HashMap<Option<u32>, VecDeque<u64>>,
    pub sybil: Sybil,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("an identity named {0:?} exists (revoke it first, or pick another name)")]
    Taken(String),
    #[error("{0:?}: a name is 1-64 characters of letters, digits, '.', '-', '_'")]
    BadName(String),
    #[error("no randomness for the token: {0}")]
    Random(#[from] getrandom::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Checks an identity's name.
pub fn valid_name(name: &str) -> Result<(), RegisterError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(RegisterError::BadName(name.to_owned()))
    }
}

impl Registry {
    /// Registers `name`; returns its token (and whether it was flagged).
    pub fn register(
        &mut self,
        name: &str,
        roles: Vec<String>,
        now: u64,
        ttl: Option<u64>,
        uid: Option<u32>,
    ) -> Result<(Token, Option<String>), RegisterError> {
        valid_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(RegisterError::Taken(name.to_owned()));
        }
        let (mut identity, token) = Identity::issue(name, roles, now, ttl, uid)?;
        let times = self.recent.entry(uid).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= self.sybil.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        identity.flagged = self.sybil.judge(uid, times.len());
        let flag = identity.flagged.clone();
        self.by_name.insert(name.to_owned(), identity.id);
        self.by_id.insert(identity.id, identity);
        Ok((token, flag))
    }

    /// The identity a token proves at `now`.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<&Identity, AuthError> {
        let (id, secret) = parse_token(token)?;
        let identity = self.by_id.get(&id).ok_or(AuthError::Unknown)?;
        identity.check(&secret, now)?;
        Ok(identity)
    }

    /// Revokes `name` at `now`; false if there is no such identity.
    pub fn revoke(&mut self, name: &str, now: u64) -> bool {
        let Some(id) = self.by_name.get(name) else {
            return false;
        };
        if let Some(i) = self.by_id.get_mut(id) {
            i.revoked.get_or_insert(now);
        }
        true
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Hex text for a u64 in JSON.
pub(crate) mod hex_u64 {
    use serde::{Deserialize as _, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` signature
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// Hex text for 32 bytes in JSON.
mod hex_32 {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::store::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if text.len() != 64 {
            return Err(serde::de::Error::custom("a hash is 64 hex digits"));
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_proves_its_identity_and_nothing_else() {
        let mut reg = Registry::default();
        let (token, flag) = reg
            .register("ci-bot", vec!["builder".into()], 100, Some(10), Some(1000))
            .expect("register");
        assert!(flag.is_none());
        assert!(
            token.0.starts_with(PREFIX) && token.0.len() == 86,
            "{}",
            token.0
        );
        assert!(
            !format!("{token:?}").contains(&token.0[5..]),
            "Debug must not leak it"
        );
        let who = reg.authenticate(&token.0, 105).expect("valid");
        assert_eq!(who.name, "ci-bot");
        assert_eq!(who.roles, ["builder"]);
        // One flipped secret digit, an unknown id, junk, expiry, revocation.
        let mut wrong = token.0.clone();
        let last = wrong.pop().expect("digit");
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(reg.authenticate(&wrong, 105), Err(AuthError::Wrong));
        let other = format!("{PREFIX}{:016x}{}", 7, &token.0[21..]);
        assert_eq!(reg.authenticate(&other, 105), Err(AuthError::Unknown));
        for junk in ["", "Bearer x", "mcpw_zz_zz", &token.0[..40]] {
            assert_eq!(
                reg.authenticate(junk, 105),
                Err(AuthError::Malformed),
                "{junk}"
            );
        }
        assert!(matches!(
            reg.authenticate(&token.0, 110),
            Err(AuthError::Expired { .. })
        ));
        assert!(reg.revoke("ci-bot", 106));
        assert!(matches!(
            reg.authenticate(&token.0, 107),
            Err(AuthError::Revoked { .. })
        ));
        assert!(!reg.revoke("nobody", 107));
    }

    #[test]
    fn names_are_unique_and_plain() {
        let mut reg = Registry::default();
        reg.register("a", Vec::new(), 0, None, None).expect("a");
        assert!(matches!(
            reg.register("a", Vec::new(), 0, None, None),
            Err(RegisterError::Taken(_))
        ));
        for bad in ["", "with space", "semi;colon", &"x".repeat(65)] {
            assert!(matches!(
                reg.register(bad, Vec::new(), 0, None, None),
                Err(RegisterError::BadName(_))
            ));
        }
    }

    #[test]
    fn a_burst_from_one_uid_is_flagged_and_others_are_not() {
        let mut reg = Registry::default();
        for i in 0..5 {
            let (_, flag) = reg
                .register(&format!("a{i}"), Vec::new(), 1000 + i, None, Some(1000))
                .expect("register");
            assert!(flag.is_none());
        }
        let (_, other) = reg
            .register("b", Vec::new(), 1005, None, Some(1001))
            .expect("register");
        assert!(other.is_none(), "another uid is not part of the burst");
        let (_, flag) = reg
            .register("a5", Vec::new(), 1005, None, Some(1000))
            .expect("register");
        let flag = flag.expect("the sixth in a minute is flagged");
        assert!(flag.contains("uid 1000") && flag.contains('6'), "{flag}");
        // A minute later the window is clear again.
        let (_, later) = reg
            .register("a6", Vec::new(), 1070, None, Some(1000))
            .expect("register");
        assert!(later.is_none());
    }

    #[test]
    fn an_identity_survives_json() {
        let (i, _) = Identity::issue("x", vec!["r".into()], 5, None, Some(0)).expect("issue");
        let text = serde_json::to_string(&i).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert!(
            v["secret_hash"].is_string() && v["id"].is_string(),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Identity>(&text).expect("parse"), i);
    }
}

//! Identities in the store: tree `identities` (key: the token id,
//! big-endian), `identity_names` (name -> id of its live identity) and
//! `registrations` (uid, time, id: the sybil rule's window). Every change
//! is audited.
use serde_json::json;

use super::{AuthError, Identity, RegisterError, Scope, Sybil, Token, parse_token, valid_name};
use crate::{
    store::{Db, StoreError, audit},
    trust::{self, Kind, Signal},
};

const IDENTITIES: &str = "identities";
const NAMES: &str = "identity_names";
const REGISTRATIONS: &str = "registrations";

fn uid_key(uid: Option<u32>) -> [u8; 4] {
    uid.unwrap_or(u32::MAX).to_be_bytes()
}

/// The identity named `name` (its latest registration), if any.
pub fn by_name(db: &Db, name: &str) -> Result<Option<Identity>, StoreError> {
    let names = db.tree(NAMES)?;
    let Some(id) = names.get(name).map_err(|e| db.io(&e))? else {
        return Ok(None);
    };
    db.get(&db.tree(IDENTITIES)?, id)
}

/// The identity whose token id is `id`, if any.
pub fn by_id(db: &Db, id: u64) -> Result<Option<Identity>, StoreError> {
    db.get(&db.tree(IDENTITIES)?, id.to_be_bytes())
}

/// Registers `name` for `actor`; returns the identity and its token.
pub fn register(
    db: &Db,
    actor: &audit::Actor,
    name: &str,
    roles: Vec<String>,
    ttl: Option<u64>,
    api: Option<Scope>,
    sybil: Sybil,
) -> Result<(Identity, Token), RegisterError> {
    valid_name(name)?;
    if let Some(old) = by_name(db, name)?
        && old.revoked.is_none()
    {
        return Err(RegisterError::Taken(name.to_owned()));
    }
    let now = crate::store::unix_now();
    let (mut identity, token) = Identity::issue(name, roles, now, ttl, actor.uid)?;
    identity.api = api;
    let regs = db.tree(REGISTRATIONS)?;
    let mut from = uid_key(actor.uid).to_vec();
    from.extend_from_slice(
        &now.saturating_sub(sybil.window.saturating_sub(1))
            .to_be_bytes(),
    );
    let mut to = uid_key(actor.uid).to_vec();
    to.extend_from_slice(&u64::MAX.to_be_bytes());
    let recent = regs.range(from..to).count() + 1;
    identity.flagged = sybil.judge(actor.uid, recent);
    let mut reg_key = uid_key(actor.uid).to_vec();
    reg_key.extend_from_slice(&now.to_be_bytes());
    reg_key.extend_from_slice(&identity.id.to_be_bytes());
    regs.insert(reg_key, &[]).map_err(|e| db.io(&e))?;
    db.put(&db.tree(IDENTITIES)?, identity.id.to_be_bytes(), &identity)?;
    db.tree(NAMES)?
        .insert(name, &identity.id.to_be_bytes())
        .map_err(|e| db.io(&e))?;
    audit::append(
        db,
        actor.clone(),
        "identity.register",
        name,
        json!({
            "id": format!("{:016x}", identity.id),
            "roles": identity.roles,
            "expires": identity.expires,
            "api": identity.api,
        }),
    )?;
    if let Some(flag) = &identity.flagged {
        tracing::warn!("identity {name:?} flagged: {flag}");
        let mut t = trust::store::load(db, Kind::Agent, name)?;
        t.update(Signal::SybilBurst, trust::now_ms(), trust::Decay::default());
        trust::store::save(db, name, &t)?;
        audit::append(
            db,
            actor.clone(),
            "identity.flagged",
            name,
            json!({ "why": flag }),
        )?;
    }
    Ok((identity, token))
}

/// The identity `token` proves now. The outer error is the store's, the
/// inner one the token's.
pub fn authenticate(db: &Db, token: &str) -> Result<Result<Identity, AuthError>, StoreError> {
    let (id, secret) = match parse_token(token) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let Some(identity) = db.get::<Identity>(&db.tree(IDENTITIES)?, id.to_be_bytes())? else {
        return Ok(Err(AuthError::Unknown));
    };
    Ok(identity
        .check(&secret, crate::store::unix_now())
        .map(|()| identity))
}

/// Revokes `name`; `None` when there is no such identity.
pub fn revoke(db: &Db, actor: &audit::Actor, name: &str) -> Result<Option<Identity>, StoreError> {
    let Some(mut identity) = by_name(db, name)? else {
        return Ok(None);
    };
    if identity.revoked.is_none() {
        identity.revoked = Some(crate::store::unix_now());
        db.put(&db.tree(IDENTITIES)?, identity.id.to_be_bytes(), &identity)?;
        audit::append(
            db,
            actor.clone(),
            "identity.revoke",
            name,
            json!({ "id": format!("{:016x}", identity.id) }),
        )?;
    }
    Ok(Some(identity))
}

/// Every identity ever registered (revoked ones too), by name.
pub fn list(db: &Db) -> Result<Vec<Identity>, StoreError> {
    let tree = db.tree(IDENTITIES)?;
    let mut out = Vec::new();
    for item in &tree {
        let (_, raw) = item.map_err(|e| db.io(&e))?;
        out.push(serde_json::from_slice::<Identity>(&raw).map_err(|e| db.io(&e))?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.created.cmp(&b.created)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::{Actor, Verdict, verify};

    #[test]
    fn register_authenticate_revoke_all_audited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let me = Actor {
            uid: Some(1234),
            name: String::new(),
        };
        let (id, token) = register(
            &db,
            &me,
            "ci-bot",
            vec!["builder".into()],
            Some(3600),
            None,
            Sybil::default(),
        )
        .expect("register");
        assert!(matches!(
            register(&db, &me, "ci-bot", Vec::new(), None, None, Sybil::default()),
            Err(RegisterError::Taken(_))
        ));
        let who = authenticate(&db, &token.0).expect("store").expect("valid");
        assert_eq!(who, id);
        let stored = serde_json::to_string(&list(&db).expect("list")).expect("json");
        assert!(
            !stored.contains(&token.0[21..]),
            "the secret is never stored"
        );
        revoke(&db, &me, "ci-bot").expect("revoke").expect("known");
        assert!(matches!(
            authenticate(&db, &token.0).expect("store"),
            Err(AuthError::Revoked { .. })
        ));
        // A revoked name may be registered again, with a new token.
        let (again, token2) =
            register(&db, &me, "ci-bot", Vec::new(), None, None, Sybil::default()).expect("again");
        assert_ne!(again.id, id.id);
        assert!(authenticate(&db, &token2.0).expect("store").is_ok());
        assert!(authenticate(&db, &token.0).expect("store").is_err());
        assert_eq!(verify(&db).expect("verify"), Verdict::Intact { records: 3 });
        let actions: Vec<String> = audit::tail(&db, 10)
            .expect("tail")
            .into_iter()
            .map(|r| r.action)
            .collect();
        assert_eq!(
            actions,
            ["identity.register", "identity.revoke", "identity.register"]
        );
    }

    #[test]
    fn a_burst_is_flagged_in_the_store_and_costs_trust() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let me = Actor {
            uid: Some(4242),
            name: String::new(),
        };
        let rule = Sybil { max: 2, window: 60 };
        let flags: Vec<bool> = (0..4)
            .map(|i| {
                register(&db, &me, &format!("n{i}"), Vec::new(), None, None, rule)
                    .expect("register")
                    .0
                    .flagged
                    .is_some()
            })
            .collect();
        assert_eq!(flags, [false, false, true, true]);
        let t = trust::store::load(&db, Kind::Agent, "n3").expect("trust");
        assert_eq!(t.counts[Signal::SybilBurst as usize], 1);
        assert!(t.overall(trust::now_ms(), trust::Decay::default()) < 0.5);
        let flagged = audit::tail(&db, 20)
            .expect("tail")
            .iter()
            .filter(|r| r.action == "identity.flagged")
            .count();
        assert_eq!(flagged, 2);
    }
}

//! `[retention]` applied: at start and every hour, the audit log and the
//! session records lose what is older than the limit in days, then their
//! oldest records beyond the counts.
use std::time::Duration;

use super::{config::Retention, records};
use crate::store::{Db, StoreError, audit, unix_now};

/// How often the limits are applied while the daemon runs.
pub const EVERY: Duration = Duration::from_hours(1);

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub audit_records: u64,
    pub sessions: usize,
    pub verdicts: u64,
}

/// One pass.
pub fn apply(db: &Db, limits: Retention) -> Result<Removed, StoreError> {
    let before = (limits.days > 0).then(|| unix_now().saturating_sub(limits.days * 86_400));
    let nonzero = |n: u64| (n > 0).then_some(n);
    let sessions = records::prune(
        db,
        before,
        nonzero(limits.sessions).map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    )?;
    let verdicts = super::events::prune(db, before, nonzero(limits.verdicts))?;
    let audit = audit::prune(db, before, nonzero(limits.audit_records))?;
    Ok(Removed {
        audit_records: audit.records,
        sessions,
        verdicts,
    })
}

/// One pass, logged.
pub fn apply_logged(db: &Db, limits: Retention) {
    match apply(db, limits) {
        Ok(r) if r == Removed::default() => {}
        Ok(r) => tracing::info!(
            audit_records = r.audit_records,
            sessions = r.sessions,
            verdicts = r.verdicts,
            days = limits.days,
            "retention: removed old records"
        ),
        Err(e) => tracing::error!("retention: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_apply_to_both_and_zero_means_no_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let tree = db.tree("sessions").expect("tree");
        for i in 0..6u64 {
            let record = records::SessionRecord {
                session: format!("session-{i}"),
                uid: 1000,
                pid: 1,
                server: vec!["srv".into()],
                policy: "p".into(),
                started: 100 + i,
                // The last one still runs.
                ended: (i < 5).then_some(200 + i),
                outcome: None,
            };
            db.put(&tree, record.session.as_bytes(), &record)
                .expect("put");
            audit::append(
                &db,
                audit::Actor::default(),
                "x",
                "y",
                serde_json::Value::Null,
            )
            .expect("append");
        }
        let unlimited = Retention {
            days: 0,
            audit_records: 0,
            sessions: 0,
            verdicts: 0,
        };
        assert_eq!(apply(&db, unlimited).expect("apply"), Removed::default());
        let limits = Retention {
            sessions: 2,
            audit_records: 3,
            ..unlimited
        };
        let removed = apply(&db, limits).expect("apply");
        assert_eq!(
            removed,
            Removed {
                audit_records: 4,
                sessions: 4,
                verdicts: 0,
            }
        );
        let left = records::history(&db, 100).expect("history");
        let names: Vec<&str> = left.iter().map(|r| r.session.as_str()).collect();
        assert_eq!(names, ["session-5", "session-4"], "the running one stays");
        assert!(matches!(
            audit::verify(&db).expect("verify"),
            audit::Verdict::Intact { records: 3 }
        ));
    }

    #[test]
    fn age_removes_only_what_ended_before_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let tree = db.tree("sessions").expect("tree");
        let now = unix_now();
        for (name, ended) in [("old", now - 3 * 86_400), ("new", now - 60)] {
            let record = records::SessionRecord {
                session: name.into(),
                uid: 0,
                pid: 1,
                server: vec![],
                policy: String::new(),
                started: ended - 10,
                ended: Some(ended),
                outcome: None,
            };
            db.put(&tree, name.as_bytes(), &record).expect("put");
        }
        let limits = Retention {
            days: 2,
            audit_records: 0,
            sessions: 0,
            verdicts: 0,
        };
        assert_eq!(apply(&db, limits).expect("apply").sessions, 1);
        let left = records::history(&db, 10).expect("history");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].session, "new");
    }
}

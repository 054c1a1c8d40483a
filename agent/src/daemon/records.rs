//! The store's record of the daemon's sessions: one entry per session
//! (written at its start and end, each with an audit record), closed at the
//! next start when the daemon died first, listed newest first, pruned by
//! age and count.
use serde::{Deserialize, Serialize};

use crate::store::{Db, audit, unix_now};

/// The store's tree of session records.
const TREE: &str = "sessions";

/// A session's record: in memory while it runs, in the store for good.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub session: String,
    pub uid: u32,
    pub pid: i32,
    pub server: Vec<String>,
    pub policy: String,
    /// Seconds since the epoch.
    pub started: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<u64>,
    /// How it ended ("client done", an error, "recovered at start").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// [`save`] on a blocking thread: an audit record waits for the disk.
pub(super) async fn save_off_thread(db: &Db, record: &SessionRecord, action: &'static str) {
    let (db, record) = (db.clone(), record.clone());
    let _ = tokio::task::spawn_blocking(move || save(&db, &record, action)).await;
}

/// Writes the session's record and an audit record of `action`.
fn save(db: &Db, record: &SessionRecord, action: &str) {
    let result = db.tree(TREE).and_then(|tree| {
        db.put(&tree, record.session.as_bytes(), record)?;
        audit::append(
            db,
            audit::Actor {
                uid: Some(record.uid),
                name: String::new(),
            },
            action,
            &record.session,
            serde_json::to_value(record).unwrap_or_default(),
        )
        .map(drop)
    });
    if let Err(e) = result {
        tracing::error!(session = %record.session, "cannot record {action}: {e}");
    }
}

/// At start: removes the sandboxes of a daemon that died, and closes the
/// records of the sessions it did not see end.
pub fn recover(db: &Db) -> Result<usize, crate::store::StoreError> {
    match crate::launch::reap_stale() {
        Ok(reaped) => {
            for path in reaped {
                tracing::warn!(
                    "removed the sandbox {} of an mcpwarden that is gone",
                    path.display()
                );
            }
        }
        Err(e) => tracing::error!("cannot look for sandboxes left behind: {e}"),
    }
    let tree = db.tree(TREE)?;
    let mut closed = 0;
    for item in &tree {
        let (_, value) = item.map_err(|e| db.io(&e))?;
        let Ok(mut record) = serde_json::from_slice::<SessionRecord>(&value) else {
            continue;
        };
        if record.ended.is_some() {
            continue;
        }
        record.ended = Some(unix_now());
        record.outcome =
            Some("the daemon stopped before it ended (closed at the next start)".into());
        save(db, &record, "session.recovered");
        closed += 1;
    }
    Ok(closed)
}

/// Every recorded session, newest first, at most `last`.
pub fn history(db: &Db, last: usize) -> Result<Vec<SessionRecord>, crate::store::StoreError> {
    let tree = db.tree(TREE)?;
    let mut all = Vec::new();
    for item in &tree {
        let (_, value) = item.map_err(|e| db.io(&e))?;
        if let Ok(r) = serde_json::from_slice::<SessionRecord>(&value) {
            all.push(r);
        }
    }
    all.sort_by(|a, b| b.started.cmp(&a.started).then(b.session.cmp(&a.session)));
    all.truncate(last);
    Ok(all)
}

/// Removes the records of sessions that ended before `before`, then the
/// oldest ended ones beyond `keep`; a running session's record stays.
/// Returns how many were removed.
pub fn prune(
    db: &Db,
    before: Option<u64>,
    keep: Option<usize>,
) -> Result<usize, crate::store::StoreError> {
    let tree = db.tree(TREE)?;
    let mut ended = Vec::new();
    let mut all = 0usize;
    for item in &tree {
        let (key, value) = item.map_err(|e| db.io(&e))?;
        all += 1;
        if let Ok(r) = serde_json::from_slice::<SessionRecord>(&value)
            && let Some(end) = r.ended
        {
            ended.push((end, key));
        }
    }
    ended.sort();
    let old = before.map_or(0, |b| ended.partition_point(|(end, _)| *end < b));
    let over = keep.map_or(0, |k| all.saturating_sub(k));
    let remove = old.max(over).min(ended.len());
    for (_, key) in &ended[..remove] {
        tree.remove(key).map_err(|e| db.io(&e))?;
    }
    Ok(remove)
}

//! Trust in the store: tree `trust`, one JSON record per subject
//! (`agent:NAME`, `server:NAME`).
use super::{Kind, Trust};
use crate::store::{Db, StoreError};

pub const TREE: &str = "trust";

/// The trust of `name`, or no history.
pub fn load(db: &Db, kind: Kind, name: &str) -> Result<Trust, StoreError> {
    let tree = db.tree(TREE)?;
    Ok(db
        .get(&tree, kind.subject(name))?
        .unwrap_or_else(|| Trust::new(kind)))
}

/// Writes the trust of `name` and flushes it.
pub fn save(db: &Db, name: &str, trust: &Trust) -> Result<(), StoreError> {
    let tree = db.tree(TREE)?;
    db.put(&tree, trust.kind.subject(name), trust)?;
    db.flush()
}

/// Every subject's trust, as (subject, trust), sorted by subject.
pub fn all(db: &Db) -> Result<Vec<(String, Trust)>, StoreError> {
    let tree = db.tree(TREE)?;
    let mut out = Vec::new();
    for item in &tree {
        let (k, v) = item.map_err(|e| db.io(&e))?;
        let trust: Trust =
            serde_json::from_slice(&v).map_err(|e| db.io(&format!("a damaged record: {e}")))?;
        out.push((String::from_utf8_lossy(&k).into_owned(), trust));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{Decay, Signal};

    #[test]
    fn trust_is_kept_per_subject() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let mut t = load(&db, Kind::Server, "files").expect("load");
        t.update(Signal::KernelKill, 1, Decay::default());
        save(&db, "files", &t).expect("save");
        assert_eq!(load(&db, Kind::Server, "files").expect("load"), t);
        assert_eq!(
            load(&db, Kind::Agent, "files").expect("load"),
            Trust::new(Kind::Agent),
            "an agent of the same name is another subject"
        );
        let every = all(&db).expect("all");
        assert_eq!(every.len(), 1);
        assert_eq!(every[0].0, "server:files");
    }
}

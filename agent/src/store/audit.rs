//! The audit log: an append-only, hash-chained list of what administrators
//! and agents did (identities registered and revoked, tools approved ...).
//!
//! Record `n` is kept at key `n` (big-endian, so sled iterates in order)
//! and carries `prev`, the hash of record `n - 1`; its own `hash` is
//! SHA-256 over its canonical JSON without `hash` (which includes `prev`).
//! The store keeps the hash and exactly the text that was hashed, so a
//! verification never depends on re-serialising what it read (floats do
//! not survive a JSON round trip bit for bit). Editing a
//! record breaks its hash; removing one breaks the next record's `prev` or
//! the sequence; [`verify`] finds either. A head entry (key `head`),
//! written in the same atomic batch as each record, names the last record,
//! so cutting records off the end is found too.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Db, StoreError, sha256_hex, unix_now};

/// The tree of the audit log.
pub const TREE: &str = "audit";

/// The key of the head entry: the last record's sequence number and hash.
const HEAD: &[u8] = b"head";
/// The key of the anchor: where the log starts once old records were
/// pruned (the first kept record and the hash of the last one removed).
const ANCHOR: &[u8] = b"anchor";

/// Where the chain starts.
#[derive(Debug, Serialize, Deserialize)]
struct Anchor {
    seq: u64,
    prev: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it: the uid proven by the kernel, and a name if one is known.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Actor {
    /// The user running this process.
    #[must_use]
    pub fn current() -> Self {
        Self {
            uid: Some(nix::unistd::getuid().as_raw()),
            name: String::new(),
        }
    }
}

/// One record of the audit log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub seq: u64,
    /// Seconds since the epoch.
    pub time: u64,
    pub actor: Actor,
    /// What was done, e.g. "identity.register".
    pub action: String,
    /// To what, e.g. the identity's name.
    pub subject: String,
    pub detail: Value,
    pub prev: String,
    #[serde(default)]
    pub hash: String,
}

impl Record {
    /// The canonical text of everything but the hash.
    fn body_text(&self) -> String {
        // serde_json's maps are sorted: this text is canonical.
        serde_json::json!({
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "detail": self.detail,
            "prev": self.prev,
        })
        .to_string()
    }

    /// The hash this record must carry.
    #[must_use]
    pub fn expected_hash(&self) -> String {
        sha256_hex(self.body_text().as_bytes())
    }

    /// The stored form: the hash it carries, then the text hashed.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.hash.clone().into_bytes();
        out.extend_from_slice(self.body_text().as_bytes());
        out
    }

    /// Reads a stored record; `true` when the text matches its hash.
    pub fn decode(raw: &[u8]) -> Result<(Self, bool), String> {
        if raw.len() < 64 {
            return Err("shorter than a hash".into());
        }
        let (hash, body) = raw.split_at(64);
        let hash = std::str::from_utf8(hash)
            .map_err(|e| e.to_string())?
            .to_owned();
        let intact = sha256_hex(body) == hash;
        let mut record: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        record.hash = hash;
        Ok((record, intact))
    }
}

/// Threads of one process (the daemon's) share the store: the read of the
/// head and the write of the next record must not interleave, or two
/// records would claim the same place in the chain. (Processes are kept
/// apart by the store's own lock.)
static APPEND: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Appends a record and flushes it to disk before returning it: an
/// acknowledged audit record survives a crash.
pub fn append(
    db: &Db,
    actor: Actor,
    action: &str,
    subject: &str,
    detail: Value,
) -> Result<Record, StoreError> {
    let _one_at_a_time = APPEND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tree = db.tree(TREE)?;
    let (seq, prev) = match db.get::<Head>(&tree, HEAD)? {
        Some(head) => (head.seq + 1, head.hash),
        None => (0, GENESIS.to_owned()),
    };
    let mut record = Record {
        seq,
        time: unix_now(),
        actor,
        action: action.to_owned(),
        subject: subject.to_owned(),
        detail,
        prev,
        hash: String::new(),
    };
    record.hash = record.expected_hash();
    let head = Head {
        seq,
        hash: record.hash.clone(),
    };
    let mut batch = sled::Batch::default();
    batch.insert(&seq.to_be_bytes(), record.encode());
    batch.insert(HEAD, serde_json::to_vec(&head).map_err(|e| db.io(&e))?);
    tree.apply_batch(batch).map_err(|e| db.io(&e))?;
    db.flush()?;
    Ok(record)
}

/// What [`verify`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is in place and chained; `records` of them.
    Intact { records: u64 },
    /// The first record that does not fit, and why.
    Broken { seq: u64, why: String },
}

/// Walks the whole chain.
pub fn verify(db: &Db) -> Result<Verdict, StoreError> {
    let tree = db.tree(TREE)?;
    let (first, mut prev) = match db.get::<Anchor>(&tree, ANCHOR)? {
        Some(a) => (a.seq, a.prev),
        None => (0, GENESIS.to_owned()),
    };
    let mut expect_seq = first;
    for item in &tree {
        let (key, raw) = item.map_err(|e| db.io(&e))?;
        if key.as_ref() == HEAD || key.as_ref() == ANCHOR {
            continue;
        }
        let key_seq = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .ok();
        let Some(key_seq) = key_seq else {
            return Ok(Verdict::Broken {
                seq: expect_seq,
                why: format!("a record under a foreign key ({} bytes)", key.len()),
            });
        };
        let (record, intact) = match Record::decode(&raw) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Verdict::Broken {
                    seq: key_seq,
                    why: format!("not a record: {e}"),
                });
            }
        };
        if key_seq != expect_seq || record.seq != key_seq {
            return Ok(Verdict::Broken {
                seq: expect_seq,
                why: format!(
                    "record {expect_seq} is missing (next is {key_seq}, which says it is {})",
                    record.seq
                ),
            });
        }
        if record.prev != prev {
            return Ok(Verdict::Broken {
                seq: key_seq,
                why: "its prev is not the hash of the record before it".into(),
            });
        }
        if !intact {
            return Ok(Verdict::Broken {
                seq: key_seq,
                why: "its content does not match its hash (edited)".into(),
            });
        }
        prev = record.hash;
        expect_seq += 1;
    }
    let head = db.get::<Head>(&tree, HEAD)?;
    let fits = match &head {
        None => expect_seq == first,
        Some(h) => h.seq + 1 == expect_seq && h.hash == prev,
    };
    if !fits {
        return Ok(Verdict::Broken {
            seq: expect_seq,
            why: match head {
                Some(h) => format!(
                    "the log ends at record {} but its head names record {}: records were cut off the end",
                    expect_seq.wrapping_sub(1) as i64,
                    h.seq
                ),
                None => "the head entry is missing".into(),
            },
        });
    }
    Ok(Verdict::Intact {
        records: expect_seq - first,
    })
}

/// What [`prune`] removed.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// How many records.
    pub records: u64,
    /// The first record kept.
    pub from: u64,
}

/// Removes the oldest records: those older than `before` (seconds since
/// the epoch), and then as many as it takes to leave `keep` records. The
/// chain stays verifiable: the anchor names the first record kept and the
/// hash of the last one removed, and the pruning is itself recorded (an
/// `audit.prune` record), so what was removed, when, is in the log.
pub fn prune(db: &Db, before: Option<u64>, keep: Option<u64>) -> Result<Pruned, StoreError> {
    let cut = {
        let _one_at_a_time = APPEND
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tree = db.tree(TREE)?;
        let Some(head) = db.get::<Head>(&tree, HEAD)? else {
            return Ok(Pruned::default());
        };
        let first = db.get::<Anchor>(&tree, ANCHOR)?.map_or(0, |a| a.seq);
        // The pruning record is appended after: it counts among those kept.
        let total = head.seq + 1 - first;
        let mut cut = first;
        if let Some(keep) = keep {
            cut = cut.max((first + total).saturating_sub(keep.saturating_sub(1)));
        }
        if let Some(before) = before {
            for item in tree.range(first.to_be_bytes()..=head.seq.to_be_bytes()) {
                let (_, raw) = item.map_err(|e| db.io(&e))?;
                let (record, _) = Record::decode(&raw).map_err(|e| db.io(&e))?;
                if record.time >= before {
                    break;
                }
                cut = cut.max(record.seq + 1);
            }
        }
        // The last record always stays: the chain's head must be there.
        let cut = cut.min(head.seq);
        if cut <= first {
            return Ok(Pruned::default());
        }
        let last_removed = tree
            .get((cut - 1).to_be_bytes())
            .map_err(|e| db.io(&e))?
            .ok_or_else(|| db.io(&format!("audit record {} is missing", cut - 1)))?;
        let (last_removed, _) = Record::decode(&last_removed).map_err(|e| db.io(&e))?;
        let mut batch = sled::Batch::default();
        for seq in first..cut {
            batch.remove(&seq.to_be_bytes());
        }
        let anchor = Anchor {
            seq: cut,
            prev: last_removed.hash,
        };
        batch.insert(ANCHOR, serde_json::to_vec(&anchor).map_err(|e| db.io(&e))?);
        tree.apply_batch(batch).map_err(|e| db.io(&e))?;
        db.flush()?;
        Pruned {
            records: cut - first,
            from: cut,
        }
    };
    append(
        db,
        Actor::current(),
        "audit.prune",
        "audit",
        serde_json::json!({"removed": cut.records, "first_kept": cut.from, "before": before, "keep": keep}),
    )?;
    Ok(cut)
}

/// The last `n` records, oldest first.
pub fn tail(db: &Db, n: usize) -> Result<Vec<Record>, StoreError> {
    let tree = db.tree(TREE)?;
    let mut out = Vec::new();
    for item in tree
        .iter()
        .rev()
        .filter(|i| !matches!(i, Ok((k, _)) if k.as_ref() == HEAD || k.as_ref() == ANCHOR))
        .take(n)
    {
        let (_, raw) = item.map_err(|e| db.io(&e))?;
        out.push(Record::decode(&raw).map_err(|e| db.io(&e))?.0);
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn floats_in_a_record_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        for x in [0.111_111_111_111_111_12, 1.0 / 3.0, 2.0_f64.sqrt(), 1e-300] {
            append(&db, Actor::current(), "trust.reset", "s", json!({"was": x})).expect("append");
        }
        assert_eq!(verify(&db).expect("verify"), Verdict::Intact { records: 4 });
    }

    fn filled() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        for i in 0..5 {
            append(
                &db,
                Actor::current(),
                "identity.register",
                &format!("agent-{i}"),
                json!({"roles": ["r"]}),
            )
            .expect("append");
        }
        (dir, db)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (_dir, db) = filled();
        assert_eq!(verify(&db).expect("verify"), Verdict::Intact { records: 5 });
        let last = tail(&db, 2).expect("tail");
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].seq, 4);
        assert_eq!(last[1].prev, last[0].hash);
    }

    #[test]
    fn an_edit_is_found_at_its_record() {
        let (_dir, db) = filled();
        let tree = db.tree(TREE).expect("tree");
        let (mut r, _) = Record::decode(&tree.get(2u64.to_be_bytes()).expect("get").expect("2"))
            .expect("record");
        r.subject = "someone-else".into();
        tree.insert(2u64.to_be_bytes(), r.encode()).expect("put");
        let Verdict::Broken { seq, why } = verify(&db).expect("verify") else {
            panic!("an edit went unseen");
        };
        assert_eq!(seq, 2);
        assert!(why.contains("edited"), "{why}");
    }

    #[test]
    fn an_edit_that_rehashes_breaks_the_next_link() {
        let (_dir, db) = filled();
        let tree = db.tree(TREE).expect("tree");
        let (mut r, _) = Record::decode(&tree.get(1u64.to_be_bytes()).expect("get").expect("1"))
            .expect("record");
        r.detail = json!({"roles": ["admin"]});
        r.hash = r.expected_hash();
        tree.insert(1u64.to_be_bytes(), r.encode()).expect("put");
        assert!(matches!(
            verify(&db).expect("verify"),
            Verdict::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn a_removed_record_is_a_gap() {
        let (_dir, db) = filled();
        let tree = db.tree(TREE).expect("tree");
        tree.remove(3u64.to_be_bytes()).expect("remove");
        let Verdict::Broken { seq, why } = verify(&db).expect("verify") else {
            panic!("a gap went unseen");
        };
        assert_eq!(seq, 3);
        assert!(why.contains("missing"), "{why}");
    }

    fn many(n: u64) -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        for i in 0..n {
            append(&db, Actor::current(), "a", &i.to_string(), Value::Null).expect("append");
        }
        (dir, db)
    }

    #[test]
    fn pruning_to_a_count_keeps_the_chain_verifiable() {
        let (_dir, db) = many(10);
        let pruned = prune(&db, None, Some(4)).expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                records: 7,
                from: 7
            }
        );
        assert_eq!(verify(&db).expect("verify"), Verdict::Intact { records: 4 });
        let kept = tail(&db, 100).expect("tail");
        assert_eq!(kept.first().map(|r| r.seq), Some(7));
        let last = kept.last().expect("the prune record");
        assert_eq!(last.action, "audit.prune");
        assert_eq!(last.detail["removed"], 7);
        // Nothing more to do at that size; appending and pruning again works.
        assert_eq!(prune(&db, None, Some(4)).expect("prune").records, 1);
        append(&db, Actor::current(), "b", "x", Value::Null).expect("append");
        assert_eq!(verify(&db).expect("verify"), Verdict::Intact { records: 5 });
    }

    #[test]
    fn pruning_by_age_keeps_at_least_the_head() {
        let (_dir, db) = many(5);
        let pruned = prune(&db, Some(unix_now() + 10), None).expect("prune");
        assert_eq!(pruned.records, 4, "everything but the last record");
        assert_eq!(verify(&db).expect("verify"), Verdict::Intact { records: 2 });
        assert_eq!(
            prune(&db, Some(0), None)
                .expect("nothing is that old")
                .records,
            0
        );
    }

    #[test]
    fn a_forged_or_missing_anchor_is_found() {
        let (_dir, db) = many(6);
        prune(&db, None, Some(3)).expect("prune");
        let tree = db.tree(TREE).expect("tree");
        let saved = tree.get(ANCHOR).expect("get").expect("an anchor");
        tree.insert(
            ANCHOR,
            serde_json::to_vec(&Anchor {
                seq: 4,
                prev: GENESIS.to_owned(),
            })
            .expect("json"),
        )
        .expect("put");
        assert!(matches!(
            verify(&db).expect("verify"),
            Verdict::Broken { seq: 4, .. }
        ));
        tree.insert(ANCHOR, saved).expect("put");
        assert!(matches!(
            verify(&db).expect("verify"),
            Verdict::Intact { .. }
        ));
        tree.remove(ANCHOR).expect("remove");
        let Verdict::Broken { seq, why } = verify(&db).expect("verify") else {
            panic!("removing the anchor went unseen");
        };
        assert_eq!(seq, 0);
        assert!(why.contains("missing"), "{why}");
    }

    #[test]
    fn records_cut_off_the_end_are_found() {
        let (_dir, db) = filled();
        let tree = db.tree(TREE).expect("tree");
        tree.remove(4u64.to_be_bytes()).expect("remove");
        let Verdict::Broken { why, .. } = verify(&db).expect("verify") else {
            panic!("a truncation went unseen");
        };
        assert!(why.contains("cut off"), "{why}");
        // Appending again continues from the head, not from what is left.
        append(&db, Actor::current(), "x", "y", Value::Null).expect("append");
        assert!(matches!(
            verify(&db).expect("verify"),
            Verdict::Broken { .. }
        ));
    }
}

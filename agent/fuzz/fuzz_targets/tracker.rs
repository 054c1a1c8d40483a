//! Random sequences of opens, closes, lookups and fail-alls against a plain
//! model: the tracker agrees with the model on what is in flight, and every
//! request it attributes an instant to was open at that instant.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use mcpwarden::proxy::{
    message::{Message, RequestId, parse},
    tracker::Tracker,
};

fn id(n: u8) -> RequestId {
    match parse(format!(r#"{{"jsonrpc":"2.0","id":{n},"result":{{}}}}"#).as_bytes()) {
        Ok(Message::Response { id, .. }) => id,
        other => panic!("{other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut tracker = Tracker::new();
    let mut model = BTreeSet::new();
    let mut now = 0u64;
    for op in data.chunks(3) {
        let [kind, n, step] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let n = n % 16;
        now += u64::from(step);
        match kind % 4 {
            0 => {
                let opened = tracker.open(id(n), "tools/call".into(), None, now).is_ok();
                assert_eq!(opened, model.insert(n), "open {n}");
            }
            1 => assert_eq!(
                tracker.close(&id(n), now).is_some(),
                model.remove(&n),
                "close {n}"
            ),
            2 => {
                let at = now.saturating_sub(u64::from(step) * 3);
                for r in tracker.at(at) {
                    assert!(
                        r.opened_ns <= at && r.closed_ns.is_none_or(|c| at <= c),
                        "{r:?} at {at}"
                    );
                }
            }
            _ => {
                assert_eq!(tracker.fail_all(now).len(), model.len());
                model.clear();
            }
        }
        assert_eq!(tracker.in_flight(), model.len());
    }
});

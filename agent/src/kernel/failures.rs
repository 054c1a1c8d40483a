//! Failed calls (seen at `sys_exit` with `[kernel] call_results`): each
//! failure is folded into the entry event of its call, as that event's
//! result, when the two are in the same drained batch.
use super::{EventKind, KernelEvent};

/// Gives each failure (a [`EventKind::Failed`] event) to the event of the
/// same call in `batch`, as its `ret`: the entry event of the same thread,
/// of the call's kind, just before it (a thread makes one call at a time,
/// and the ring keeps each thread's order). A failure whose entry event is
/// not in the batch (drained earlier, or left out by the rate limit) stays
/// an event of its own.
pub fn attach_failures(batch: &mut Vec<KernelEvent>) {
    let mut last: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let mut keep = vec![true; batch.len()];
    for i in 0..batch.len() {
        let event = &batch[i];
        if event.kind != EventKind::Failed {
            last.insert(event.tid, i);
            continue;
        }
        let entry_kind = failed_call_kind(i64::from(event.flags as i32));
        if let Some(&j) = last.get(&event.tid)
            && entry_kind == Some(batch[j].kind)
            && batch[j].ret.is_none()
        {
            batch[j].ret = event.ret;
            keep[i] = false;
        }
    }
    let mut flags = keep.into_iter();
    batch.retain(|_| flags.next().unwrap_or(true));
}

/// The entry event a failed call's failure belongs to. A failed exec has
/// none (exec events come from the kernel's report of a successful one).
fn failed_call_kind(nr: i64) -> Option<EventKind> {
    use libc as c;
    const CALLS: &[(&[i64], EventKind)] = &[
        (
            &[c::SYS_open, c::SYS_openat, c::SYS_openat2],
            EventKind::Open,
        ),
        (
            &[c::SYS_unlink, c::SYS_unlinkat, c::SYS_rmdir],
            EventKind::Unlink,
        ),
        (
            &[c::SYS_rename, c::SYS_renameat, c::SYS_renameat2],
            EventKind::Rename,
        ),
        (&[c::SYS_mkdir, c::SYS_mkdirat], EventKind::Mkdir),
        (
            &[c::SYS_chmod, c::SYS_fchmodat, c::SYS_fchmodat2],
            EventKind::Chmod,
        ),
        (&[c::SYS_chown, c::SYS_fchownat], EventKind::Chown),
        (&[c::SYS_truncate], EventKind::Truncate),
        (&[c::SYS_symlink, c::SYS_symlinkat], EventKind::Symlink),
        (&[c::SYS_link, c::SYS_linkat], EventKind::Link),
        (&[c::SYS_connect], EventKind::Connect),
    ];
    CALLS
        .iter()
        .find(|(calls, _)| calls.contains(&nr))
        .map(|&(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use mcpwarden_common::{Event, kind};

    use super::*;
    use crate::kernel::event::tests::{bytes, raw};

    #[test]
    fn failures_go_to_their_call_or_stand_alone() {
        let decode = |e: &Event| KernelEvent::decode(&bytes(e)).expect("decodes");
        let mut open = raw(kind::OPEN);
        open.path[..4].copy_from_slice(b"/nop");
        let mut other_thread = raw(kind::OPEN);
        other_thread.tid = 99;
        let mut failed = raw(kind::FAILED);
        failed.flags = libc::SYS_openat as u32;
        failed.ret = -2;
        failed.path[..4].copy_from_slice(b"/nop");
        let mut exec_failed = raw(kind::FAILED);
        exec_failed.flags = libc::SYS_execve as u32;
        exec_failed.ret = -13;
        let mut batch = vec![
            decode(&open),
            decode(&other_thread),
            decode(&failed),
            decode(&exec_failed),
            decode(&failed),
        ];
        attach_failures(&mut batch);
        let kinds: Vec<(EventKind, Option<i64>)> = batch.iter().map(|e| (e.kind, e.ret)).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Open, Some(-2)),
                (EventKind::Open, None),
                (EventKind::Failed, Some(-13)),
                // The open already has its result: a second failure stands.
                (EventKind::Failed, Some(-2)),
            ]
        );
        assert_eq!(batch[2].call_name(), Some("execve"));
    }
}

//! Socket calls: connect, listen, accept (with the peer), and the
//! destinations of `sendto`/`sendmsg`. A datagram to port 53 carries the
//! head of its payload, so user space can read the DNS question.
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use mcpwarden_common::{Event, SESSION_NET_POLICY, kind};

use crate::{
    AF_INET, AF_INET6, AF_UNIX, begin,
    privilege::{call_args, exit_ret},
    submit,
};

const DNS_PORT: u16 = 53;
/// Bytes of a DNS datagram kept: the header and a question of up to ~100
/// bytes of name.
const DNS_HEAD: usize = 128;

/// Reads a user `sockaddr` into the event: family, then port and address
/// (inet) or path (unix; an abstract socket reads as ""). False when not
/// even the family could be read.
#[inline(always)]
fn read_sockaddr(event: &mut Event, addr: *const u8) -> bool {
    // sockaddr: a native-endian u16 family, then for inet a big-endian port.
    // SAFETY: user pointer read through the fault-tolerant helper.
    let Ok(head) = (unsafe { bpf_probe_read_user(addr.cast::<[u8; 4]>()) }) else {
        return false;
    };
    event.family = u16::from_ne_bytes([head[0], head[1]]);
    // SAFETY: user pointers read through fault-tolerant helpers; a failed
    // read leaves the zeroed address in place.
    unsafe {
        match event.family {
            AF_INET => {
                event.port = u16::from_be_bytes([head[2], head[3]]);
                let _ = bpf_probe_read_user_buf(addr.add(4), &mut event.addr[..4]);
            }
            AF_INET6 => {
                event.port = u16::from_be_bytes([head[2], head[3]]);
                let _ = bpf_probe_read_user_buf(addr.add(8), &mut event.addr);
            }
            AF_UNIX => {
                let _ = bpf_probe_read_user_str_bytes(addr.add(2), &mut event.path[..108]);
            }
            _ => {}
        }
    }
    true
}

/// Keeps the head of a datagram to port 53 in `path2`.
#[inline(always)]
fn keep_dns_head(event: &mut Event, payload: *const u8) {
    if event.port != DNS_PORT || payload.is_null() {
        return;
    }
    // SAFETY: user pointer read through the fault-tolerant helper. A short
    // datagram near the end of a mapping may not give DNS_HEAD bytes: then
    // a shorter read is tried. User space cuts at the datagram's length.
    unsafe {
        if bpf_probe_read_user_buf(payload, &mut event.path2[..DNS_HEAD]).is_err()
            && bpf_probe_read_user_buf(payload, &mut event.path2[..32]).is_err()
        {
            event.path2[0] = 0;
        }
    }
}

#[tracepoint]
pub fn mcpw_connect(ctx: TracePointContext) -> u32 {
    let Some((session, event)) = begin(kind::CONNECT) else {
        return 0;
    };
    // SAFETY: offsets from the tracepoint's format file.
    event.fd = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1) as i32;
    // SAFETY: as above.
    let Ok(addr) = (unsafe { ctx.read_at::<*const u8>(24) }) else {
        return 0;
    };
    let _ = read_sockaddr(event, addr);
    // With a network policy, the sock_addr programs report inet connects
    // together with their verdict; one event per connect.
    if session.flags & SESSION_NET_POLICY != 0
        && (event.family == AF_INET || event.family == AF_INET6)
    {
        return 0;
    }
    submit(&session, event);
    0
}

#[tracepoint]
pub fn mcpw_listen(ctx: TracePointContext) -> u32 {
    let Some((session, event)) = begin(kind::LISTEN) else {
        return 0;
    };
    // SAFETY: offsets from sys_enter_listen's format: fd 16, backlog 24.
    event.fd = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1) as i32;
    // SAFETY: as above.
    event.arg = unsafe { ctx.read_at::<i64>(24) }.unwrap_or(0);
    submit(&session, event);
    0
}

/// `accept`/`accept4` at exit: the new connection's descriptor and its
/// peer. A failed accept (`EAGAIN` ends every non-blocking accept loop) is
/// not reported.
#[tracepoint]
pub fn mcpw_accept(ctx: TracePointContext) -> u32 {
    let ret = exit_ret(&ctx).unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    let Some((session, event)) = begin(kind::ACCEPT) else {
        return 0;
    };
    event.ret = ret;
    let [fd, peer, _] = call_args();
    event.fd = fd as i32;
    if peer != 0 {
        let _ = read_sockaddr(event, peer as *const u8);
    }
    submit(&session, event);
    0
}

/// `sendto` with a destination. One on a connected socket (no address)
/// went where the connect said, which was reported.
#[tracepoint]
pub fn mcpw_sendto(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from sys_enter_sendto's format: fd 16, buff 24,
    // len 32, addr 48.
    let addr = unsafe { ctx.read_at::<u64>(48) }.unwrap_or(0);
    if addr == 0 {
        return 0;
    }
    let Some((session, event)) = begin(kind::SEND) else {
        return 0;
    };
    // SAFETY: as above.
    event.fd = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1) as i32;
    // SAFETY: as above.
    event.arg = unsafe { ctx.read_at::<i64>(32) }.unwrap_or(0);
    if read_sockaddr(event, addr as *const u8) {
        // SAFETY: as above.
        let payload = unsafe { ctx.read_at::<*const u8>(24) }.unwrap_or(core::ptr::null());
        keep_dns_head(event, payload);
    }
    submit(&session, event);
    0
}

/// `sendmsg` with a destination (`msg_name`), with the length of its first
/// buffer.
#[tracepoint]
pub fn mcpw_sendmsg(ctx: TracePointContext) -> u32 {
    // SAFETY: `struct user_msghdr *msg` at offset 24 of sys_enter_sendmsg.
    let Ok(msg) = (unsafe { ctx.read_at::<*const u64>(24) }) else {
        return 0;
    };
    // user_msghdr: msg_name at 0, msg_iov at 16 (x86-64 and every 64-bit
    // ABI).
    // SAFETY: user pointer read through the fault-tolerant helper.
    let Ok(name) = (unsafe { bpf_probe_read_user(msg) }) else {
        return 0;
    };
    if name == 0 {
        return 0;
    }
    let Some((session, event)) = begin(kind::SEND) else {
        return 0;
    };
    // SAFETY: as above.
    event.fd = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1) as i32;
    if read_sockaddr(event, name as *const u8)
        // SAFETY: user pointers read through the fault-tolerant helper:
        // msg_iov, then the first iovec's base and length.
        && let Ok(iov) = unsafe { bpf_probe_read_user(msg.add(2)) }
        // SAFETY: as above.
        && let Ok([base, len]) = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }
    {
        event.arg = len as i64;
        keep_dns_head(event, base as *const u8);
    }
    submit(&session, event);
    0
}

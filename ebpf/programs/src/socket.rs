//! Socket calls: connect, listen, accept (with the peer), and the
//! destinations of `sendto`/`sendmsg`/`sendmmsg`. A datagram to port 53
//! carries the head of its payload, so user space can read the DNS
//! question, also when it is sent without an address on a socket connected
//! to port 53, as glibc's resolver does.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use mcpwarden_common::{DnsPeer, Event, SESSION_NET_POLICY, SessionConfig, kind, send};

use crate::{AF_INET, AF_INET6, AF_UNIX, begin_call, call::Call, submit};

const DNS_PORT: u16 = 53;

/// Sockets connected to port 53, by `tgid << 32 | fd`.
#[map]
static DNS_PEERS: LruHashMap<u64, DnsPeer> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn peer_key(fd: i32) -> u64 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000) | u64::from(fd as u32)
}

/// Remembers (or forgets) the connect in `event` as a DNS peer of its fd.
#[inline(always)]
fn note_peer(session: &SessionConfig, event: &Event) {
    if event.family != AF_INET && event.family != AF_INET6 {
        return;
    }
    let key = peer_key(event.fd);
    if event.port == DNS_PORT {
        let peer = DnsPeer {
            session: session.session,
            family: event.family,
            port: event.port,
            addr: event.addr,
        };
        let _ = DNS_PEERS.insert(key, peer, 0);
    } else {
        // The socket was connected again, elsewhere.
        let _ = DNS_PEERS.remove(key);
    }
}

/// Fills the destination of a send without an address from its socket's
/// DNS peer; false when the socket has none (its connect was reported).
#[inline(always)]
fn connected_peer(session: &SessionConfig, event: &mut Event) -> bool {
    // SAFETY: the value is plain data copied out at once.
    let Some(peer) = (unsafe { DNS_PEERS.get(peer_key(event.fd)) }).copied() else {
        return false;
    };
    if peer.session != session.session {
        return false;
    }
    event.family = peer.family;
    event.port = peer.port;
    event.addr = peer.addr;
    event.flags |= send::CONNECTED;
    true
}
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

/// `connect(fd, addr, addrlen)`.
#[raw_tracepoint]
pub fn mcpw_connect(ctx: RawTracePointContext) -> i32 {
    let Some((session, event)) = begin_call(kind::CONNECT) else {
        return 0;
    };
    let call = Call::of(&ctx);
    event.fd = call.int(0);
    let _ = read_sockaddr(event, call.ptr(1));
    note_peer(&session, event);
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

/// `listen(fd, backlog)`.
#[raw_tracepoint]
pub fn mcpw_listen(ctx: RawTracePointContext) -> i32 {
    let Some((session, event)) = begin_call(kind::LISTEN) else {
        return 0;
    };
    let call = Call::of(&ctx);
    event.fd = call.int(0);
    event.arg = call.arg(1) as i64;
    submit(&session, event);
    0
}

/// `accept`/`accept4` at exit: the new connection's descriptor and its
/// peer. A failed accept (`EAGAIN` ends every non-blocking accept loop) is
/// not reported.
#[raw_tracepoint]
pub fn mcpw_accept(ctx: RawTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    if ret < 0 {
        return 0;
    }
    let Some((session, event)) = begin_call(kind::ACCEPT) else {
        return 0;
    };
    event.ret = ret;
    let call = Call::of(&ctx);
    event.fd = call.int(0);
    let peer = call.ptr::<u8>(1);
    if !peer.is_null() {
        let _ = read_sockaddr(event, peer);
    }
    submit(&session, event);
    0
}

/// Where a send goes, into the event: `Some(true)` when the address given
/// (or, without one, the socket's DNS peer) was read, `Some(false)` when
/// the address given could not be read, `None` for a send without an
/// address on a socket that is no DNS peer (its connect was reported).
#[inline(always)]
fn destination(session: &SessionConfig, event: &mut Event, addr: u64) -> Option<bool> {
    if addr == 0 {
        return connected_peer(session, event).then_some(true);
    }
    Some(read_sockaddr(event, addr as *const u8))
}

/// `sendto` with a destination. One on a connected socket (no address)
/// went where the connect said, which was reported; on a socket connected
/// to port 53 it is reported too, for its question.
///
/// `sendto(fd, buff, len, flags, addr, addrlen)`.
#[raw_tracepoint]
pub fn mcpw_sendto(ctx: RawTracePointContext) -> i32 {
    let Some((session, event)) = begin_call(kind::SEND) else {
        return 0;
    };
    let call = Call::of(&ctx);
    event.fd = call.int(0);
    event.arg = call.arg(2) as i64;
    event.flags = send::SENDTO;
    let Some(known) = destination(&session, event, call.arg(4)) else {
        return 0;
    };
    if known {
        keep_dns_head(event, call.ptr(1));
    }
    submit(&session, event);
    0
}

/// The destination of the `user_msghdr` at `msg` (its `msg_name`, else
/// the socket's DNS peer), and the first buffer's length and DNS head.
/// False when there is nothing to report.
#[inline(always)]
fn on_msghdr(session: &SessionConfig, event: &mut Event, msg: *const u64) -> bool {
    // user_msghdr: msg_name at 0, msg_iov at 16 (x86-64 and every 64-bit
    // ABI).
    // SAFETY: user pointer read through the fault-tolerant helper.
    let Ok(name) = (unsafe { bpf_probe_read_user(msg) }) else {
        return false;
    };
    let Some(known) = destination(session, event, name) else {
        return false;
    };
    if known
        // SAFETY: user pointers read through the fault-tolerant helper:
        // msg_iov, then the first iovec's base and length.
        && let Ok(iov) = unsafe { bpf_probe_read_user(msg.add(2)) }
        // SAFETY: as above.
        && let Ok([base, len]) = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }
    {
        event.arg = len as i64;
        keep_dns_head(event, base as *const u8);
    }
    true
}

/// `sendmsg` with a destination (`msg_name`), or on a DNS peer, with the
/// length of its first buffer.
///
/// `sendmsg(fd, msg, flags)`.
#[raw_tracepoint]
pub fn mcpw_sendmsg(ctx: RawTracePointContext) -> i32 {
    let Some((session, event)) = begin_call(kind::SEND) else {
        return 0;
    };
    let call = Call::of(&ctx);
    event.fd = call.int(0);
    event.flags = send::SENDMSG;
    if on_msghdr(&session, event, call.ptr(1)) {
        submit(&session, event);
    }
    0
}

/// `sendmmsg`: its first two messages (glibc's resolver sends the A and
/// AAAA queries of a lookup as two), each as a `sendmsg`.
///
/// `sendmmsg(fd, mmsg, vlen, flags)`.
#[raw_tracepoint]
pub fn mcpw_sendmmsg(ctx: RawTracePointContext) -> i32 {
    /// `struct mmsghdr`: a 56-byte `user_msghdr` and its 4-byte result,
    /// padded to 64 bytes (8 u64).
    const MMSGHDR_U64S: usize = 8;
    let Some((session, event)) = begin_call(kind::SEND) else {
        return 0;
    };
    let call = Call::of(&ctx);
    let messages = call.ptr::<u64>(1);
    let vlen = call.arg(2);
    let fd = call.int(0);
    for i in 0..2 {
        if i >= vlen {
            break;
        }
        event.fd = fd;
        event.flags = send::SENDMMSG;
        event.family = 0;
        event.port = 0;
        event.addr = [0; 16];
        event.arg = 0;
        event.path[0] = 0;
        event.path2[0] = 0;
        // SAFETY: pointer arithmetic only; the reads go through the
        // fault-tolerant helper.
        let msg = unsafe { messages.add(i as usize * MMSGHDR_U64S) };
        if !on_msghdr(&session, event, msg) {
            return 0;
        }
        submit(&session, event);
    }
    0
}

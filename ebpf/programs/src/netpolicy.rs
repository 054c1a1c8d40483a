//! Network policy in the kernel: cgroup `sock_addr` programs on a session's
//! cgroup judge every inet connect, datagram destination and bind against
//! the session's allowed prefixes and ports (`NET4`/`NET6`, `BIND4`/`BIND6`)
//! and refuse the rest with EPERM before any packet leaves.

use aya_ebpf::{macros::cgroup_sock_addr, maps::lpm_trie::Key, programs::SockAddrContext};
use mcpwarden_common::{
    NET_PORTS, NetKey4, NetKey6, NetRule, SESSION_ENFORCE, SESSION_NET_POLICY, action, kind,
};

use crate::{AF_INET, AF_INET6, BIND4, BIND6, NET4, NET6, begin, submit};

#[inline(always)]
fn port_allowed(rule: &NetRule, port: u16) -> bool {
    if rule.any_port != 0 {
        return true;
    }
    let mut i = 0;
    while i < NET_PORTS {
        if rule.ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// What a `sock_addr` hook guards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SockOp {
    /// connect: reported whether allowed or not.
    Connect,
    /// sendmsg (UDP): reported when refused.
    Send,
    /// bind: reported whether allowed or not; judged by the bind rules.
    Bind,
}

/// The verdict of a `sock_addr` hook: 1 lets the call go on, 0 fails it
/// with EPERM before any packet leaves. Reports every connect and bind, and
/// every refused datagram, of a session with a network policy.
#[inline(always)]
fn sock_verdict(family: u16, addr: &[u8; 16], port: u16, op: SockOp) -> i32 {
    let bind = op == SockOp::Bind;
    let report_allowed = op != SockOp::Send;
    let Some((session, event)) = begin(if bind { kind::BIND } else { kind::CONNECT }) else {
        return 1;
    };
    if session.flags & SESSION_NET_POLICY == 0 {
        return 1;
    }
    let sid = session.session.to_be_bytes();
    // An IPv4-mapped IPv6 destination (::ffff:a.b.c.d, an AF_INET6 socket
    // reaching an IPv4 host) is that IPv4 host: judged by the IPv4 rules.
    let mapped = family == AF_INET6 && is_v4_mapped(addr);
    let rule = if family == AF_INET || mapped {
        let at = if mapped { 12 } else { 0 };
        let key = Key::new(
            64,
            NetKey4 {
                session: sid,
                addr: [addr[at], addr[at + 1], addr[at + 2], addr[at + 3]],
            },
        );
        if bind {
            BIND4.get(&key).copied()
        } else {
            NET4.get(&key).copied()
        }
    } else {
        let key = Key::new(
            160,
            NetKey6 {
                session: sid,
                addr: *addr,
            },
        );
        if bind {
            BIND6.get(&key).copied()
        } else {
            NET6.get(&key).copied()
        }
    };
    let allowed = rule.is_some_and(|r| port_allowed(&r, port));
    event.family = family;
    event.port = port;
    event.addr = *addr;
    if let Some(r) = rule {
        event.rule = r.rule;
    }
    if allowed {
        if report_allowed {
            submit(&session, event);
        }
        return 1;
    }
    let enforce = session.flags & SESSION_ENFORCE != 0;
    event.action = if enforce {
        action::DENIED
    } else {
        action::ALERT
    };
    submit(&session, event);
    i32::from(!enforce)
}

/// `::ffff:0:0/96`.
#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    addr[10] == 0xff && addr[11] == 0xff
}

fn inet4(ctx: &SockAddrContext) -> ([u8; 16], u16) {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    (addr, u16::from_be(sa.user_port as u16))
}

fn inet6(ctx: &SockAddrContext) -> ([u8; 16], u16) {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        addr[i * 4..i * 4 + 4].copy_from_slice(&sa.user_ip6[i].to_ne_bytes());
        i += 1;
    }
    (addr, u16::from_be(sa.user_port as u16))
}

#[cgroup_sock_addr(connect4)]
pub fn mcpw_conn4(ctx: SockAddrContext) -> i32 {
    let (addr, port) = inet4(&ctx);
    sock_verdict(AF_INET, &addr, port, SockOp::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn mcpw_conn6(ctx: SockAddrContext) -> i32 {
    let (addr, port) = inet6(&ctx);
    sock_verdict(AF_INET6, &addr, port, SockOp::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn mcpw_send4(ctx: SockAddrContext) -> i32 {
    let (addr, port) = inet4(&ctx);
    sock_verdict(AF_INET, &addr, port, SockOp::Send)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mcpw_send6(ctx: SockAddrContext) -> i32 {
    let (addr, port) = inet6(&ctx);
    sock_verdict(AF_INET6, &addr, port, SockOp::Send)
}

#[cgroup_sock_addr(bind4)]
pub fn mcpw_bind4(ctx: SockAddrContext) -> i32 {
    let (addr, port) = inet4(&ctx);
    sock_verdict(AF_INET, &addr, port, SockOp::Bind)
}

#[cgroup_sock_addr(bind6)]
pub fn mcpw_bind6(ctx: SockAddrContext) -> i32 {
    let (addr, port) = inet6(&ctx);
    sock_verdict(AF_INET6, &addr, port, SockOp::Bind)
}

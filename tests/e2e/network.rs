//! In-kernel network enforcement: cgroup `sock_addr` programs refuse, with
//! EPERM and before any packet leaves, every destination the policy's
//! `[network] allow` does not list, for TCP connects and UDP datagrams, and
//! every local address its `[network] bind` does not list.
use serde_json::{Value, json};

use crate::support::{Fixture, Run, assert_nothing_left_behind, events, free_port, serial};

/// Loopback listeners: one the policy allows, one it does not. The sandbox
/// (landlock) grants both ports, so only the kernel programs tell them apart.
fn fixture(mode: &str) -> (Fixture, std::net::TcpListener, std::net::TcpListener, u16) {
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (a, r) = (
        allowed.local_addr().expect("addr").port(),
        refused.local_addr().expect("addr").port(),
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind udp")
        .local_addr()
        .expect("addr")
        .port();
    let extra = format!(
        "[sandbox.network]\nconnect = [{a}, {r}]\n[network]\nallow = [\"127.0.0.1:{a}\"]\n"
    );
    (Fixture::with_sandbox(mode, &extra), allowed, refused, udp)
}

fn connect_events(fx: &Fixture) -> Vec<Value> {
    events(&fx.events)
        .into_iter()
        .filter(|e| e["kind"] == "connect")
        .collect()
}

#[test]
fn unlisted_destinations_are_refused_in_the_kernel() {
    let _guard = serial();
    let (fx, allowed, refused, udp) = fixture("enforce");
    let (a, r) = (
        allowed.local_addr().expect("a").port(),
        refused.local_addr().expect("r").port(),
    );
    let scenario = json!([
        {"call": "whoami"},
        {"call": "connect", "args": {"host": "127.0.0.1", "port": a}},
        {"call": "connect", "args": {"host": "127.0.0.1", "port": r}},
        {"call": "send_udp", "args": {"host": "127.0.0.1", "port": udp}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "connected");
    assert_eq!(
        run.text(2),
        "failed: [Errno 1] Operation not permitted",
        "EPERM from the kernel program"
    );
    assert_eq!(
        run.text(3),
        "failed: [Errno 1] Operation not permitted",
        "UDP too"
    );

    let evs = connect_events(&fx);
    let to = |port: u16| {
        evs.iter()
            .find(|e| e["addr"] == json!(format!("127.0.0.1:{port}")))
            .unwrap_or_else(|| panic!("no event for :{port} in {evs:?}"))
    };
    let ok = to(a);
    assert_eq!(
        (&ok["action"], &ok["tool"]),
        (&json!("allow"), &json!("connect")),
        "{ok}"
    );
    let no = to(r);
    assert_eq!(no["action"], json!("denied"), "{no}");
    let ids = [run.call_id("connect", 0), run.call_id("connect", 1)];
    assert_eq!((&ok["request_id"], &no["request_id"]), (&ids[0], &ids[1]));
    assert_eq!(to(udp)["action"], json!("denied"));
    assert_eq!(
        evs.len(),
        3,
        "one event per connect or refused datagram: {evs:?}"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn monitor_mode_lets_them_through_and_reports_them() {
    let _guard = serial();
    let (fx, _allowed, refused, _udp) = fixture("monitor");
    let r = refused.local_addr().expect("r").port();
    let scenario =
        json!([{"call": "whoami"}, {"call": "connect", "args": {"host": "127.0.0.1", "port": r}}]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "connected");
    let ev = connect_events(&fx)
        .into_iter()
        .find(|e| e["addr"] == json!(format!("127.0.0.1:{r}")))
        .expect("event");
    assert_eq!(ev["action"], json!("alert"), "{ev}");
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn ipv4_mapped_ipv6_destinations_follow_the_ipv4_rules() {
    // An AF_INET6 socket reaching ::ffff:127.0.0.1 goes to the IPv4 host:
    // the IPv4 allow list decides, not the IPv6 one.
    let _guard = serial();
    let (fx, allowed, refused, _udp) = fixture("enforce");
    let (a, r) = (
        allowed.local_addr().expect("a").port(),
        refused.local_addr().expect("r").port(),
    );
    let scenario = json!([
        {"call": "whoami"},
        {"call": "connect", "args": {"host": "::ffff:127.0.0.1", "port": a}},
        {"call": "connect", "args": {"host": "::ffff:127.0.0.1", "port": r}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "connected", "{}", run.raw);
    assert_eq!(run.text(2), "failed: [Errno 1] Operation not permitted");
    let evs = connect_events(&fx);
    let refused_event = evs
        .iter()
        .find(|e| e["action"] == "denied")
        .unwrap_or_else(|| panic!("no denied connect in {evs:?}"));
    assert!(
        refused_event["addr"]
            .as_str()
            .is_some_and(|s| s.contains("ffff:127.0.0.1") && s.ends_with(&format!(":{r}"))),
        "{refused_event}"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn binds_are_limited_to_the_listed_local_addresses() {
    // `[network] bind` lists what the server may listen on; the sandbox
    // (landlock) grants both ports, so only the kernel programs decide.
    let _guard = serial();
    let (p, q) = (free_port(), free_port());
    let extra = format!(
        "[sandbox.network]\nbind = [{p}, {q}]\n[network]\nallow = []\nbind = [\"127.0.0.1:{p}\"]\n"
    );
    let fx = Fixture::with_sandbox("enforce", &extra);
    let scenario = json!([
        {"call": "whoami"},
        {"call": "listen", "args": {"host": "127.0.0.1", "port": p}},
        {"call": "listen", "args": {"host": "0.0.0.0", "port": p}},
        {"call": "listen", "args": {"host": "127.0.0.1", "port": q}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "listening", "{}", run.raw);
    let eperm = "failed: [Errno 1] Operation not permitted";
    assert_eq!(run.text(2), eperm, "beyond loopback");
    assert_eq!(run.text(3), eperm, "an unlisted port");
    let binds: Vec<Value> = events(&fx.events)
        .into_iter()
        .filter(|e| e["kind"] == "bind")
        .collect();
    let at = |addr: String| {
        binds
            .iter()
            .find(|e| e["addr"] == json!(addr))
            .unwrap_or_else(|| panic!("no bind event for {addr} in {binds:?}"))
    };
    assert_eq!(at(format!("127.0.0.1:{p}"))["action"], json!("allow"));
    let wide = at(format!("0.0.0.0:{p}"));
    assert_eq!(
        (&wide["action"], &wide["rule"], &wide["tool"]),
        (
            &json!("denied"),
            &json!("network.bind (no rule matches)"),
            &json!("listen")
        ),
        "{wide}"
    );
    assert_eq!(at(format!("127.0.0.1:{q}"))["action"], json!("denied"));
    assert_nothing_left_behind(Some(&cgroup));
}

/// Python run by the server's `run` tool: a listener that accepts a
/// connection from itself, a DNS query sent with `sendto`, and a datagram
/// sent with `sendmsg`.
const SOCKETS: &str = r#"
import ctypes, socket, struct, sys
port, udp = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen(7)
client = socket.create_connection(("127.0.0.1", port))
conn, peer = srv.accept()
client.send(b"x")  # a connected stream: its connect said where
def query(name, qtype):
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split("."))
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00" + struct.pack(">HH", qtype, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(query("mcpw.example.org", 1), ("127.0.0.1", 53))
u.sendmsg([b"ping"], [], 0, ("127.0.0.1", udp))
# glibc's resolver: a UDP socket connected to the name server, then send()
# of one query, or sendmmsg() of the A and AAAA queries together.
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.connect(("127.0.0.1", 53))
r.send(query("glibc.example.net", 1))
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
m.connect(("127.0.0.1", 53))
bufs = [ctypes.create_string_buffer(q, len(q)) for q in (query("mmsg.example.com", 1), query("mmsg.example.com", 28))]
iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in bufs]
msgs = (mmsghdr * 2)()
for i in range(2):
    msgs[i].hdr.iov = ctypes.pointer(iovs[i])
    msgs[i].hdr.iovlen = 1
# Nothing listens on port 53 here: the first query's ICMP error refuses the
# second (sendmmsg returns 1). Both were handed to the kernel.
sent = ctypes.CDLL(None, use_errno=True).sendmmsg(m.fileno(), msgs, 2, 0)
assert sent >= 1, ctypes.get_errno()
print(peer[1])
"#;

#[test]
fn listen_accept_and_datagram_destinations_are_events_with_dns_questions() {
    let _guard = serial();
    let port = free_port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_port = udp.local_addr().expect("addr").port();
    // No `[network]` table: nothing refused, everything reported.
    let fx = Fixture::with_sandbox(
        "enforce",
        // Accepted peers are read at syscall exit: only when asked.
        &format!(
            "[sandbox.network]\nbind = [{port}]\nconnect = [{port}]\n[kernel]\ncall_results = true\n"
        ),
    );
    let code = json!({"call": "run", "args": {"argv": [
        crate::support::VENV_PYTHON, "-c", SOCKETS, port.to_string(), udp_port.to_string()
    ]}});
    // The same resolver-style send from a host process, during the session.
    let host = "import socket\nr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                r.connect(('127.0.0.1', 53))\nr.send(b'\\x12\\x34\\x01\\x00\\x00\\x01' + bytes(6) + b'\\x04host\\x07example\\x03net\\x00\\x00\\x01\\x00\\x01')\n";
    let run = Run::through_mcpwarden(
        &fx,
        &json!([{"call": "whoami"}, code, {"host_run": ["python3", "-c", host]}]),
    );
    assert_eq!(run.step(2)["host_run"], 0, "{}", run.raw);
    let cgroup = run.session_cgroup(0);
    let peer_port: u64 = run.text(1).trim().parse().expect("the peer's port");
    let mut buf = [0; 16];
    let (n, _) = udp.recv_from(&mut buf).expect("the datagram arrived");
    assert_eq!(&buf[..n], b"ping");
    let id = run.call_id("run", 0);
    let all = events(&fx.events);
    let find = |kind: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        all.iter()
            .find(|e| e["kind"] == kind && pred(e))
            .unwrap_or_else(|| panic!("no such {kind} event in {all:#?}"))
            .clone()
    };
    let listen = find("listen", &|e| e["backlog"] == 7);
    let accept = find("accept", &|_| true);
    assert_eq!(
        accept["addr"],
        format!("127.0.0.1:{peer_port}"),
        "the peer: {accept}"
    );
    assert!(accept["ret"].as_i64().is_some_and(|fd| fd >= 0), "{accept}");
    assert_eq!(accept["fd"], listen["fd"], "accepted on the listener");
    let dns = find("send", &|e| e["dns"] == "mcpw.example.org");
    assert_eq!(dns["addr"], "127.0.0.1:53", "{dns}");
    assert_eq!(dns["call"], "sendto", "{dns}");
    assert!(dns.get("connected").is_none(), "an explicit address: {dns}");
    assert_eq!(
        dns["length"], 34,
        "12 bytes of header, 18 of name, 4 of type and class"
    );
    let sendmsg = find("send", &|e| e["addr"] == format!("127.0.0.1:{udp_port}"));
    assert_eq!(sendmsg["length"], 4);
    assert_eq!(sendmsg["call"], "sendmsg", "{sendmsg}");
    assert!(sendmsg.get("dns").is_none());
    // Sends without an address on sockets connected to port 53, as glibc's
    // resolver makes them: the destination is the connect's, the question
    // is read all the same.
    let glibc = find("send", &|e| e["dns"] == "glibc.example.net");
    assert_eq!(glibc["addr"], "127.0.0.1:53", "{glibc}");
    assert_eq!(glibc["call"], "sendto", "{glibc}");
    assert_eq!(glibc["connected"], true, "{glibc}");
    let both: Vec<&Value> = all
        .iter()
        .filter(|e| e["kind"] == "send" && e["dns"] == "mmsg.example.com")
        .collect();
    assert_eq!(both.len(), 2, "the A and AAAA queries: {both:#?}");
    for e in &both {
        assert_eq!(e["call"], "sendmmsg", "{e}");
        assert_eq!(e["connected"], true, "{e}");
        assert_eq!(e["addr"], "127.0.0.1:53", "{e}");
    }
    assert!(
        !all.iter().any(|e| e["dns"] == "host.example.net"),
        "a host process's query was reported"
    );
    // A send on a connected stream is not an event: its connect was.
    assert!(
        !all.iter()
            .any(|e| e["kind"] == "send" && e["addr"] == format!("127.0.0.1:{port}")),
        "a connected stream's send was reported"
    );
    for e in [&listen, &accept, &dns, &sendmsg, &glibc, both[0], both[1]] {
        assert_eq!(e["request_id"], id, "{e}");
        assert_eq!(e["action"], "allow", "{e}");
    }
    assert_nothing_left_behind(Some(&cgroup));
}

/// Python run by the server's `run` tool: an IPv4 and an IPv6 listener,
/// each accepting one connection from the same process; prints the two
/// peers' ports.
const ACCEPTS: &str = r#"
import socket, sys
ports = []
for family, host, port in ((socket.AF_INET, "127.0.0.1", int(sys.argv[1])),
                           (socket.AF_INET6, "::1", int(sys.argv[2]))):
    srv = socket.socket(family)
    srv.bind((host, port))
    srv.listen(3)
    client = socket.create_connection((host, port))
    conn, peer = srv.accept()
    ports.append(str(peer[1]))
print(" ".join(ports))
"#;

#[test]
fn accepted_peers_are_reported_without_the_exit_hook() {
    let _guard = serial();
    let (v4, v6) = (free_port(), free_port());
    // No `[kernel] call_results`: the exit hook stays detached, and the
    // cgroup's sock_ops program reports the accepted peers.
    let fx = Fixture::with_sandbox(
        "enforce",
        &format!("[sandbox.network]\nbind = [{v4}, {v6}]\nconnect = [{v4}, {v6}]\n"),
    );
    let code = json!({"call": "run", "args": {"argv": [
        crate::support::VENV_PYTHON, "-c", ACCEPTS, v4.to_string(), v6.to_string()
    ]}});
    // A host process listening and accepting on loopback meanwhile: not
    // the session's, so not reported.
    let host = "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(1)\n\
                c = socket.create_connection(s.getsockname())\ns.accept()\n";
    let run = Run::through_mcpwarden(
        &fx,
        &json!([{"call": "whoami"}, code, {"host_run": ["python3", "-c", host]}]),
    );
    assert_eq!(run.step(2)["host_run"], 0, "{}", run.raw);
    let cgroup = run.session_cgroup(0);
    let peers: Vec<u16> = run
        .text(1)
        .split_whitespace()
        .map(|p| p.parse().expect("a peer port"))
        .collect();
    assert_eq!(peers.len(), 2, "{}", run.raw);
    let all = events(&fx.events);
    let accepted: Vec<&Value> = all.iter().filter(|e| e["kind"] == "accepted").collect();
    assert_eq!(
        accepted.len(),
        2,
        "one per listener, none for the host's: {accepted:#?}"
    );
    let id = run.call_id("run", 0);
    for (e, (addr, local)) in accepted.iter().zip([
        (format!("127.0.0.1:{}", peers[0]), v4),
        (format!("[::1]:{}", peers[1]), v6),
    ]) {
        assert_eq!(e["addr"], addr, "the peer: {e}");
        assert_eq!(e["local_port"], local, "the listener's port: {e}");
        assert_eq!(e["request_id"], id, "{e}");
        assert_eq!(e["action"], "allow", "{e}");
        assert_eq!(e["pid"], 0, "seen in the network stack, not a task: {e}");
    }
    assert!(
        !all.iter().any(|e| e["kind"] == "accept"),
        "the exit hook was attached without call_results"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

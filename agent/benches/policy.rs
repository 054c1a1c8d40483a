//! Who may call what, measured in one run (issue 6):
//! - the policy engine's hot path: one decision on one `tools/call`,
//!   against the shipped profiles (policies/*.toml), with the call's
//!   arguments already parsed (the proxy parses each message once for the
//!   gate); decisions per second on one core and heap allocations per
//!   decision, counted by a wrapping global allocator (the target is none);
//! - agent registrations per second (token from the kernel's randomness,
//!   SHA-256, sybil window, maps) in memory, and into the sled store with
//!   an audit record flushed to disk for each; token checks per second;
//!   heap bytes per registered agent;
//! - trust updates per second (decay, evidence, overall score, movers).
//!
//!     cargo bench --bench policy
// Counts in the millions print as f64 rates; no precision matters there.
#![allow(clippy::cast_precision_loss)]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::Instant,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcpwarden::{
    identity::{self, Registry, Sybil},
    policy::{
        Policy,
        agents::{Peer, identify},
        expr::{Context, SessionStats, TrustScores},
        tools::Buckets,
    },
    store::{Db, audit::Actor},
    trust::{Decay, Kind, Signal, Trust},
};
use serde_json::{Value, json};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Heap bytes live now.
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only
// counts allocations and live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn profile(name: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(format!("{name}.toml"));
    Policy::load(&path).expect("shipped profile")
}

/// (profile, tool, arguments): allowed, refused and undecidable calls.
fn calls() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "filesystem",
            "read_text_file",
            json!({"path": "/srv/mcp/files/notes/today.md"}),
        ),
        (
            "filesystem",
            "read_text_file",
            json!({"path": "/srv/mcp/files/../../etc/passwd"}),
        ),
        (
            "filesystem",
            "read_multiple_files",
            json!({"paths": ["/srv/mcp/files/a", "/srv/mcp/files/b", "/srv/mcp/files/c"]}),
        ),
        (
            "filesystem",
            "move_file",
            json!({"source": "/srv/mcp/files/a", "destination": "/srv/mcp/files/b"}),
        ),
        (
            "git",
            "git_commit",
            json!({"repo_path": "/srv/mcp/repos/app", "message": "fix the parser"}),
        ),
        (
            "git",
            "git_reset",
            json!({"repo_path": "/srv/mcp/repos/app"}),
        ),
        (
            "fetch",
            "fetch",
            json!({"url": "https://en.wikipedia.org/wiki/Model_Context_Protocol", "max_length": 5000}),
        ),
        (
            "fetch",
            "fetch",
            json!({"url": "http://169.254.169.254/latest/meta-data/"}),
        ),
        (
            "shell",
            "shell_execute",
            json!({"command": ["grep", "-rn", "TODO", "."], "directory": "/srv/mcp/work"}),
        ),
        (
            "postgres",
            "query",
            json!({"sql": "SELECT id, name, email FROM customers WHERE created_at > now() - interval '1 day'"}),
        ),
        ("memory", "search_nodes", json!({"query": "mcpwarden"})),
        ("filesystem", "format_disk", json!({})),
    ]
}

fn decide(c: &mut Criterion) {
    let names = ["filesystem", "git", "fetch", "shell", "postgres", "memory"];
    let policies: Vec<(&str, Policy)> = names.iter().map(|n| (*n, profile(n))).collect();
    let calls = calls();
    let agent = identify(
        &policies[1].1.agents,
        &Peer {
            uid: Some(1500),
            gid: None,
            exe: None,
            identity: None,
        },
    );
    let prepared: Vec<(&Policy, &str, &Value)> = calls
        .iter()
        .map(|(p, tool, args)| {
            let policy = &policies.iter().find(|(n, _)| n == p).expect("profile").1;
            (policy, *tool, args)
        })
        .collect();
    let mut buckets: Vec<Buckets> = prepared.iter().map(|_| Buckets::default()).collect();
    let mut now = 0u64;
    let one_round = |buckets: &mut [Buckets], now: u64| {
        for ((policy, tool, args), b) in prepared.iter().zip(buckets.iter_mut()) {
            let ctx = Context {
                tool,
                args,
                agent: &agent,
                server: "bench",
                session: SessionStats::default(),
                trust: TrustScores::default(),
                unix_time: 1_795_012_200,
            };
            black_box(policy.tools.decide(black_box(&ctx), b, now));
        }
    };
    // Warm the buckets, then count allocations over many rounds.
    one_round(&mut buckets, 0);
    let before = ALLOCS.load(Ordering::Relaxed);
    let rounds = 10_000u64;
    for r in 0..rounds {
        one_round(&mut buckets, r * 1_000_000_000);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    println!(
        "policy decide: {} heap allocations in {} decisions ({:.3} per decision)",
        allocs,
        rounds * prepared.len() as u64,
        allocs as f64 / (rounds * prepared.len() as u64) as f64
    );
    let started = std::time::Instant::now();
    let n = 200_000u64;
    for _ in 0..n {
        now += 1_000_000_000;
        one_round(&mut buckets, now);
    }
    let per_s = (n * prepared.len() as u64) as f64 / started.elapsed().as_secs_f64();
    println!(
        "policy decide: {per_s:.0} decisions/s on one core (mix of {} calls over 6 profiles)",
        prepared.len()
    );
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(prepared.len() as u64));
    g.bench_function("decide, 12-call mix over the shipped profiles", |b| {
        b.iter(|| {
            now += 1_000_000_000;
            one_round(&mut buckets, now);
        });
    });
    g.finish();
}

const T0: u64 = 1_795_012_200;

fn register(c: &mut Criterion) {
    // In memory: what the daemon keeps. One uid per agent (a fleet of
    // users), so no registration is flagged; the sybil window is still
    // checked for each.
    let n = 200_000usize;
    let names: Vec<String> = (0..n).map(|i| format!("agent-{i:06}")).collect();
    let mut big = Registry::default();
    let live = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(1000);
    for (i, name) in names.iter().enumerate() {
        let (token, flag) = big
            .register(
                name,
                vec!["reader".into()],
                T0,
                Some(identity::DEFAULT_TTL),
                Some(i as u32),
            )
            .expect("register");
        assert!(flag.is_none());
        if i % 200 == 0 {
            tokens.push(token);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The kept tokens are the benchmark's, not the registry's.
    let token_bytes = (tokens.capacity() * std::mem::size_of::<identity::Token>()
        + tokens.iter().map(|t| t.0.capacity()).sum::<usize>()) as i64;
    let bytes = LIVE.load(Ordering::Relaxed) - live - token_bytes;
    println!(
        "identity register (memory): {:.0} registrations/s on one core ({n} agents)",
        n as f64 / secs
    );
    println!(
        "identity memory: {:.0} heap bytes per registered agent ({n} agents, one role each)",
        bytes as f64 / n as f64
    );
    let started = Instant::now();
    let rounds = 200;
    for _ in 0..rounds {
        for t in &tokens {
            black_box(big.authenticate(black_box(&t.0), T0 + 1).expect("valid"));
        }
    }
    println!(
        "identity authenticate: {:.0} token checks/s on one core",
        (rounds * tokens.len()) as f64 / started.elapsed().as_secs_f64()
    );

    // Durable: the sled store, each registration with its audit record
    // flushed to disk before it is acknowledged.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("store");
    let me = Actor {
        uid: Some(0),
        name: String::new(),
    };
    let durable = 2_000usize;
    let open = Sybil {
        max: usize::MAX,
        window: 60,
    };
    let started = Instant::now();
    for name in names.iter().take(durable) {
        identity::store::register(&db, &me, name, vec!["reader".into()], None, None, open)
            .expect("register");
    }
    println!(
        "identity register (sled + audit, flushed): {:.0} registrations/s",
        durable as f64 / started.elapsed().as_secs_f64()
    );

    let mut g = c.benchmark_group("identity");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    let mut reg = Registry::default();
    g.bench_function("register (memory)", |b| {
        b.iter(|| {
            i += 1;
            reg.register(&format!("b{i}"), Vec::new(), T0, None, Some(i))
                .expect("register")
        });
    });
    let token = &tokens[0].0;
    g.bench_function("authenticate (200k agents)", |b| {
        b.iter(|| {
            big.authenticate(black_box(token), T0 + 1)
                .map(|i| i.id)
                .expect("valid")
        });
    });
    g.finish();
}

fn trust(c: &mut Criterion) {
    let decay = Decay::default();
    // A realistic stream: mostly clean calls, some alerts and blocks, the
    // odd kill, over 64 subjects, 10 ms apart.
    let stream = [
        Signal::CleanCall,
        Signal::CleanCall,
        Signal::CleanCall,
        Signal::PolicyAlert,
        Signal::CleanCall,
        Signal::CleanCall,
        Signal::PolicyBlock,
        Signal::CleanCall,
        Signal::InjectionReturned,
        Signal::CleanCall,
        Signal::CleanCall,
        Signal::KernelKill,
    ];
    let mut subjects: Vec<Trust> = (0..64)
        .map(|i| {
            Trust::new(if i % 2 == 0 {
                Kind::Agent
            } else {
                Kind::Server
            })
        })
        .collect();
    let n = 5_000_000u64;
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..n {
        subjects[(i % 64) as usize].update(stream[(i % 12) as usize], T0 * 1000 + i * 10, decay);
    }
    let secs = started.elapsed().as_secs_f64();
    black_box(&subjects);
    println!(
        "trust update: {:.0} updates/s on one core ({} heap allocations in {n})",
        n as f64 / secs,
        ALLOCS.load(Ordering::Relaxed) - allocs
    );
    let mut g = c.benchmark_group("trust");
    g.throughput(Throughput::Elements(1));
    let mut one = Trust::new(Kind::Server);
    let mut now = T0 * 1000;
    let mut next = 0usize;
    g.bench_function("update", |b| {
        b.iter(|| {
            now += 10;
            next = (next + 1) % stream.len();
            one.update(black_box(stream[next]), now, decay);
        });
    });
    g.bench_function("overall score", |b| {
        b.iter(|| black_box(&one).overall(black_box(now), decay));
    });
    g.finish();
}

criterion_group!(benches, decide, register, trust);
criterion_main!(benches);

//! Process-wide counters and latency histograms, in Prometheus' text
//! exposition format (served by the daemon at `/metrics`). Every session of
//! the process adds to them; updates are single relaxed atomic adds, so the
//! hot paths pay a few nanoseconds and never a lock.
use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// MCP messages from clients, judged.
    ClientMessages,
    /// MCP messages from servers, judged.
    ServerMessages,
    /// Tool calls forwarded to a server.
    ToolCalls,
    /// Tool calls a policy rule stopped.
    PolicyBlocked,
    /// Messages PSI flagged (stopped or not).
    PsiFlagged,
    /// Messages PSI stopped.
    PsiBlocked,
    /// Alerts raised (monitor-mode violations, PSI alerts, rule alerts).
    Alerts,
    /// Server process trees killed for a violation.
    Kills,
    /// Operations the kernel denied (a connect outside the policy).
    Denied,
    /// Kernel events received.
    KernelEvents,
    /// Kernel events lost: the ring buffer was full.
    KernelEventsLost,
    /// Plain kernel events left out over a session's rate limit.
    KernelEventsRateLimited,
    /// Sessions started.
    Sessions,
}

const COUNTERS: [(Counter, &str, &str, &str); 13] = [
    (
        Counter::ClientMessages,
        "mcpwarden_messages_total",
        "from=\"client\"",
        "MCP messages judged, by sender.",
    ),
    (
        Counter::ServerMessages,
        "mcpwarden_messages_total",
        "from=\"server\"",
        "",
    ),
    (
        Counter::ToolCalls,
        "mcpwarden_tool_calls_total",
        "",
        "Tool calls forwarded to servers.",
    ),
    (
        Counter::PolicyBlocked,
        "mcpwarden_verdicts_total",
        "verdict=\"policy_block\"",
        "Verdicts other than allow, by kind.",
    ),
    (
        Counter::PsiFlagged,
        "mcpwarden_verdicts_total",
        "verdict=\"psi_flag\"",
        "",
    ),
    (
        Counter::PsiBlocked,
        "mcpwarden_verdicts_total",
        "verdict=\"psi_block\"",
        "",
    ),
    (
        Counter::Alerts,
        "mcpwarden_verdicts_total",
        "verdict=\"alert\"",
        "",
    ),
    (
        Counter::Kills,
        "mcpwarden_verdicts_total",
        "verdict=\"kill\"",
        "",
    ),
    (
        Counter::Denied,
        "mcpwarden_verdicts_total",
        "verdict=\"kernel_deny\"",
        "",
    ),
    (
        Counter::KernelEvents,
        "mcpwarden_kernel_events_total",
        "",
        "Kernel events received from sessions' process trees.",
    ),
    (
        Counter::KernelEventsLost,
        "mcpwarden_kernel_events_lost_total",
        "reason=\"ring_full\"",
        "Kernel events lost (counted when their session ends).",
    ),
    (
        Counter::KernelEventsRateLimited,
        "mcpwarden_kernel_events_lost_total",
        "reason=\"rate_limit\"",
        "",
    ),
    (
        Counter::Sessions,
        "mcpwarden_sessions_started_total",
        "",
        "Sessions started.",
    ),
];

static VALUES: [AtomicU64; COUNTERS.len()] = [const { AtomicU64::new(0) }; COUNTERS.len()];

/// Adds `n` to `counter`.
pub fn add(counter: Counter, n: u64) {
    VALUES[counter as usize].fetch_add(n, Relaxed);
}

/// The value of `counter` now.
#[must_use]
pub fn get(counter: Counter) -> u64 {
    VALUES[counter as usize].load(Relaxed)
}

/// Upper bounds of the latency buckets, in nanoseconds (10 µs to 1 s).
const BOUNDS_NS: [u64; 11] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    /// Per bucket (not cumulative), then the overflow bucket.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; BOUNDS_NS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// How many observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_NS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            #[allow(clippy::cast_precision_loss)] // bounds are exact in f64
            let le = *bound as f64 / 1e9;
            let _ = writeln!(out, "{}_bucket{{le=\"{le}\"}} {cumulative}", self.name);
        }
        cumulative += self.buckets[BOUNDS_NS.len()].load(Relaxed);
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {cumulative}", self.name);
        #[allow(clippy::cast_precision_loss)] // a sum in seconds
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {cumulative}", self.name);
    }
}

/// Time mcpwarden took to judge a client message (policy, PSI, tracking).
pub static CLIENT_LATENCY: Histogram = Histogram::new(
    "mcpwarden_client_message_seconds",
    "Time to judge a client message before it is forwarded.",
);
/// Time mcpwarden took to judge a server message (kernel events first).
pub static SERVER_LATENCY: Histogram = Histogram::new(
    "mcpwarden_server_message_seconds",
    "Time to judge a server message, kernel events first, before it is forwarded.",
);
/// Time PSI's model took per inspected text.
pub static PSI_LATENCY: Histogram = Histogram::new(
    "mcpwarden_psi_inspection_seconds",
    "Time PSI took to score one inspected message.",
);

/// Everything, in the text exposition format; `live_sessions` is the
/// caller's gauge.
#[must_use]
pub fn render(live_sessions: usize) -> String {
    let mut out = String::with_capacity(4096);
    let mut last = "";
    for (i, (_, name, labels, help)) in COUNTERS.iter().enumerate() {
        if *name != last {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            last = name;
        }
        let value = VALUES[i].load(Relaxed);
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP mcpwarden_sessions Sessions running now.\n# TYPE mcpwarden_sessions gauge\nmcpwarden_sessions {live_sessions}"
    );
    for h in [&CLIENT_LATENCY, &SERVER_LATENCY, &PSI_LATENCY] {
        h.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_in_their_declared_order() {
        for (i, (c, ..)) in COUNTERS.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let h = Histogram::new("t_seconds", "test");
        h.observe(Duration::from_micros(5)); // first bucket
        h.observe(Duration::from_micros(70)); // <= 100 µs
        h.observe(Duration::from_secs(2)); // overflow
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("t_seconds_bucket{le=\"0.00001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("t_seconds_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_count 3\n"), "{out}");
        assert!(out.contains("t_seconds_sum 2.000075\n"), "{out}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn the_exposition_has_one_header_per_family() {
        add(Counter::Kills, 2);
        let text = render(3);
        assert_eq!(
            text.matches("# TYPE mcpwarden_verdicts_total counter")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE mcpwarden_messages_total counter")
                .count(),
            1
        );
        assert!(text.contains("mcpwarden_sessions 3\n"));
        let kills = text
            .lines()
            .find_map(|l| l.strip_prefix("mcpwarden_verdicts_total{verdict=\"kill\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("the kill counter");
        assert!(kills >= 2);
        // Every sample line is `name{labels} value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("a value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

//! CPU time per process during the throughput phase, from `/proc` (as
//! `benches/cpu_by_process.py` does): the daemon's own, and each store's, so that the
//! report says which process the events cost and whether a store is the bottleneck.
//!
//! ```text
//! before the daemon starts: snapshot the stores' processes (utime + stime, in ticks)
//! when the last sink committed the end: snapshot again, and the daemon's own total
//! stores: the process listening on the store's port, and its children
//!   (PostgreSQL: the postmaster, its auxiliary processes, and the backends of the
//!    scratch database only, so other clients' backends are not counted)
//! ```
//!
//! A store shared with other clients (Redis, the broker) counts their work too: the
//! figures are exact on a quiet machine and an upper bound otherwise, which is why the
//! report prints the load average next to them. Off Linux (no `/proc`), every figure
//! is 0.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// The stores whose CPU is counted, and how their processes are found.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Name (for the report) and port, for PostgreSQL, Redis and the Kafka broker(s).
    pub ports: Vec<(&'static str, u16)>,
    /// Only this database's PostgreSQL backends are counted.
    pub pg_database: String,
}

/// CPU ticks per process id (with the store it belongs to) at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    ticks: BTreeMap<u32, (&'static str, u64)>,
}

/// CPU per event of one throughput run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuReport {
    /// The daemon's user + system CPU seconds from its start until the last sink
    /// committed the end of every partition.
    pub daemon_cpu_seconds: f64,
    /// The same per event, in microseconds.
    pub daemon_us_per_event: f64,
    /// Per store ("postgres", "redis", "kafka"): CPU seconds over the same span.
    pub store_cpu_seconds: BTreeMap<String, f64>,
    /// Per store: microseconds of CPU per event.
    pub store_us_per_event: BTreeMap<String, f64>,
    /// Wall-clock seconds of the span, to read the CPU figures as cores busy.
    pub wall_seconds: f64,
}

impl CpuReport {
    /// From the daemon's total and the stores' snapshots around the run.
    pub fn of(
        daemon_ticks: u64,
        before: &Snapshot,
        after: &Snapshot,
        events: usize,
        wall_seconds: f64,
    ) -> Self {
        let tick = USER_HZ;
        let per_event = |seconds: f64| {
            if events == 0 {
                0.0
            } else {
                seconds * 1e6 / events as f64
            }
        };
        let daemon_cpu_seconds = daemon_ticks as f64 / tick;
        let mut store_cpu_seconds: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (store, ticks)) in &after.ticks {
            // A process that started during the run counts from zero.
            let earlier = before.ticks.get(pid).map_or(0, |(_, t)| *t);
            *store_cpu_seconds.entry((*store).to_owned()).or_default() +=
                ticks.saturating_sub(earlier) as f64 / tick;
        }
        let store_us_per_event = store_cpu_seconds
            .iter()
            .map(|(store, seconds)| (store.clone(), per_event(*seconds)))
            .collect();
        Self {
            daemon_cpu_seconds,
            daemon_us_per_event: per_event(daemon_cpu_seconds),
            store_cpu_seconds,
            store_us_per_event,
            wall_seconds,
        }
    }
}

impl Stores {
    /// The stores' processes now, and their CPU ticks.
    pub fn snapshot(&self) -> Snapshot {
        let listeners = listening_inodes();
        let mut roots: BTreeMap<u32, &'static str> = BTreeMap::new();
        for (store, port) in &self.ports {
            let Some(inodes) = listeners.get(port) else {
                continue;
            };
            for pid in pids_holding(inodes) {
                roots.insert(pid, store);
            }
        }
        let mut ticks = BTreeMap::new();
        for pid in all_pids() {
            let Some(stat) = Stat::read(pid) else {
                continue;
            };
            let store = roots.get(&pid).or_else(|| roots.get(&stat.parent)).copied();
            let Some(store) = store else {
                continue;
            };
            if store == "postgres" && !roots.contains_key(&pid) && !self.counts_backend(pid) {
                continue;
            }
            ticks.insert(pid, (store, stat.cpu_ticks));
        }
        Snapshot { ticks }
    }

    /// Whether a PostgreSQL child process is counted: the server's own processes
    /// (checkpointer, WAL writer, autovacuum, ...) and the scratch database's backends,
    /// not the backends of other databases. A backend's title is
    /// `postgres: USER DATABASE HOST(PORT) STATE`.
    fn counts_backend(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let words: Vec<&str> = title
            .strip_prefix("postgres: ")
            .unwrap_or(&title)
            .split_whitespace()
            .collect();
        let is_backend = words
            .get(2)
            .is_some_and(|host| host.contains('(') || *host == "[local]");
        !is_backend || words.get(1) == Some(&self.pg_database.as_str())
    }
}

/// A process's user + system CPU ticks; 0 where unavailable.
pub fn process_ticks(pid: u32) -> u64 {
    Stat::read(pid).map_or(0, |s| s.cpu_ticks)
}

/// Cores kept busy over `wall_seconds` by `ticks` of CPU.
pub fn cores_busy(ticks: u64, wall_seconds: f64) -> f64 {
    if wall_seconds <= 0.0 {
        return 0.0;
    }
    ticks as f64 / USER_HZ / wall_seconds
}

/// `/proc`'s CPU times are in clock ticks of USER_HZ, which Linux fixes at 100 on every
/// architecture this builds for (`getconf CLK_TCK`); reading it would take `unsafe`
/// `sysconf`, which the crate denies.
const USER_HZ: f64 = 100.0;

/// What the report needs of `/proc/PID/stat`.
struct Stat {
    parent: u32,
    cpu_ticks: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        // After the name: state(0) ppid(1) ... utime(11) stime(12).
        let parent = fields.get(1)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Self {
            parent,
            cpu_ticks: utime + stime,
        })
    }
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Socket inodes of the TCP listeners (IPv4 and IPv6), by local port.
fn listening_inodes() -> BTreeMap<u16, BTreeSet<u64>> {
    let mut by_port: BTreeMap<u16, BTreeSet<u64>> = BTreeMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some((port, inode)) = listener(line) {
                by_port.entry(port).or_default().insert(inode);
            }
        }
    }
    by_port
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`: the port and inode
/// of a socket in state LISTEN (0A).
fn listener(line: &str) -> Option<(u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&"0A") {
        return None;
    }
    let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((port, inode))
}

/// The processes with one of `inodes` among their open files.
fn pids_holding(inodes: &BTreeSet<u64>) -> Vec<u32> {
    let wanted: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| wanted.contains(target.to_string_lossy().as_ref()))
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_line_gives_port_and_inode() {
        let line = "   1: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listener(line), Some((0x2384, 31337)));
        let established = "   2: 0100007F:2384 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(listener(established), None);
    }

    #[test]
    fn per_event_figures_count_new_processes_from_zero() {
        let before = Snapshot {
            ticks: BTreeMap::from([(10, ("postgres", 100)), (20, ("redis", 50))]),
        };
        let after = Snapshot {
            ticks: BTreeMap::from([
                (10, ("postgres", 300)),
                (11, ("postgres", 100)),
                (20, ("redis", 150)),
            ]),
        };
        let report = CpuReport::of(500, &before, &after, 1_000_000, 10.0);
        assert_eq!(report.daemon_cpu_seconds, 5.0);
        assert_eq!(report.daemon_us_per_event, 5.0);
        assert_eq!(report.store_cpu_seconds["postgres"], 3.0);
        assert_eq!(report.store_us_per_event["redis"], 1.0);
    }

    #[test]
    fn this_process_has_a_readable_stat() {
        let pid = std::process::id();
        let stat = Stat::read(pid).expect("own stat");
        assert!(stat.parent > 0);
    }
}

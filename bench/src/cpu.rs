//! CPU time used by the processes on the machine during a phase, to show where the two cores went.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// CPU seconds (user + system) of a live process; `None` when it is gone.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// utime + stime from a /proc/<pid>/stat line; the command name may hold spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line, counted from 1; the name is field 2, so here they are 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The label under which a snapshot records the busy time of the whole machine.
pub const MACHINE: &str = "all processes";

/// Busy CPU seconds of the whole machine since boot (every state but idle and iowait), from /proc/stat.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = parse_busy_ticks(stat.lines().next()?)?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// user + nice + system + irq + softirq + steal of the `cpu` line of /proc/stat.
fn parse_busy_ticks(cpu_line: &str) -> Option<u64> {
    let fields: Vec<u64> = cpu_line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&index| fields.get(index))
            .sum(),
    )
}

/// The services chatsys runs on, by command name and label, and this process (the load generator).
pub fn services() -> Vec<(String, u32)> {
    let mut processes = find_processes(&[
        ("mariadbd", "MariaDB"),
        ("redis-server", "Redis"),
        ("beam.smp", "RabbitMQ"),
    ]);
    processes.push(("bench".to_owned(), std::process::id()));
    processes
}

/// Processes whose command name is one of `names`, labelled with the label given for that name.
pub fn find_processes(names: &[(&str, &str)]) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let (_, label) = names.iter().find(|(name, _)| *name == comm.trim())?;
            Some(((*label).to_owned(), pid))
        })
        .collect()
}

/// CPU seconds per label at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    seconds: BTreeMap<String, f64>,
}

impl CpuSnapshot {
    pub fn take(processes: &[(String, u32)]) -> Self {
        let mut seconds = BTreeMap::new();
        for (label, pid) in processes {
            if let Some(used) = process_cpu_seconds(*pid) {
                *seconds.entry(label.clone()).or_insert(0.0) += used;
            }
        }
        if let Some(busy) = machine_busy_seconds() {
            seconds.insert(MACHINE.to_owned(), busy);
        }
        Self {
            at: Instant::now(),
            seconds,
        }
    }

    /// CPU seconds used per label since `earlier` (a label absent then is a process started since, from
    /// zero), and the wall-clock seconds between the two.
    fn used_since(&self, earlier: &CpuSnapshot) -> (f64, BTreeMap<String, f64>) {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        let used = self
            .seconds
            .iter()
            .map(|(label, now)| {
                let before = earlier.seconds.get(label).copied().unwrap_or(0.0);
                (label.clone(), (now - before).max(0.0))
            })
            .collect();
        (wall, used)
    }
}

/// What a phase cost each process: cores used while it ran, and CPU microseconds per operation of the
/// phase. The second does not depend on what else shared the machine, so it is the figure to compare
/// across runs and to project onto larger machines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub cores: BTreeMap<String, f64>,
    pub micros_per_operation: BTreeMap<String, f64>,
}

impl CpuUse {
    /// Between two snapshots, over which `operations` completed.
    pub fn between(earlier: &CpuSnapshot, later: &CpuSnapshot, operations: u64) -> Self {
        let (wall, used) = later.used_since(earlier);
        if wall <= 0.0 {
            return Self::default();
        }
        let cores = used
            .iter()
            .map(|(label, seconds)| (label.clone(), seconds / wall))
            .collect();
        let micros_per_operation = if operations == 0 {
            BTreeMap::new()
        } else {
            used.into_iter()
                .map(|(label, seconds)| (label, seconds * 1e6 / operations as f64))
                .collect()
        };
        Self {
            cores,
            micros_per_operation,
        }
    }

    /// CPU microseconds one process spent per operation, when it was measured.
    pub fn micros(&self, label: &str) -> Option<f64> {
        self.micros_per_operation.get(label).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_a_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        assert_eq!(
            parse_busy_ticks("cpu  100 2 30 5000 400 6 7 8 0 0"),
            Some(100 + 2 + 30 + 6 + 7 + 8)
        );
        assert_eq!(parse_busy_ticks("cpu0 1 2 3"), None);
    }

    #[test]
    fn this_process_uses_some_cpu() {
        let mut busy = 0u64;
        for index in 0..5_000_000u64 {
            busy = busy.wrapping_add(index * index);
        }
        assert!(busy > 0);
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn a_process_started_between_snapshots_counts_from_zero() {
        let earlier = CpuSnapshot {
            at: Instant::now(),
            seconds: BTreeMap::from([("api".to_owned(), 1.0)]),
        };
        let later = CpuSnapshot {
            at: earlier.at + std::time::Duration::from_secs(2),
            seconds: BTreeMap::from([("api".to_owned(), 2.0), ("worker".to_owned(), 1.0)]),
        };
        let used = CpuUse::between(&earlier, &later, 20_000);
        assert_eq!(used.cores["api"], 0.5);
        assert_eq!(used.cores["worker"], 0.5);
        assert_eq!(used.micros("api"), Some(50.0));
        assert_eq!(used.micros("worker"), Some(50.0));
    }

    #[test]
    fn a_phase_without_operations_has_no_cost_per_operation() {
        let earlier = CpuSnapshot {
            at: Instant::now(),
            seconds: BTreeMap::from([("api".to_owned(), 1.0)]),
        };
        let later = CpuSnapshot {
            at: earlier.at + std::time::Duration::from_secs(1),
            seconds: BTreeMap::from([("api".to_owned(), 1.5)]),
        };
        let used = CpuUse::between(&earlier, &later, 0);
        assert_eq!(used.cores["api"], 0.5);
        assert_eq!(used.micros("api"), None);
    }
}

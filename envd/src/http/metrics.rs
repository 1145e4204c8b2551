//! `GET /metrics`: CPU, memory and root-disk usage of the sandbox, read from
//! `/proc` and `statvfs`. CPU use is the busy share since the previous call.

use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;

/// One `/metrics` answer, field names as E2B's envd.
#[derive(Debug, Serialize)]
pub struct Metrics {
    /// Unix seconds.
    pub ts: i64,
    /// Online CPUs.
    pub cpu_count: u32,
    /// Busy share of all CPUs since the previous sample, 0–100.
    pub cpu_used_pct: f64,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Used memory (total − available), bytes.
    pub mem_used: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Total memory, MiB.
    pub mem_total_mib: u64,
    /// Used memory, MiB.
    pub mem_used_mib: u64,
    /// Used bytes on `/`.
    pub disk_used: u64,
    /// Size of `/` in bytes.
    pub disk_total: u64,
}

/// Remembers the last `/proc/stat` totals to turn them into a rate.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<Option<(u64, u64)>>,
}

impl CpuSampler {
    /// Busy percentage since the previous call (or since boot on the first).
    pub fn sample(&self) -> f64 {
        let Some((busy, total)) = read_cpu_totals() else {
            return 0.0;
        };
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (b0, t0) = last.replace((busy, total)).unwrap_or((0, 0));
        let dt = total.saturating_sub(t0);
        if dt == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let pct = busy.saturating_sub(b0) as f64 * 100.0 / dt as f64;
        (pct * 100.0).round() / 100.0
    }
}

fn read_cpu_totals() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let vals: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = vals.iter().sum();
    // idle + iowait are the not-busy columns.
    let idle = vals.get(3).copied().unwrap_or(0) + vals.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn meminfo() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    (total, total.saturating_sub(available), field("Cached:"))
}

fn disk() -> (u64, u64) {
    match nix::sys::statvfs::statvfs("/") {
        Ok(s) => {
            let frag = s.fragment_size();
            let total = s.blocks() * frag;
            let free = s.blocks_free() * frag;
            (total.saturating_sub(free), total)
        }
        Err(_) => (0, 0),
    }
}

/// Collects one sample.
pub fn collect(cpu: &CpuSampler) -> Metrics {
    let (mem_total, mem_used, mem_cache) = meminfo();
    let (disk_used, disk_total) = disk();
    Metrics {
        ts: time::OffsetDateTime::now_utc().unix_timestamp(),
        cpu_count: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        cpu_used_pct: cpu.sample(),
        mem_total,
        mem_used,
        mem_cache,
        mem_total_mib: mem_total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        disk_used,
        disk_total,
    }
}

/// `GET /metrics`.
pub async fn get(State(state): State<AppState>) -> Json<Metrics> {
    Json(collect(&state.cpu))
}

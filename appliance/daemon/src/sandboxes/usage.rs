//! What each live sandbox costs the host, for the operator's Prometheus page.
//!
//! The E2B metrics API answers with the guest's own view (envd). An operator
//! also needs the host's: what the VMM process holds and burns, and how much
//! the guest's disk moves. The actor records both at every sample; the
//! series are rendered at scrape time from this table, so a sandbox's series
//! exist exactly as long as its actor does (the recorder behind the
//! `metrics` macros cannot forget a label set once it has seen it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::envd::EnvdMetrics;
use crate::vmm::VmInfo;

/// The latest figures of one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The template it was started from.
    pub template: String,
    /// The accelerator running it (`kvm` or `tcg`).
    pub accelerator: String,
    /// The VMM's side, if the VMM answered at the last sample.
    pub vmm: Option<VmmUsage>,
    /// The guest's side, if envd answered at the last sample.
    pub guest: Option<EnvdMetrics>,
}

/// The host's view of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmUsage {
    /// Resident memory of the VMM process, bytes.
    pub rss_bytes: u64,
    /// CPU time of the VMM process, microseconds.
    pub cpu_micros: u64,
    /// Bytes the guest read from its disk.
    pub disk_read_bytes: u64,
    /// Bytes the guest wrote to its disk.
    pub disk_write_bytes: u64,
}

impl From<&VmInfo> for VmmUsage {
    fn from(i: &VmInfo) -> Self {
        Self {
            rss_bytes: i.vmm_rss_bytes,
            cpu_micros: i.vmm_cpu_micros,
            disk_read_bytes: i.disk_read_bytes,
            disk_write_bytes: i.disk_write_bytes,
        }
    }
}

/// One metric family: name, type, help, and how to read it from a [`Usage`].
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Usage) -> Option<f64>,
}

#[allow(clippy::cast_precision_loss)] // byte counts and microseconds stay far below 2^52
const FAMILIES: &[Family] = &[
    Family {
        name: "lelantos_sandbox_vmm_rss_bytes",
        kind: "gauge",
        help: "Resident memory of the sandbox's VMM process (host view).",
        value: |u| u.vmm.map(|v| v.rss_bytes as f64),
    },
    Family {
        name: "lelantos_sandbox_vmm_cpu_seconds_total",
        kind: "counter",
        help: "CPU time the sandbox's VMM process used (host view).",
        value: |u| u.vmm.map(|v| v.cpu_micros as f64 / 1e6),
    },
    Family {
        name: "lelantos_sandbox_disk_read_bytes_total",
        kind: "counter",
        help: "Bytes the guest read from its root disk, as the VMM counts them.",
        value: |u| u.vmm.map(|v| v.disk_read_bytes as f64),
    },
    Family {
        name: "lelantos_sandbox_disk_written_bytes_total",
        kind: "counter",
        help: "Bytes the guest wrote to its root disk, as the VMM counts them.",
        value: |u| u.vmm.map(|v| v.disk_write_bytes as f64),
    },
    Family {
        name: "lelantos_sandbox_guest_cpu_used_ratio",
        kind: "gauge",
        help: "Busy share of the guest's CPUs, 0-1 (guest view, from envd).",
        value: |u| u.guest.map(|g| g.cpu_used_pct / 100.0),
    },
    Family {
        name: "lelantos_sandbox_guest_memory_used_bytes",
        kind: "gauge",
        help: "Memory in use inside the guest (guest view, from envd).",
        value: |u| u.guest.map(|g| g.mem_used as f64),
    },
    Family {
        name: "lelantos_sandbox_guest_disk_used_bytes",
        kind: "gauge",
        help: "Bytes used on the guest's root filesystem (guest view, from envd).",
        value: |u| u.guest.map(|g| g.disk_used as f64),
    },
];

/// The table in Prometheus' text exposition format, one family at a time.
pub fn render(table: &BTreeMap<String, Usage>) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        let rows: Vec<(&String, &Usage, f64)> = table
            .iter()
            .filter_map(|(id, u)| (family.value)(u).map(|v| (id, u, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (id, u, v) in rows {
            let _ = writeln!(
                out,
                "{}{{sandbox=\"{}\",template=\"{}\",accelerator=\"{}\"}} {v}",
                family.name,
                escape(id),
                escape(&u.template),
                escape(&u.accelerator),
            );
        }
    }
    out
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn usage(template: &str, vmm: Option<VmmUsage>, guest: Option<EnvdMetrics>) -> Usage {
        Usage {
            template: template.to_owned(),
            accelerator: "tcg".to_owned(),
            vmm,
            guest,
        }
    }

    const VMM: VmmUsage = VmmUsage {
        rss_bytes: 300 << 20,
        cpu_micros: 2_500_000,
        disk_read_bytes: 4096,
        disk_write_bytes: 8192,
    };

    const GUEST: EnvdMetrics = EnvdMetrics {
        ts: 1,
        cpu_count: 1,
        cpu_used_pct: 25.0,
        mem_total: 512 << 20,
        mem_used: 100 << 20,
        mem_cache: 0,
        disk_used: 1 << 30,
        disk_total: 2 << 30,
    };

    #[test]
    fn each_family_has_help_type_and_one_line_per_sandbox() {
        let mut t = BTreeMap::new();
        t.insert("a1".to_owned(), usage("base", Some(VMM), Some(GUEST)));
        t.insert("b2".to_owned(), usage("py", Some(VMM), None));
        let text = render(&t);
        assert!(text.contains("# TYPE lelantos_sandbox_vmm_rss_bytes gauge\n"));
        assert!(text.contains(
            "lelantos_sandbox_vmm_rss_bytes{sandbox=\"a1\",template=\"base\",accelerator=\"tcg\"} 314572800\n"
        ));
        assert!(text.contains(
            "lelantos_sandbox_vmm_cpu_seconds_total{sandbox=\"b2\",template=\"py\",accelerator=\"tcg\"} 2.5\n"
        ));
        assert!(text.contains(
            "lelantos_sandbox_guest_cpu_used_ratio{sandbox=\"a1\",template=\"base\",accelerator=\"tcg\"} 0.25\n"
        ));
        // b2 had no guest sample: no guest line for it, and HELP/TYPE once per family.
        assert!(!text.contains("guest_memory_used_bytes{sandbox=\"b2\""));
        assert_eq!(
            text.matches("# TYPE lelantos_sandbox_vmm_rss_bytes")
                .count(),
            1
        );
    }

    #[test]
    fn families_without_values_are_left_out() {
        let mut t = BTreeMap::new();
        t.insert("a1".to_owned(), usage("base", None, None));
        assert_eq!(render(&t), "");
        assert_eq!(render(&BTreeMap::new()), "");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}

//! `berth status`: what is loaded and attached where, and how full each map is.
//!
//! The same [`Status`] comes from a running agent (`GET /v1/status`, with its version and uptime)
//! or, when no agent answers, straight from the pins.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::dataplane::{
    PinLayout,
    inspect::{AttachmentReport, MapReport, inspect},
};

/// Where a status report came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A running agent answered on its API socket.
    Agent,
    /// No agent answered; read from the pins directly.
    Pins,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub metrics_addr: String,
    pub api_socket: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub source: Source,
    /// Present when a running agent produced the report.
    pub agent: Option<AgentInfo>,
    pub pin_root: String,
    /// Whether the pin root exists at all (false: no data plane on this node).
    pub pinned: bool,
    pub attachments: Vec<AttachmentReport>,
    pub maps: Vec<MapReport>,
    pub errors: Vec<String>,
    /// The Kubernetes API server source, when the agent watches one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube_source::KubeStatus>,
}

impl Status {
    /// Reads the pins under `layout`.
    pub fn from_pins(layout: &PinLayout, agent: Option<AgentInfo>) -> Self {
        let report = inspect(layout);
        Status {
            source: if agent.is_some() {
                Source::Agent
            } else {
                Source::Pins
            },
            agent,
            pin_root: layout.root.display().to_string(),
            pinned: layout.root.exists(),
            attachments: report.attachments,
            maps: report.maps,
            errors: report.errors,
            kubernetes: None,
        }
    }

    /// The human-readable report.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        match &self.agent {
            Some(agent) => {
                let _ = writeln!(
                    out,
                    "agent:    running (pid {}), berth {}, up {}",
                    agent.pid,
                    agent.version,
                    human_duration(agent.uptime_seconds)
                );
                let _ = writeln!(out, "metrics:  http://{}/metrics", agent.metrics_addr);
                let _ = writeln!(out, "api:      {}", agent.api_socket);
            }
            None => {
                let _ = writeln!(out, "agent:    not running (read from pins)");
            }
        }
        let _ = writeln!(
            out,
            "pins:     {}{}",
            self.pin_root,
            if self.pinned {
                ""
            } else {
                " (absent: no data plane)"
            }
        );

        if let Some(k) = &self.kubernetes {
            let state = if k.stale_seconds > 0.0 {
                format!(
                    "STALE for {} (the data plane keeps its last state)",
                    human_duration(k.stale_seconds)
                )
            } else if k.synced {
                "synced".to_owned()
            } else {
                "listing".to_owned()
            };
            let _ = writeln!(
                out,
                "kubernetes: {} (node {}, EndpointSlice {}): {state}",
                k.source,
                k.node_name,
                k.endpoint_slices.as_deref().unwrap_or("not yet discovered")
            );
            for (kind, h) in &k.kinds {
                let _ = write!(
                    out,
                    "  {kind:<14} {:>6} objects  {} relists  {} errors",
                    h.objects, h.relists, h.errors
                );
                if let (Some(failing), Some(err)) = (h.failing_for_seconds, &h.last_error) {
                    let _ = write!(out, "  failing for {}: {err}", human_duration(failing));
                }
                let _ = writeln!(out);
            }
        }

        // Pin names cannot hold '/': a cgroup target is pinned as `cgroup:%sys%fs%cgroup`.
        let targets: Vec<String> = self
            .attachments
            .iter()
            .map(|a| match a.target.strip_prefix("cgroup:") {
                Some(path) => format!("cgroup {}", path.replace('%', "/")),
                None => a.target.clone(),
            })
            .collect();
        let width = targets.iter().map(String::len).max().unwrap_or(0).max(16);
        let _ = writeln!(
            out,
            "\nPROGRAM            {:<width$} PROG ID  LINK ID",
            "ATTACHED TO"
        );
        if self.attachments.is_empty() {
            let _ = writeln!(out, "(no attachments)");
        }
        for (a, target) in self.attachments.iter().zip(&targets) {
            let _ = writeln!(
                out,
                "{:<18} {:<width$} {:>7}  {:>7}",
                a.program, target, a.program_id, a.link_id
            );
        }

        let _ = writeln!(out, "\nMAP              TYPE           ENTRIES  CAPACITY");
        for m in &self.maps {
            let entries = if m.kind == "RingBuf" {
                "-".to_owned()
            } else {
                m.entries.to_string()
            };
            let capacity = if m.kind == "RingBuf" {
                format!("{} B", m.capacity)
            } else {
                m.capacity.to_string()
            };
            let _ = writeln!(
                out,
                "{:<16} {:<14} {:>7}  {:>8}",
                m.name, m.kind, entries, capacity
            );
        }
        for err in &self.errors {
            let _ = writeln!(out, "error: {err}");
        }
        out
    }
}

fn human_duration(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_maps_and_attachments() {
        let status = Status {
            source: Source::Pins,
            agent: None,
            pin_root: "/sys/fs/bpf/berth".into(),
            pinned: true,
            attachments: vec![AttachmentReport {
                program: "xdp_lb_ingress".into(),
                target: "eth0".into(),
                link_id: 7,
                program_id: 42,
                program_kernel_name: "xdp_lb_ingress".into(),
                pin: "/sys/fs/bpf/berth/links/xdp_lb_ingress@eth0".into(),
            }],
            maps: vec![MapReport {
                name: "CONTAINERS".into(),
                kind: "Hash".into(),
                entries: 3,
                capacity: 16384,
                key_size: 8,
                value_size: 16,
                id: 9,
                pin: "/sys/fs/bpf/berth/maps/CONTAINERS".into(),
            }],
            errors: vec![],
            kubernetes: None,
        };
        let table = status.render_table();
        assert!(table.contains("not running"), "{table}");
        assert!(table.contains("xdp_lb_ingress     eth0"), "{table}");
        assert!(
            table.contains("CONTAINERS       Hash                 3     16384"),
            "{table}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(5.25), "5.2s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7260.0), "2h01m");
    }
}

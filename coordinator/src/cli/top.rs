//! `baton top nodes|pods`: kubectl's columns, from the agents' last usage reports.

use super::client::Client;
use super::render::table;
use super::CliError;
use crate::contract::routes::{TopNodes, TopPods};
use crate::contract::usage::{NodeUsageView, PodUsageView};
use crate::contract::NoBody;
use crate::model::quantity::{format_cpu, format_memory};

pub(super) async fn top(client: &Client, what: &str) -> Result<String, CliError> {
    match what {
        "nodes" | "node" | "no" => {
            let nodes = client.call(&TopNodes {}, &NoBody).await?.items;
            Ok(nodes_table(&nodes))
        }
        "pods" | "pod" | "po" => {
            let mut pods = client.call(&TopPods {}, &NoBody).await?.items;
            let namespace = |p: &PodUsageView| {
                p.namespace
                    .clone()
                    .unwrap_or_else(|| crate::model::api::DEFAULT_NAMESPACE.to_owned())
            };
            if client.all_namespaces() {
                let table = pods_table(&pods);
                let ns: Vec<String> = pods.iter().map(namespace).collect();
                return Ok(if pods.is_empty() {
                    table
                } else {
                    super::get::with_namespace_column(&table, &ns)
                });
            }
            pods.retain(|p| namespace(p) == client.namespace());
            Ok(pods_table(&pods))
        }
        other => Err(CliError::Usage(format!(
            "error: top shows nodes or pods, not {other:?}"
        ))),
    }
}

fn percent(used: u64, of: u64) -> String {
    if of == 0 {
        return "<unknown>".into();
    }
    format!("{}%", used * 100 / of)
}

/// NAME, CPU(cores), CPU%, MEMORY(bytes), MEMORY% as kubectl has them (against the
/// allocatable), then the board's TEMP and DISK%.
pub fn nodes_table(nodes: &[NodeUsageView]) -> String {
    if nodes.is_empty() {
        return "error: metrics not available yet (no node has reported its usage)\n".into();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format_cpu(u64::from(n.cpu_millis)),
                percent(n.cpu_millis.into(), n.allocatable_cpu_millis.into()),
                format_memory(n.memory_bytes),
                percent(n.memory_bytes, n.allocatable_memory_bytes),
                n.temperature_millicelsius.map_or("<none>".into(), |t| {
                    format!("{:.1}C", f64::from(t) / 1000.0)
                }),
                percent(n.disk_used_bytes, n.disk_total_bytes),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "CPU(cores)",
            "CPU%",
            "MEMORY(bytes)",
            "MEMORY%",
            "TEMP",
            "DISK%",
        ],
        &rows,
    )
}

/// NAME, CPU(cores), MEMORY(bytes), then NODE.
pub fn pods_table(pods: &[PodUsageView]) -> String {
    if pods.is_empty() {
        return "No resources found\n".into();
    }
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                format_cpu(u64::from(p.cpu_millis)),
                format_memory(p.memory_bytes),
                p.node.clone(),
            ]
        })
        .collect();
    table(&["NAME", "CPU(cores)", "MEMORY(bytes)", "NODE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_columns() {
        let n = NodeUsageView {
            name: "pi-1".into(),
            cpu_millis: 250,
            allocatable_cpu_millis: 4000,
            memory_bytes: 512 << 20,
            allocatable_memory_bytes: 2048 << 20,
            disk_used_bytes: 30,
            disk_total_bytes: 100,
            temperature_millicelsius: Some(48_250),
            reported_seconds_ago: 3,
        };
        let t = nodes_table(&[n]);
        let mut lines = t.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("NAME   CPU(cores)   CPU%"));
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row, ["pi-1", "250m", "6%", "512Mi", "25%", "48.2C", "30%"]);
        let p = PodUsageView {
            name: "web-1".into(),
            node: "pi-1".into(),
            cpu_millis: 1500,
            memory_bytes: 20 << 20,
            namespace: None,
        };
        let row: Vec<String> = pods_table(&[p])
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(row, ["web-1", "1500m", "20Mi", "pi-1"]);
    }
}

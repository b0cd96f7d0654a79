//! DaemonSets: `get daemonsets` with kubectl's columns and `describe daemonset`.

use std::time::SystemTime;

use super::{age, events_section, kv, labels_str, namespace_kv, resources_lines, selector, table};
use crate::model::api;

/// kubectl's NODE SELECTOR column: the template's `nodeSelector`, or `<none>`.
fn node_selector(d: &api::DaemonSet) -> String {
    let s = &d.spec.template.spec.node_selector;
    if s.is_empty() {
        "<none>".into()
    } else {
        selector(s)
    }
}

pub fn daemon_sets_table(ds: &[api::DaemonSet], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            let s = &d.status;
            let mut row = vec![
                d.metadata.name.clone(),
                s.desired_number_scheduled.to_string(),
                s.current_number_scheduled.to_string(),
                s.number_ready.to_string(),
                s.updated_number_scheduled.to_string(),
                s.number_available.to_string(),
                node_selector(d),
                age(&d.metadata.creation_timestamp, now),
            ];
            if wide {
                let images: Vec<&str> = d
                    .spec
                    .template
                    .spec
                    .containers
                    .iter()
                    .map(|c| c.image.as_str())
                    .collect();
                row.push(images.join(","));
                row.push(selector(&d.spec.selector.match_labels));
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE SELECTOR",
        "AGE",
    ];
    if wide {
        header.extend(["IMAGES", "SELECTOR"]);
    }
    table(&header, &rows)
}

pub fn describe_daemon_set(d: &api::DaemonSet, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    let s = &d.status;
    kv(&mut out, "Name", &d.metadata.name);
    namespace_kv(&mut out, &d.metadata);
    kv(&mut out, "Created", &d.metadata.creation_timestamp);
    kv(&mut out, "Labels", labels_str(&d.metadata.labels));
    kv(
        &mut out,
        "Selector",
        selector(&d.spec.selector.match_labels),
    );
    kv(&mut out, "Node-Selector", node_selector(d));
    kv(
        &mut out,
        "Desired Number of Nodes Scheduled",
        s.desired_number_scheduled.to_string(),
    );
    kv(
        &mut out,
        "Current Number of Nodes Scheduled",
        s.current_number_scheduled.to_string(),
    );
    kv(
        &mut out,
        "Number of Nodes Scheduled with Up-to-date Pods",
        s.updated_number_scheduled.to_string(),
    );
    kv(
        &mut out,
        "Number of Nodes Scheduled with Available Pods",
        s.number_available.to_string(),
    );
    kv(
        &mut out,
        "Number of Nodes Misscheduled",
        s.number_misscheduled.to_string(),
    );
    let strategy = &d.spec.update_strategy;
    let text = match &strategy.rolling_update {
        Some(ru) => format!(
            "{:?} ({} max unavailable, {} max surge)",
            strategy.type_, ru.max_unavailable, ru.max_surge
        ),
        None => format!("{:?}", strategy.type_),
    };
    kv(&mut out, "Update Strategy", text);
    kv(
        &mut out,
        "Generation",
        format!(
            "{} (observed {})",
            d.metadata.generation, s.observed_generation
        ),
    );
    out.push_str("Pod Template:\n");
    out.push_str(&format!(
        "  Labels:  {}\n",
        selector(&d.spec.template.metadata.labels)
    ));
    out.push_str("  Containers:\n");
    for c in &d.spec.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:  {}\n", c.name, c.image));
        resources_lines(&mut out, c);
    }
    out.push_str(&events_section(events, now));
    out
}

//! Jobs: `get jobs` with kubectl's columns and `describe job`.

use std::time::SystemTime;

use super::{age, events_section, kv, labels_str, namespace_kv, resources_lines, selector, table};
use crate::model::api;

/// kubectl's STATUS column: `Complete`, `Failed` or `Running`.
pub fn job_status_word(j: &api::Job) -> &'static str {
    match j.status.finished().map(|c| c.type_) {
        Some(api::JobConditionType::Complete) => "Complete",
        Some(api::JobConditionType::Failed) => "Failed",
        None => "Running",
    }
}

/// kubectl's COMPLETIONS column: `2/3`, or for a work queue `1/1 of 3`.
fn completions(j: &api::Job) -> String {
    let s = j.status.succeeded;
    match j.spec.completions {
        Some(c) => format!("{s}/{c}"),
        None if j.spec.parallelism > 1 => format!("{s}/1 of {}", j.spec.parallelism),
        None => format!("{s}/1"),
    }
}

/// kubectl's DURATION column: start to completion, or to now while it has not completed.
fn duration(j: &api::Job, now: SystemTime) -> String {
    let Some(start) = &j.status.start_time else {
        return String::new();
    };
    let end = j
        .status
        .completion_time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .unwrap_or(now);
    age(start, end)
}

pub fn jobs_table(jobs: &[api::Job], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let mut row = vec![
                j.metadata.name.clone(),
                job_status_word(j).to_owned(),
                completions(j),
                duration(j, now),
                age(&j.metadata.creation_timestamp, now),
            ];
            if wide {
                let spec = &j.spec.template.spec;
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                let images: Vec<&str> = spec.containers.iter().map(|c| c.image.as_str()).collect();
                row.push(names.join(","));
                row.push(images.join(","));
                row.push(format!("{}={}", api::JOB_NAME_LABEL, j.metadata.name));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"];
    if wide {
        header.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
    }
    table(&header, &rows)
}

pub fn describe_job(j: &api::Job, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    let (spec, s) = (&j.spec, &j.status);
    kv(&mut out, "Name", &j.metadata.name);
    namespace_kv(&mut out, &j.metadata);
    kv(
        &mut out,
        "Selector",
        format!("{}={}", api::JOB_NAME_LABEL, j.metadata.name),
    );
    kv(&mut out, "Labels", labels_str(&j.metadata.labels));
    if let Some(cj) = &j.metadata.cron_job {
        kv(&mut out, "Controlled By", format!("CronJob/{cj}"));
    }
    kv(&mut out, "Parallelism", spec.parallelism.to_string());
    kv(
        &mut out,
        "Completions",
        spec.completions
            .map_or("<unset>".to_owned(), |c| c.to_string()),
    );
    kv(&mut out, "Backoff Limit", spec.backoff_limit.to_string());
    if let Some(d) = spec.active_deadline_seconds {
        kv(&mut out, "Active Deadline Seconds", format!("{d}s"));
    }
    if let Some(t) = spec.ttl_seconds_after_finished {
        kv(&mut out, "TTL Seconds After Finished", format!("{t}s"));
    }
    kv(
        &mut out,
        "Start Time",
        s.start_time.as_deref().unwrap_or("<none>"),
    );
    if let Some(t) = &s.completion_time {
        kv(&mut out, "Completed At", t);
        kv(&mut out, "Duration", duration(j, now));
    }
    kv(
        &mut out,
        "Pods Statuses",
        format!(
            "{} Active ({} Ready) / {} Succeeded / {} Failed",
            s.active, s.ready, s.succeeded, s.failed
        ),
    );
    if let Some(c) = s.finished() {
        let mut line = format!("{:?}", c.type_);
        if let Some(r) = &c.reason {
            line.push_str(&format!(" ({r})"));
        }
        if let Some(m) = &c.message {
            line.push_str(&format!(": {m}"));
        }
        kv(&mut out, "Condition", line);
    }
    out.push_str("Pod Template:\n");
    out.push_str(&format!(
        "  Labels:  {}\n",
        selector(&spec.template.metadata.labels)
    ));
    out.push_str(&format!(
        "  Restart Policy:  {:?}\n",
        spec.template.spec.restart_policy
    ));
    out.push_str("  Containers:\n");
    for c in &spec.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:  {}\n", c.name, c.image));
        resources_lines(&mut out, c);
    }
    out.push_str(&events_section(events, now));
    out
}

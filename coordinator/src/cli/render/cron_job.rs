//! CronJobs: `get cronjobs` with kubectl's columns and `describe cronjob`.

use std::time::SystemTime;

use super::{age, events_section, kv, labels_str, namespace_kv, resources_lines, selector, table};
use crate::model::api;

pub fn cron_jobs_table(cjs: &[api::CronJob], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = cjs
        .iter()
        .map(|c| {
            let mut row = vec![
                c.metadata.name.clone(),
                c.spec.schedule.clone(),
                c.spec.time_zone.clone().unwrap_or_else(|| "<none>".into()),
                c.spec.suspend.to_string(),
                c.status.active.len().to_string(),
                c.status
                    .last_schedule_time
                    .as_deref()
                    .map_or("<none>".into(), |t| age(t, now)),
                age(&c.metadata.creation_timestamp, now),
            ];
            if wide {
                let spec = &c.spec.job_template.spec.template.spec;
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                let images: Vec<&str> = spec.containers.iter().map(|c| c.image.as_str()).collect();
                row.push(names.join(","));
                row.push(images.join(","));
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST SCHEDULE",
        "AGE",
    ];
    if wide {
        header.extend(["CONTAINERS", "IMAGES"]);
    }
    table(&header, &rows)
}

pub fn describe_cron_job(c: &api::CronJob, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    let (spec, s) = (&c.spec, &c.status);
    kv(&mut out, "Name", &c.metadata.name);
    namespace_kv(&mut out, &c.metadata);
    kv(&mut out, "Labels", labels_str(&c.metadata.labels));
    kv(&mut out, "Schedule", &spec.schedule);
    kv(
        &mut out,
        "Time Zone",
        spec.time_zone.as_deref().unwrap_or("<unset> (UTC)"),
    );
    kv(
        &mut out,
        "Concurrency Policy",
        format!("{:?}", spec.concurrency_policy),
    );
    kv(&mut out, "Suspend", spec.suspend.to_string());
    kv(
        &mut out,
        "Successful Job History Limit",
        spec.successful_jobs_history_limit.to_string(),
    );
    kv(
        &mut out,
        "Failed Job History Limit",
        spec.failed_jobs_history_limit.to_string(),
    );
    kv(
        &mut out,
        "Starting Deadline Seconds",
        spec.starting_deadline_seconds
            .map_or("<unset>".into(), |d| format!("{d}s")),
    );
    let job = &spec.job_template.spec;
    kv(&mut out, "Parallelism", job.parallelism.to_string());
    kv(
        &mut out,
        "Completions",
        job.completions.map_or("<unset>".into(), |c| c.to_string()),
    );
    kv(&mut out, "Backoff Limit", job.backoff_limit.to_string());
    out.push_str("Pod Template:\n");
    out.push_str(&format!(
        "  Labels:  {}\n",
        selector(&job.template.metadata.labels)
    ));
    out.push_str("  Containers:\n");
    for ct in &job.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:  {}\n", ct.name, ct.image));
        resources_lines(&mut out, ct);
    }
    kv(
        &mut out,
        "Last Schedule Time",
        s.last_schedule_time.as_deref().unwrap_or("<unset>"),
    );
    kv(
        &mut out,
        "Active Jobs",
        if s.active.is_empty() {
            "<none>".into()
        } else {
            s.active.join(", ")
        },
    );
    out.push_str(&events_section(events, now));
    out
}

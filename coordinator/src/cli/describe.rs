//! `baton describe KIND NAME`: one object in detail with the events about it; a node
//! also with its pods and its enrolled identity.

use std::time::SystemTime;

use super::client::Client;
use super::get::{kind_of, of_kind, other_kind, pod};
use super::render::agent_update::describe_agent_update;
use super::render::cron_job::describe_cron_job;
use super::render::daemon_set::describe_daemon_set;
use super::render::describe::{
    describe_config_map, describe_deployment, describe_node, describe_pod, describe_secret,
};
use super::render::job::describe_job;
use super::render::service::describe_service;
use super::{named, CliError};
use crate::contract::body::ApiObject;
use crate::contract::{routes, NoBody, ResourceKind};
use crate::model::api;

pub(super) async fn describe(
    client: &Client,
    resource: &str,
    name: Option<&str>,
) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, "describe")?;
    let described = super::scope::describe(client, kind, &name).await?;
    let (object, events) = (described.object, described.events);
    if kind_of(&object) != kind {
        return Err(other_kind());
    }
    let now = SystemTime::now();
    Ok(match object {
        ApiObject::Pod(p) => describe_pod(&p, &events, now),
        ApiObject::Deployment(d) => describe_deployment(&d, &events, now),
        ApiObject::DaemonSet(d) => describe_daemon_set(&d, &events, now),
        ApiObject::Job(j) => describe_job(&j, &events, now),
        ApiObject::CronJob(c) => describe_cron_job(&c, &events, now),
        ApiObject::Node(node) => {
            let pods: Vec<api::Pod> = of_kind(super::scope::all_pods(client).await?, pod)?;
            let on_node: Vec<&api::Pod> = pods
                .iter()
                .filter(|p| p.spec.node_name.as_deref() == Some(node.metadata.name.as_str()))
                .collect();
            // 404: not enrolled (a fleet without identities); shown as such.
            let identity = client
                .call(
                    &routes::Identity {
                        name: node.metadata.name.clone(),
                    },
                    &NoBody,
                )
                .await
                .ok();
            describe_node(&node, identity.as_ref(), &on_node, &events, now)
        }
        ApiObject::Secret(s) => describe_secret(&s, &events, now),
        ApiObject::AgentUpdate(u) => describe_agent_update(&u, &events, now),
        ApiObject::ConfigMap(c) => describe_config_map(&c, &events, now),
        ApiObject::Service(s) => {
            // kubectl reads the Endpoints object beside the Service the same way.
            let eps = super::scope::get(client, ResourceKind::Endpoints, &s.metadata.name);
            let endpoints = match eps.await? {
                ApiObject::Endpoints(e) => e,
                _ => return Err(other_kind()),
            };
            describe_service(&s, Some(&endpoints), &events, now)
        }
        ApiObject::Endpoints(e) => super::render::service::endpoints_table(&[e], now),
        ApiObject::Namespace(n) => super::render::describe_namespace(&n, &events, now),
    })
}

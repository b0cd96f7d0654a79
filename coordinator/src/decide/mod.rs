//! The pure deciders: given the state, what should happen. No I/O, no clocks read, no channels: the core calls them and acts on their answers.

pub mod agent_update;
pub mod controller;
pub mod cron_node;
pub mod cronjob;
pub mod daemonset;
pub mod job;
pub mod pod_cidr;
pub mod policy;
pub mod rollout;
pub mod scheduler;
pub mod service;
pub mod taints;

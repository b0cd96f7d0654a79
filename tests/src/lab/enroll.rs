//! Enrolled labs: the coordinator serving enrollment, join tokens, agents that enroll.

use anyhow::{ensure, Result};

use crate::{Lab, ENROLL_PORT};

impl Lab {
    /// Stops every agent and the coordinator, and starts the coordinator again serving
    /// enrollment over TLS on the hub address ([`ENROLL_PORT`]), with `extra` flags. The
    /// agents are left stopped, to be started enrolled.
    pub fn restart_coordinator_enrolling(&mut self, extra: &[&str]) -> Result<()> {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
        self.kill_coordinator();
        let hub = self.hub_ip();
        self.coordinator_args.extend([
            "--enroll-listen".to_string(),
            format!("{hub}:{ENROLL_PORT}"),
            "--tls-san".to_string(),
            hub,
        ]);
        self.coordinator_args
            .extend(extra.iter().map(|a| a.to_string()));
        self.start_coordinator()
    }

    /// Where agents enroll after [`Lab::restart_coordinator_enrolling`].
    pub fn enroll_api(&self) -> String {
        format!("https://{}:{ENROLL_PORT}", self.hub_ip())
    }

    /// Starts agent `i` enrolling with a join token of its own (tokens are single-use),
    /// after [`Lab::restart_coordinator_enrolling`]; Ready means enrolled.
    pub fn start_enrolled_agent(&mut self, i: usize) -> Result<()> {
        let token = self.join_token(&[])?;
        self.agent_args = vec![
            "--join-token".into(),
            token,
            "--coordinator-api".into(),
            self.enroll_api(),
        ];
        self.start_agent(i)
    }

    /// `baton token create ARGS`: a join token string.
    pub fn join_token(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["token", "create"];
        a.extend_from_slice(args);
        let out = self.baton(&a)?;
        let t = String::from_utf8(out.stdout)?.trim().to_owned();
        ensure!(t.starts_with("bjt1."), "no join token printed: {t:?}");
        Ok(t)
    }
}

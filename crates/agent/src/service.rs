//! The agent's gRPC service (`cairn.agent.v1.Agent`): a thin shell that
//! turns calls into [`Supervisor`] commands and errors into gRPC statuses.
//!
//! Every call is idempotent (the supervisor makes it so), so a caller that
//! lost an answer repeats the call. Every error is a status whose message
//! names what is wrong; nothing a caller sends can panic the agent.
//!
//! Not handled here: authentication (agents and their leader share a
//! private network) and deciding anything (the supervisor does).

use tonic::{Request, Response, Status};

use crate::proto::agent_server::Agent;
use crate::proto::{
    NodeStatus, RestartNodeRequest, RunVersionRequest, StartNodeRequest, StatusRequest,
    StopNodeRequest,
};
use crate::supervisor::Supervisor;

/// The gRPC face of a [`Supervisor`].
#[derive(Clone, Debug)]
pub(crate) struct AgentService {
    supervisor: Supervisor,
}

impl AgentService {
    pub fn new(supervisor: Supervisor) -> AgentService {
        AgentService { supervisor }
    }
}

type Answer = Result<Response<NodeStatus>, Status>;

fn answer(result: Result<crate::NodeStatus, crate::Error>) -> Answer {
    match result {
        Ok(status) => Ok(Response::new(status.into())),
        Err(e) => {
            tracing::warn!("{e}");
            Err(e.to_status())
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(&self, _request: Request<StatusRequest>) -> Answer {
        answer(Ok(self.supervisor.status()))
    }

    async fn start_node(&self, request: Request<StartNodeRequest>) -> Answer {
        let StartNodeRequest { node_id, join, restart_generation, restore_from } =
            request.into_inner();
        let join = Some(join).filter(|j| !j.is_empty());
        if !restore_from.trim().is_empty() {
            let restored = self.supervisor.restore_node(node_id, restore_from, restart_generation);
            return answer(restored.await);
        }
        answer(self.supervisor.start_node(node_id, join, restart_generation).await)
    }

    async fn stop_node(&self, _request: Request<StopNodeRequest>) -> Answer {
        answer(self.supervisor.stop_node().await)
    }

    async fn restart_node(&self, request: Request<RestartNodeRequest>) -> Answer {
        let RestartNodeRequest { restart_generation } = request.into_inner();
        answer(self.supervisor.restart_node(restart_generation).await)
    }

    async fn run_version(&self, request: Request<RunVersionRequest>) -> Answer {
        let RunVersionRequest { version, artifacts } = request.into_inner();
        let artifacts = Some(artifacts).filter(|a| !a.trim().is_empty());
        answer(self.supervisor.run_version(version, artifacts).await)
    }
}
